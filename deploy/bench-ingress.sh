#!/usr/bin/env bash
# Measures ingress alone: a private nats-server (temporary store), a release
# build of smsgate-ingress with one channel, and wrk posting distinct
# webhooks, each signed as Twilio signs it (pre-signed by
# deploy/bench/make-webhooks.py so signing is not measured). Also measures
# the same HTTP stack on /api/health (no signature, no NATS) as a ceiling,
# and samples ingress's resident memory. Usage:
#   deploy/bench-ingress.sh [SECONDS] [CONNECTIONS]      (defaults 10 64)
# LOADGEN=1 uses smsgate-loadgen (reqwest) instead of wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; c=${2:-64}
need=(); command -v nats-server >/dev/null || need+=(nats-server); command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; fi
cargo build --release -q -p smsgate-ingress -p smsgate-e2e

tmp=$(mktemp -d)
nats_port=$(( 20000 + RANDOM % 10000 )); http_port=$(( 30000 + RANDOM % 10000 ))
token=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 48)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$tmp/js" >"$tmp/nats.log" 2>&1 & pids+=($!)
cat >"$tmp/channels.json" <<JSON
{"channel_id": "bench", "config": {
  "twilio_account_sid": "AC00000000000000000000000000000000", "twilio_auth_token": "bench-auth-token",
  "twilio_from_number": "+15005550006", "webhook_path_token": "$token",
  "public_base_url": "https://sms.example.com", "delivery": "log"}}
JSON
SMSGATE_NATS_URL="nats://127.0.0.1:$nats_port" SMSGATE_CHANNELS="$tmp/channels.json" \
SMSGATE_INGRESS_ADDR="127.0.0.1:$http_port" SMSGATE_ADMIN_ADDR="127.0.0.1:0" RUST_LOG=warn \
  "${INGRESS_BIN:-target/release/smsgate-ingress}" >"$tmp/ingress.log" 2>&1 & ingress=$!; pids+=($ingress)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$http_port/api/ready" >/dev/null 2>&1 && break; sleep 0.1; done

( peak=0; while kill -0 "$ingress" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$ingress/status" 2>/dev/null || echo 0)
    if [ "${rss:-0}" -gt "$peak" ]; then peak=$rss; echo "$peak" >"$tmp/peak"; fi
    sleep 0.2
  done ) & pids+=($!)

path="/api/channels/sms/twilio/webhook/$token"
# Enough distinct webhooks that none repeats during the run (25k/s upper bound).
n=$(( (secs + 2) * 25000 ))
python3 deploy/bench/make-webhooks.py "$n" 1000 "https://sms.example.com$path" bench-auth-token \
  AC00000000000000000000000000000000 +15005550006 >"$tmp/hooks.txt"

if [ "${LOADGEN:-0}" = 1 ]; then
  target/release/smsgate-loadgen --url "http://127.0.0.1:$http_port" --public-base-url https://sms.example.com \
    --path-token "$token" --auth-token bench-auth-token -n "$(( secs * 12000 ))" -c "$c"
else
  echo "== signed webhooks: wrk, 1 thread, $c connections, ${secs}s"
  WEBHOOKS_FILE="$tmp/hooks.txt" WRK_THREADS=1 wrk -t1 -c"$c" -d"${secs}s" --latency \
    -s deploy/bench/wrk-webhooks.lua "http://127.0.0.1:$http_port$path"
  echo "== CPU split during a second run (perf, all processes)"
  ( WEBHOOKS_FILE="$tmp/hooks.txt" WRK_THREADS=1 wrk -t1 -c"$c" -d6s -s deploy/bench/wrk-webhooks.lua "http://127.0.0.1:$http_port$path" | grep Requests/sec ) &
  if command -v perf >/dev/null && sleep 1 && perf record -a -e cpu-clock -F 499 -o "$tmp/perf.data" -- sleep 4 >/dev/null 2>&1; then
    perf report -i "$tmp/perf.data" --sort comm --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -6
  fi
  wait $!
  echo "== the same HTTP stack without signature or NATS: GET /api/health"
  wrk -t1 -c"$c" -d5s --latency "http://127.0.0.1:$http_port/api/health" | grep -E "Requests/sec|50%|99%"
fi
sleep 0.5
curl -s "http://127.0.0.1:$http_port/metrics" | grep -E "publish_seconds_(bucket|sum|count)" | grep -E "le=\"0.00(1|2|5)\"|le=\"0.01\"|sum|count"
echo "== in the stream: $(curl -s "http://127.0.0.1:$http_port/metrics" | awk '/smsgate_ingress_requests_total.*accepted/ {print $2}') accepted"
echo "ingress peak RSS  $(( $(cat "$tmp/peak" 2>/dev/null || echo 0) / 1024 )) MiB"
