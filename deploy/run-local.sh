#!/usr/bin/env bash
# Runs smsgate on this machine: NATS with JetStream and the three services,
# on the embedded defaults, with deploy/channels.example.json (a channel that
# answers with the echo chat and writes replies to the log instead of calling
# Twilio, so no account is needed). Ctrl-C stops everything it started.
#
# Environment (all optional): SMSGATE_NATS_URL, SMSGATE_CHANNELS,
# SMSGATE_PUBLIC_BASE_URL, TWILIO_AUTH_TOKEN, SMS_WEBHOOK_PATH_TOKEN,
# SMSGATE_ADMIN_TOKEN / SMSGATE_ADMIN_TOKEN_FILE, SMSGATE_SECRET_KEY (else one
# kept in .local/secret_key), SMSGATE_PROFILE (release|debug, default release),
# SMSGATE_BIN_DIR (run the binaries there instead of building),
# SMSGATE_LOCAL_DIR (its state, logs and env file; default .local),
# NATS_MONITOR_PORT (the monitoring port of the nats-server it starts; 8222),
# SMSGATE_LOG_FORMAT (json [the log files are JSON lines, the terminal shows
# them readably when jq is installed] or pretty), and the services' own
# SMSGATE_*_ADDR.
#
# The admin API always needs its bearer token. Unless SMSGATE_ADMIN_TOKEN is
# set, ingress generates one at first start into SMSGATE_ADMIN_TOKEN_FILE
# [$XDG_STATE_HOME/smsgate/admin-token, i.e. ~/.local/state/smsgate/admin-token],
# readable only by you; the smsgate CLI reads the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state="${SMSGATE_LOCAL_DIR:-$root/.local}"
mkdir -p "$state/logs" "$state/nats"

say() { printf '\033[1m[run-local]\033[0m %s\n' "$*"; }

# --- what is missing gets installed ------------------------------------------
if ! command -v nats-server >/dev/null 2>&1; then
  say "installing nats-server"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server
fi
if ! command -v jq >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  # Shows the JSON log lines readably here, and runs OPERATIONS.md's recipes.
  say "installing jq"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq jq || say "jq not installed; the terminal shows the raw JSON lines"
fi
if [ -z "${SMSGATE_BIN_DIR:-}" ] && ! command -v cargo >/dev/null 2>&1; then
  say "cargo is missing: install Rust 1.89 or later (https://rustup.rs), then run this again" >&2
  exit 1
fi

# --- configuration -------------------------------------------------------------
export SMSGATE_NATS_URL="${SMSGATE_NATS_URL:-nats://127.0.0.1:4222}"
export SMSGATE_CHANNELS="${SMSGATE_CHANNELS:-$root/deploy/channels.example.json}"
ingress_port=${SMSGATE_INGRESS_ADDR:-0.0.0.0:8000}; ingress_port=${ingress_port##*:}
export SMSGATE_PUBLIC_BASE_URL="${SMSGATE_PUBLIC_BASE_URL:-http://127.0.0.1:$ingress_port}"
export TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-local-dev-auth-token}"
if [ -z "${SMS_WEBHOOK_PATH_TOKEN:-}" ]; then
  # One token per checkout, kept so the webhook URL stays the same across runs.
  [ -s "$state/path_token" ] || head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 48 > "$state/path_token"
  SMS_WEBHOOK_PATH_TOKEN=$(cat "$state/path_token")
fi
export SMS_WEBHOOK_PATH_TOKEN
if [ -z "${SMSGATE_SECRET_KEY:-}" ]; then
  # Encrypts channels connected at run time (smsgate channels connect); one
  # key per checkout, kept (readable only by you) so they survive restarts.
  if [ ! -s "$state/secret_key" ]; then
    (umask 077; head -c 32 /dev/urandom | base64 > "$state/secret_key")
  fi
  SMSGATE_SECRET_KEY=$(cat "$state/secret_key")
fi
export SMSGATE_SECRET_KEY
# The same place ingress and the CLI look by default, made explicit.
export SMSGATE_ADMIN_TOKEN_FILE="${SMSGATE_ADMIN_TOKEN_FILE:-${XDG_STATE_HOME:-$HOME/.local/state}/smsgate/admin-token}"
# JSON lines (what OPERATIONS.md's jq recipes read) into .local/logs; the
# terminal gets them readably (see show_logs).
export SMSGATE_LOG_FORMAT="${SMSGATE_LOG_FORMAT:-json}"
export RUST_LOG="${RUST_LOG:-info}"
profile="${SMSGATE_PROFILE:-release}"

pids=()
cleanup() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup INT TERM EXIT

