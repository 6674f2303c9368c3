#!/usr/bin/env bash
# README's step 1, as a new user runs it, against the built binaries:
# ./deploy/run-local.sh with the log-only example channel, then simulate,
# conversation, send, conversations, events and channels status. Fails when
# a command errors or its output loses a field the README shows.
#
# Fast and private: it runs the debug binaries already built (by
# `cargo test --workspace`; SMSGATE_BIN_DIR to use others), its own
# nats-server on free ports under a temporary directory (no internet, no
# clash with a NATS or a run-local already on this machine), and every wait
# is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin="${SMSGATE_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}"
for b in smsgate smsgate-ingress smsgate-worker smsgate-sender; do
  [ -x "$bin/$b" ] || { echo "readme-check: $bin/$b is not built (cargo build --bins)" >&2; exit 1; }
done

work=$(mktemp -d)
runlocal=""
finish() {
  status=$?
  if [ -n "$runlocal" ]; then
    # TERM: a background job of a script ignores INT.
    kill -TERM "$runlocal" 2>/dev/null || true
    wait "$runlocal" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ]; then
    echo "readme-check: FAILED; run-local's output:" >&2
    tail -n 40 "$work/run-local.out" >&2 || true
  fi
  rm -rf "$work"
}
trap finish EXIT
fail() { echo "readme-check: $*" >&2; exit 1; }

