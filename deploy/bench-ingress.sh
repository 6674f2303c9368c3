#!/usr/bin/env bash
# Measures ingress alone: a private nats-server (temporary store), a release
# build of smsgate-ingress with one channel, and smsgate-loadgen posting N
# distinct signed webhooks with C connections. Prints the load generator's
# report and ingress's peak resident memory. Usage:
#   deploy/bench-ingress.sh [N] [C]        (defaults 50000 64)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50000}; c=${2:-64}
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server; }
cargo build --release -q -p smsgate-ingress -p smsgate-e2e

tmp=$(mktemp -d)
nats_port=$(( 20000 + RANDOM % 10000 )); http_port=$(( 30000 + RANDOM % 10000 ))
token=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 48)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
pids=(); trap cleanup EXIT

nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$tmp/js" >"$tmp/nats.log" 2>&1 & pids+=($!)
cat >"$tmp/channels.json" <<JSON
{"channel_id": "bench", "config": {
  "twilio_account_sid": "AC00000000000000000000000000000000", "twilio_auth_token": "bench-auth-token",
  "twilio_from_number": "+15005550006", "webhook_path_token": "$token",
  "public_base_url": "https://sms.example.com", "delivery": "log"}}
JSON
SMSGATE_NATS_URL="nats://127.0.0.1:$nats_port" SMSGATE_CHANNELS="$tmp/channels.json" \
SMSGATE_INGRESS_ADDR="127.0.0.1:$http_port" SMSGATE_ADMIN_ADDR="127.0.0.1:0" RUST_LOG=warn \
  target/release/smsgate-ingress >"$tmp/ingress.log" 2>&1 & ingress=$!; pids+=($ingress)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$http_port/api/ready" >/dev/null 2>&1 && break; sleep 0.1; done

peak=0
( while kill -0 "$ingress" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$ingress/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" >"$tmp/peak"
    sleep 0.2
  done ) & pids+=($!)

# Warm-up (connections, JIT-free but page cache and allocator), then the run.
target/release/smsgate-loadgen --url "http://127.0.0.1:$http_port" --public-base-url https://sms.example.com \
  --path-token "$token" --auth-token bench-auth-token -n 2000 -c "$c" >/dev/null
target/release/smsgate-loadgen --url "http://127.0.0.1:$http_port" --public-base-url https://sms.example.com \
  --path-token "$token" --auth-token bench-auth-token -n "$n" -c "$c"
sleep 0.5
echo "ingress peak RSS  $(( $(cat "$tmp/peak" 2>/dev/null || echo 0) / 1024 )) MiB"
