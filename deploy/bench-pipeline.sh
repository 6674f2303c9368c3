#!/usr/bin/env bash
# Measures the whole pipeline: a private nats-server (temporary store), release
# builds of ingress, worker and sender with one channel (echo chat, mps 0 =
# unpaced, Twilio delivery to the load generator's in-process Twilio stub, a
# rate limit too high to matter), and smsgate-loadgen in end-to-end mode
# (webhook sent → the stub received the reply). Runs:
#   (a) a fixed offered rate (default 500 msg/s for 20 s): end-to-end p50/p99;
#   (b) as fast as possible with C connections: messages/s completed.
# For each phase it prints the load generator's report, the CPU seconds each
# process used, and every process's peak resident memory (VmRSS).
# It also prints NATS's messages in/out per webhook (from nats-server's /varz).
# With PROFILE=1 it records a CPU profile (perf, cpu-clock) of every service
# during phase (a) and prints each one's top functions.
# Usage:
#   deploy/bench-pipeline.sh [RATE] [SECONDS] [N_MAX] [C] [K]   (defaults 500 20 20000 32 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-500}; secs=${2:-20}; n_max=${3:-20000}; c=${4:-32}; k=${5:-2000}
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server; }
cargo build --release -q -p smsgate-ingress -p smsgate-worker -p smsgate-sender -p smsgate-e2e

tmp=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(port); mon_port=$(port); http_port=$(port); stub_port=$(port); worker_port=$(port); sender_port=$(port)
token=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 48)
account=AC00000000000000000000000000000000; auth=bench-auth-token
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

nats-server -js -a 127.0.0.1 -p "$nats_port" -m "$mon_port" -sd "$tmp/js" >"$tmp/nats.log" 2>&1 & nats=$!; pids+=($nats)
cat >"$tmp/channels.json" <<JSON
{"channel_id": "bench", "config": {
  "twilio_account_sid": "$account", "twilio_auth_token": "$auth",
  "twilio_from_number": "+15005550006", "webhook_path_token": "$token",
  "public_base_url": "https://sms.example.com", "twilio_api_base": "http://127.0.0.1:$stub_port",
  "chat": {"kind": "echo"}, "mps": 0, "delivery": "twilio",
  "rate_limit": {"per_minute": 100000, "burst": 100000},
  "limits": {"replies_per_minute": 10000000, "replies_per_day": 10000000}}}
JSON
export SMSGATE_NATS_URL="nats://127.0.0.1:$nats_port" SMSGATE_CHANNELS="$tmp/channels.json" \
  SMSGATE_INGRESS_ADDR="127.0.0.1:$http_port" SMSGATE_ADMIN_ADDR="127.0.0.1:0" \
  SMSGATE_WORKER_ADDR="127.0.0.1:$worker_port" SMSGATE_SENDER_ADDR="127.0.0.1:$sender_port" \
  RUST_LOG="${RUST_LOG:-warn}"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
target/release/smsgate-ingress >"$tmp/ingress.log" 2>&1 & ingress=$!; pids+=($ingress)
target/release/smsgate-worker >"$tmp/worker.log" 2>&1 & worker=$!; pids+=($worker)
target/release/smsgate-sender >"$tmp/sender.log" 2>&1 & sender=$!; pids+=($sender)
for url in "http://127.0.0.1:$http_port/api/ready" "http://127.0.0.1:$worker_port/api/health" \
           "http://127.0.0.1:$sender_port/api/health"; do
  for _ in $(seq 200); do curl -fs "$url" >/dev/null 2>&1 && break; sleep 0.1; done
done