# --- NATS ------------------------------------------------------------------------
hostport=${SMSGATE_NATS_URL#nats://}; hostport=${hostport##*@}
nats_host=${hostport%:*}; nats_port=${hostport##*:}
[ "$nats_host" != "$hostport" ] || nats_port=4222

# A NATS server sends its INFO line on connect; it says whether JetStream is on.
nats_info() { timeout 2 bash -c "exec 3<>/dev/tcp/$nats_host/$nats_port && head -n 1 <&3" 2>/dev/null || true; }
info=$(nats_info)
if [ -n "$info" ]; then
  if printf '%s' "$info" | grep -q '"jetstream":true'; then
    say "using the JetStream-enabled NATS already at $SMSGATE_NATS_URL"
  else
    say "a NATS server at $SMSGATE_NATS_URL has no JetStream; stop it or set SMSGATE_NATS_URL to another one" >&2
    exit 1
  fi
else
  monitor="${NATS_MONITOR_PORT:-8222}"
  say "starting nats-server with JetStream on $nats_host:$nats_port, monitoring on port $monitor (data in $state/nats)"
  nats-server -js -a "$nats_host" -p "$nats_port" -m "$monitor" -sd "$state/nats" >"$state/logs/nats.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do [ -n "$(nats_info)" ] && break; sleep 0.1; done
  [ -n "$(nats_info)" ] || { say "nats-server did not start; see $state/logs/nats.log" >&2; exit 1; }
fi

# --- services ------------------------------------------------------------------
if [ -n "${SMSGATE_BIN_DIR:-}" ]; then
  bin="$SMSGATE_BIN_DIR"
else
  # The first build compiles every dependency: several minutes on a small
  # machine (cargo shows its progress); later runs start at once.
  say "building the services ($profile; the first build takes several minutes, later ones seconds)"
  cargo_flags=(); [ "$profile" = release ] && cargo_flags+=(--release)
  cargo build "${cargo_flags[@]}" --bins
  bin="${CARGO_TARGET_DIR:-$root/target}/$profile"
fi

# The terminal's view of a service's JSON lines: time, level, service,
# message, then the other fields as key=value. Without jq, the lines as they are.
show_logs() {
  if [ "$SMSGATE_LOG_FORMAT" = json ] && command -v jq >/dev/null 2>&1; then
    jq -rR --unbuffered 'fromjson? // {msg: .}
      | "\(.ts // "" | .[11:19]) \(.level // "") \(.service // ""): \(.msg // "")"
        + ([to_entries[] | select(.key | IN("ts", "level", "service", "msg", "target", "span") | not)
            | " \(.key)=\(.value | if type == "string" then . else tojson end)"] | join(""))'
  else
    cat
  fi
}

for svc in ingress worker sender; do
  exe="$bin/smsgate-$svc"
  if [ ! -x "$exe" ]; then
    say "smsgate-$svc is not built yet (its crate has no binary); skipping it"
    continue
  fi
  "$exe" > >(tee "$state/logs/$svc.log" | show_logs) 2>&1 &
  pids+=($!)
  say "started smsgate-$svc (pid $!, log $state/logs/$svc.log)"
done

webhook="$SMSGATE_PUBLIC_BASE_URL/api/channels/sms/twilio/webhook/$SMS_WEBHOOK_PATH_TOKEN"
# The CLI reads the same channel file and secrets: keep them for other shells.
cat >"$state/env" <<ENV
export SMSGATE_CHANNELS='$SMSGATE_CHANNELS'
export SMSGATE_PUBLIC_BASE_URL='$SMSGATE_PUBLIC_BASE_URL'
export TWILIO_AUTH_TOKEN='$TWILIO_AUTH_TOKEN'
export SMS_WEBHOOK_PATH_TOKEN='$SMS_WEBHOOK_PATH_TOKEN'
export SMSGATE_NATS_URL='$SMSGATE_NATS_URL'
export SMSGATE_ADMIN_TOKEN_FILE='$SMSGATE_ADMIN_TOKEN_FILE'
export PATH="$bin:\$PATH"
ENV
# Listeners moved from their defaults: the CLI must find them.
if [ -n "${SMSGATE_INGRESS_ADDR:-}" ]; then
  printf "export SMSGATE_INGRESS_ADDR='%s'\n" "$SMSGATE_INGRESS_ADDR" >>"$state/env"
fi
if [ -n "${SMSGATE_ADMIN_ADDR:-}" ]; then
  admin_addr=${SMSGATE_ADMIN_ADDR/0.0.0.0/127.0.0.1}
  printf "export SMSGATE_ADMIN_URL='http://%s'\n" "$admin_addr" >>"$state/env"
fi
if [ -n "${SMSGATE_ADMIN_TOKEN:-}" ]; then
  printf "export SMSGATE_ADMIN_TOKEN='%s'\n" "$SMSGATE_ADMIN_TOKEN" >>"$state/env"
fi
chmod 600 "$state/env"
shown_state=${state#"$root"/}
token_where="$SMSGATE_ADMIN_TOKEN_FILE"
[ -z "${SMSGATE_ADMIN_TOKEN:-}" ] || token_where="SMSGATE_ADMIN_TOKEN (from your environment)"
cat <<MSG

  smsgate is running.
  Webhook URL (paste into Twilio's console once a tunnel points at port $ingress_port):
    $webhook
  Admin API token (the CLI finds it there): $token_where
  Logs (JSON lines, for OPERATIONS.md's jq recipes): $shown_state/logs/
  Try it without a phone, in another terminal:
    source $shown_state/env
    smsgate simulate --channel local --from +15551230000 --body "Hello"
    smsgate conversation --channel local +15551230000
  Ctrl-C stops everything.

MSG
wait