# Six free ports: NATS, its monitoring, ingress, admin, worker, sender.
# Below the kernel's ephemeral range (ip_local_port_range, 32768 and up by
# default): there, the services' own outgoing connections (to NATS) may take
# a chosen port before its listener binds it.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=()
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
span=$(( ephemeral_low - 10000 - 100 ))
[ "$span" -gt 1000 ] || span=1000
candidate=$((10000 + RANDOM % span))
while [ ${#ports[@]} -lt 6 ]; do
  candidate=$((candidate + 1))
  if port_free "$candidate"; then ports+=("$candidate"); fi
done

env -u SMSGATE_CHANNELS -u TWILIO_AUTH_TOKEN -u SMS_WEBHOOK_PATH_TOKEN -u SMSGATE_SECRET_KEY \
  -u SMSGATE_ADMIN_TOKEN -u SMSGATE_ADMIN_URL -u SMSGATE_PUBLIC_BASE_URL -u RUST_LOG -u SMSGATE_LOG_FORMAT \
  SMSGATE_BIN_DIR="$bin" SMSGATE_LOCAL_DIR="$work/local" \
  SMSGATE_NATS_URL="nats://127.0.0.1:${ports[0]}" NATS_MONITOR_PORT="${ports[1]}" \
  SMSGATE_NATS_PREFIX="readme$$" \
  SMSGATE_INGRESS_ADDR="127.0.0.1:${ports[2]}" SMSGATE_ADMIN_ADDR="127.0.0.1:${ports[3]}" \
  SMSGATE_WORKER_ADDR="127.0.0.1:${ports[4]}" SMSGATE_SENDER_ADDR="127.0.0.1:${ports[5]}" \
  SMSGATE_ADMIN_TOKEN_FILE="$work/admin-token" \
  ./deploy/run-local.sh >"$work/run-local.out" 2>&1 &
runlocal=$!

ready=""
for _ in $(seq 150); do
  if grep -q "smsgate is running" "$work/run-local.out" 2>/dev/null \
    && (exec 3<>"/dev/tcp/127.0.0.1/${ports[2]}" && printf 'GET /api/ready HTTP/1.0\r\n\r\n' >&3 && head -n 1 <&3 | grep -q ' 200') 2>/dev/null; then
    ready=yes
    break
  fi
  kill -0 "$runlocal" 2>/dev/null || fail "run-local.sh stopped"
  sleep 0.2
done
[ -n "$ready" ] || fail "the services were not ready within 30 s"
grep -q "Webhook URL" "$work/run-local.out" || fail "run-local.sh did not print the webhook URL"
# OPERATIONS.md's backlog recipe reads NATS's monitoring port.
(exec 3<>"/dev/tcp/127.0.0.1/${ports[1]}" && printf 'GET /jsz HTTP/1.0\r\n\r\n' >&3 && head -n 1 <&3 | grep -q ' 200') 2>/dev/null \
  || fail "run-local's nats-server has no monitoring port"

# What the README says to do in another terminal.
# shellcheck disable=SC1091
source "$work/local/env"
peer=+15551230000
run() { timeout 20 "$@" 2>&1 || fail "'$*' failed: $(timeout 20 "$@" 2>&1 | tail -n 5)"; }
expect() { grep -qF -- "$2" <<<"$1" || fail "the output lost '$2':"$'\n'"$1"; }

out=$(run smsgate simulate --channel local --from "$peer" --body "Hello")
expect "$out" "MessageSid SM"
expect "$out" ": $peer → +15005550006 on channel local"
expect "$out" "ingress answered 200 OK"
expect "$out" "<Response></Response>"
sid=$(sed -n 's/^MessageSid \(SM[0-9a-f]*\):.*/\1/p' <<<"$out")

for _ in $(seq 100); do
  out=$(run smsgate conversation --channel local "$peer")
  grep -q "→ You: Hello  (logged)" <<<"$out" && break
  sleep 0.2
done
expect "$out" "Conversation with $peer (channel local)"
expect "$out" "· 2 messages"
expect "$out" "] ← Them: Hello"
expect "$out" "] → You: Hello  (logged)"

out=$(run smsgate send --channel local --to "$peer" --body "Hi, this is the operator")
expect "$out" "accepted: api."

out=$(run smsgate conversations)
expect "$out" "CHANNEL  PEER          MESSAGES  LAST"
expect "$out" "local    $peer"

out=$(run smsgate channels status local)
expect "$out" "local: delivery log: Twilio is not used; the webhook URL Twilio would need is http://127.0.0.1:${ports[2]}/api/channels/sms/twilio/webhook/"

# A channel connected at run time (README, "Channels at run time"): its
# whole webhook URL and simulate come through the admin API.
export SHOP_WEBHOOK_PATH_TOKEN
SHOP_WEBHOOK_PATH_TOKEN=$(run smsgate gen-token)
out=$(run smsgate channels connect deploy/shop.json)
expect "$out" "connected shop (runtime)"
out=$(run smsgate webhook-url --channel shop)
expect "$out" "http://127.0.0.1:${ports[2]}/api/channels/sms/twilio/webhook/$SHOP_WEBHOOK_PATH_TOKEN"
out=$(run smsgate simulate --channel shop --from "$peer" --body "open on sunday?")
expect "$out" "ingress answered 200 OK"
out=$(run smsgate channels status shop)
expect "$out" "shop: delivery log: Twilio is not used"
out=$(run smsgate channels disconnect shop)
expect "$out" "disconnected shop"

# events follows for a few seconds while one more text comes in.
timeout 6 smsgate events --channel local >"$work/events.out" 2>"$work/events.err" &
events=$!
sleep 1
run smsgate simulate --channel local --from "$peer" --body "Events please" >/dev/null
wait "$events" || true
grep -q '"type":"message.sent"' "$work/events.out" || fail "no message.sent event: $(cat "$work/events.out" "$work/events.err")"
while read -r line; do
  for field in '"type":"' '"channel_id":"local"' "\"peer\":\"$peer\"" '"at":"' '"event_id":"'; do
    grep -qF -- "$field" <<<"$line" || fail "an event without $field: $line"
  done
done <"$work/events.out"

# The log files are JSON lines, and one message can be followed by its
# MessageSid in every service (OPERATIONS.md, "Logs").
for svc in ingress worker sender; do
  log="$work/local/logs/$svc.log"
  grep -q "\"message_sid\":\"$sid\"" "$log" || fail "$svc logged nothing with message_sid $sid"
  if grep -v '^{' "$log" | grep -q .; then fail "$svc.log has lines that are not JSON: $(grep -v '^{' "$log" | head -n 3)"; fi
done
echo "readme-check: README step 1 works (simulate, conversation, send, conversations, channels status, events, a runtime channel)"