declare -A proc=([nats-server]=$nats [ingress]=$ingress [worker]=$worker [sender]=$sender)
hz=$(getconf CLK_TCK)
ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Context switches of every thread of a process.
ctxsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Samples every 0.2 s: each service's peak VmRSS, and the load generator's
# CPU ticks (its last sample before it exits).
sampler() {
  local name
  while :; do
    for name in "${!proc[@]}"; do
      local r; r=$(rss_kib "${proc[$name]}")
      local p; p=$(cat "$tmp/peak.$name" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$p" ] && echo "$r" >"$tmp/peak.$name"
    done
    local lg; lg=$(cat "$tmp/loadgen.pid" 2>/dev/null || true)
    if [ -n "$lg" ] && [ -r "/proc/$lg/stat" ]; then
      local t; t=$(ticks "$lg"); [ "${t:-0}" -gt 0 ] && echo "$t" >"$tmp/loadgen.ticks"
    fi
    sleep 0.2
  done
}
sampler & pids+=($!)

loadgen() {
  target/release/smsgate-loadgen --url "http://127.0.0.1:$http_port" --public-base-url https://sms.example.com \
    --path-token "$token" --auth-token "$auth" --account-sid "$account" -k "$k" \
    --twilio-stub-addr "127.0.0.1:$stub_port" "$@" & local lg=$!
  echo "$lg" >"$tmp/loadgen.pid"
  local rc=0; wait "$lg" || rc=$?
  : >"$tmp/loadgen.pid"
  return $rc
}

varz() { curl -fs "http://127.0.0.1:$mon_port/varz" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["in_msgs"], v["out_msgs"])'; }

phase() {
  local title=$1 profile=$2 n=$4; shift 2
  local name; declare -A before; local perfs=()
  read -r in0 out0 < <(varz)
  if [ "$profile" = 1 ]; then
    for name in ingress worker sender nats-server; do
      perf record -q -e cpu-clock -F 499 -p "${proc[$name]}" -o "$tmp/perf.$name" >/dev/null 2>&1 & perfs+=($!)
    done
  fi
  declare -A sw
  for name in "${!proc[@]}"; do
    before[$name]=$(ticks "${proc[$name]}"); sw[$name]=$(ctxsw "${proc[$name]}"); rm -f "$tmp/peak.$name"
  done
  rm -f "$tmp/loadgen.ticks"
  local t0; t0=$(date +%s.%N)
  echo "== $title"
  loadgen "$@" || echo "(load generator reported failures)"
  [ ${#perfs[@]} -eq 0 ] || { kill -INT "${perfs[@]}"; wait "${perfs[@]}" 2>/dev/null || true; }
  read -r in1 out1 < <(varz)
  printf 'nats msgs     in %.1f  out %.1f  per webhook\n' "$(echo "scale=2; ($in1 - $in0) / $n" | bc)" \
    "$(echo "scale=2; ($out1 - $out0) / $n" | bc)"
  local line; line=$(printf 'cpu s         wall %.1f ' "$(echo "$(date +%s.%N) - $t0" | bc)")
  for name in ingress worker sender nats-server; do
    line+=$(printf '  %s %.1f' "$name" "$(echo "scale=2; ($(ticks "${proc[$name]}") - ${before[$name]}) / $hz" | bc)")
  done
  line+=$(printf '  loadgen %.1f' "$(echo "scale=2; $(cat "$tmp/loadgen.ticks" 2>/dev/null || echo 0) / $hz" | bc)")
  echo "$line"
  line="ctx switches  per webhook"
  for name in ingress worker sender nats-server; do
    line+=$(printf '  %s %.1f' "$name" "$(echo "scale=2; ($(ctxsw "${proc[$name]}") - ${sw[$name]}) / $n" | bc)")
  done
  echo "$line"
  line="peak RSS MiB "
  for name in ingress worker sender nats-server; do
    line+="  $name $(( $(cat "$tmp/peak.$name" 2>/dev/null || echo 0) / 1024 ))"
  done
  echo "$line"
  if [ "$profile" = 1 ]; then
    for name in ingress worker sender nats-server; do
      echo "-- perf self time by object: $name"
      perf report -i "$tmp/perf.$name" --stdio --no-children --sort dso 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | head -4 | awk '{$1=$1; print}' || true
      echo "-- perf top self time: $name"
      perf report -i "$tmp/perf.$name" --stdio --no-children --sort symbol 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | head -"${PROFILE_TOP:-12}" | awk '{$1=$1; print}' | cut -c1-110 || true
    done
  fi
}

phase "warm-up (2000 messages, not measured)" 0 -n 2000 -c "$c" >/dev/null
phase "(a) fixed rate: $rate msg/s for $secs s" "${PROFILE:-0}" -n "$(( rate * secs ))" -c "$c" --rate "$rate"
phase "(b) as fast as possible: $n_max messages, $c connections" 0 -n "$n_max" -c "$c" --e2e-timeout 60
grep -h '"level":"ERROR"' "$tmp"/*.log | head -5 || true
