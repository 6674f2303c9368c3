#!/usr/bin/env bash
# Measures the whole pipeline: a private nats-server (temporary store), release
# builds of ingress, worker and sender with one channel (echo chat, mps 0 =
# unpaced, Twilio delivery to the load generator's in-process Twilio stub, a
# rate limit too high to matter), and smsgate-loadgen in end-to-end mode
# (webhook sent → the stub received the reply). Runs:
#   (a) a fixed offered rate (default 500 msg/s for 20 s): end-to-end p50/p99;
#   (b) as fast as possible with C connections: messages/s completed;
#   (c) a slow backend (chat stub 2 s per completion, Twilio stub 250 ms per
#       call): 400 people texting at once, then 100 people sending three
#       messages in a row; the goal is everyone answered within
#       2 × (posting + the model calls in a row + one Twilio call);
#   (d) memory with 1,000 conversations in flight (model 5 s);
#   (e) the worker's history reads with a model (history_turns 10, 40 people
#       × 25 messages): with the per-conversation cache, then without
#       (SMSGATE_WORKER_HISTORY_CACHE=0, a consumer per read as before).
# For each phase it prints the load generator's report, the CPU seconds each
# process used, and every process's peak resident memory (VmRSS); before the
# first, each service's resident memory at rest.
# It also prints NATS's messages in/out per webhook (from nats-server's /varz).
# With PROFILE=1 it records a CPU profile (perf, cpu-clock) of every service
# during phase (a) and prints each one's top functions.
# Usage:
#   deploy/bench-pipeline.sh [RATE] [SECONDS] [N_MAX] [C] [K]   (defaults 500 20 20000 32 2000)
# PHASES="c1 d" runs only those phases (a, b, c1, c2, d, e; default all).
# NATS_SERVER_BIN picks the nats-server (deploy/nats-2.10.sh fetches 2.10);
# NATS_SYNC=always adds `sync_interval: always` (2.10+: fsync before every ack).
# NATS_CLUSTER=1 runs three routed nats-servers and the services with
# SMSGATE_NATS_REPLICAS=3 (the figures of "nats" and "peak RSS" are node 1's).
# NATS_TRACE=1 turns on nats-server's trace and prints, after each phase, every
# service's NATS operations per webhook by kind (deploy/bench/nats-ops.py):
# use it with a small phase (a), e.g. `NATS_TRACE=1 PHASES=a … 100 3`, as
# the trace slows nats-server down many times.
# BIN_DIR takes ingress, worker and sender from another build (an earlier
# one, to compare; NO_BUILD=1 skips the build); the load generator is always
# this tree's target/release/smsgate-loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-500}; secs=${2:-20}; n_max=${3:-20000}; c=${4:-32}; k=${5:-2000}
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p smsgate-ingress -p smsgate-worker -p smsgate-sender -p smsgate-e2e

bin=${BIN_DIR:-target/release}
tmp=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(port); mon_port=$(port); http_port=$(port); stub_port=$(port); worker_port=$(port); sender_port=$(port)
chat_port=$(port)
token=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 48)
slow_token=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 48)
account=AC00000000000000000000000000000000; auth=bench-auth-token
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

sync=""; [ -z "${NATS_SYNC:-}" ] || sync="sync_interval: $NATS_SYNC"
nats_urls="nats://127.0.0.1:$nats_port"
if [ -n "${NATS_CLUSTER:-}" ]; then
  route1=$(port); route2=$(port); route3=$(port); n2=$(port); n3=$(port)
  routes="nats-route://127.0.0.1:$route1, nats-route://127.0.0.1:$route2, nats-route://127.0.0.1:$route3"
  for n in 2 3; do
    p=$([ $n = 2 ] && echo "$n2" || echo "$n3"); r=$([ $n = 2 ] && echo "$route2" || echo "$route3")
    printf 'server_name: n%s\nlisten: 127.0.0.1:%s\njetstream { store_dir: "%s"\n %s }\ncluster { name: bench, listen: 127.0.0.1:%s, routes: [%s] }\n' \
      "$n" "$p" "$tmp/js$n" "$sync" "$r" "$routes" >"$tmp/nats$n.conf"
    "${NATS_SERVER_BIN:-nats-server}" -c "$tmp/nats$n.conf" >"$tmp/nats$n.log" 2>&1 & pids+=($!)
  done
  cluster="server_name: n1
cluster { name: bench, listen: 127.0.0.1:$route1, routes: [$routes] }"
  nats_urls="$nats_urls,nats://127.0.0.1:$n2,nats://127.0.0.1:$n3"
  export SMSGATE_NATS_REPLICAS=3
fi
printf 'listen: 127.0.0.1:%s\nhttp: 127.0.0.1:%s\njetstream { store_dir: "%s"\n %s }\n%s\n%s\n' \
  "$nats_port" "$mon_port" "$tmp/js" "$sync" "${cluster:-}" "${NATS_TRACE:+trace: true}" >"$tmp/nats.conf"
"${NATS_SERVER_BIN:-nats-server}" -c "$tmp/nats.conf" >"$tmp/nats.log" 2>&1 & nats=$!; pids+=($nats)
[ -z "${NATS_CLUSTER:-}" ] || sleep 3   # the cluster elects its JetStream meta leader
echo "nats-server $("${NATS_SERVER_BIN:-nats-server}" --version | awk '{print $2}') ${sync:-(default sync)}"
cat >"$tmp/channels.json" <<JSON
{"channels": [
 {"channel_id": "bench", "config": {
  "twilio_account_sid": "$account", "twilio_auth_token": "$auth",
  "twilio_from_number": "+15005550006", "webhook_path_token": "$token",
  "public_base_url": "https://sms.example.com", "twilio_api_base": "http://127.0.0.1:$stub_port",
  "chat": {"kind": "echo"}, "mps": 0, "delivery": "twilio",
  "rate_limit": {"per_minute": 100000, "burst": 100000},
  "limits": {"replies_per_minute": 10000000, "replies_per_day": 10000000}}},
 {"channel_id": "slow", "config": {
  "twilio_account_sid": "$account", "twilio_auth_token": "$auth",
  "twilio_from_number": "+15005550006", "webhook_path_token": "$slow_token",
  "public_base_url": "https://sms.example.com", "twilio_api_base": "http://127.0.0.1:$stub_port",
  "chat": {"kind": "openai", "base_url": "http://127.0.0.1:$chat_port/v1", "model": "bench",
           "timeout_ms": 30000, "history_turns": 10},
  "mps": 0, "delivery": "twilio",
  "rate_limit": {"per_minute": 100000, "burst": 100000},
  "limits": {"replies_per_minute": 10000000, "replies_per_day": 10000000}}}
]}
JSON
export SMSGATE_NATS_URL="$nats_urls" SMSGATE_CHANNELS="$tmp/channels.json" \
  SMSGATE_INGRESS_ADDR="127.0.0.1:$http_port" SMSGATE_ADMIN_ADDR="127.0.0.1:0" \
  SMSGATE_WORKER_ADDR="127.0.0.1:$worker_port" SMSGATE_SENDER_ADDR="127.0.0.1:$sender_port" \
  RUST_LOG="${RUST_LOG:-warn}"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
"$bin"/smsgate-ingress >"$tmp/ingress.log" 2>&1 & ingress=$!; pids+=($ingress)
start_worker() {
  "$bin"/smsgate-worker >>"$tmp/worker.log" 2>&1 & worker=$!; pids+=($worker)
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$worker_port/api/health" >/dev/null 2>&1 && break; sleep 0.1; done
}
start_worker
"$bin"/smsgate-sender >"$tmp/sender.log" 2>&1 & sender=$!; pids+=($sender)
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
# CPU ticks (its last sample before it exits). Pids come from files, so a
# restarted service is followed.
for name in "${!proc[@]}"; do echo "${proc[$name]}" >"$tmp/pid.$name"; done
sampler() {
  local name
  while :; do
    for name in nats-server ingress worker sender; do
      local r; r=$(rss_kib "$(cat "$tmp/pid.$name")")
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
sleep 1
line="idle RSS MiB "
for name in ingress worker sender nats-server; do line+="  $name $(( $(rss_kib "${proc[$name]}") / 1024 ))"; done
echo "$line"

loadgen() {
  target/release/smsgate-loadgen --url "http://127.0.0.1:$http_port" --public-base-url https://sms.example.com \
    --auth-token "$auth" --account-sid "$account" \
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
  local trace0; trace0=$(wc -l <"$tmp/nats.log")
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
  if [ -n "${NATS_TRACE:-}" ]; then
    sleep 1   # the last acks
    tail -n +"$((trace0 + 1))" "$tmp/nats.log" >"$tmp/trace"
    python3 deploy/bench/nats-ops.py "$tmp/trace" "$n"
  fi
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

echo_=(--path-token "$token" -k "$k")
slow=(--path-token "$slow_token" --chat-stub-port "$chat_port" --e2e-timeout 60)
want() { [ -z "${PHASES:-}" ] || [[ " $PHASES " == *" $1 "* ]]; }
phase "warm-up (2000 messages, not measured)" 0 -n 2000 -c "$c" "${echo_[@]}" >/dev/null
want a && phase "(a) fixed rate: $rate msg/s for $secs s" "${PROFILE:-0}" -n "$(( rate * secs ))" -c "$c" --rate "$rate" "${echo_[@]}"
want b && phase "(b) as fast as possible: $n_max messages, $c connections" 0 -n "$n_max" -c "$c" --e2e-timeout 60 "${echo_[@]}"
want c1 && phase "(c1) slow backend: 400 people at once (model 2 s, Twilio 250 ms)" 0 -n 400 -c 64 -k 400 \
  --chat-delay-ms 2000 --twilio-delay-ms 250 "${slow[@]}"
want c2 && phase "(c2) slow backend: 100 people, three messages each in a row" 0 -n 300 -c 64 -k 100 \
  --chat-delay-ms 2000 --twilio-delay-ms 250 "${slow[@]}"
want d && phase "(d) 1,000 conversations in flight (model 5 s)" 0 -n 1000 -c 64 -k 1000 \
  --chat-delay-ms 5000 --twilio-delay-ms 250 "${slow[@]}"
if want e; then
  phase "(e1) history reads with the cache: 40 people × 25 messages, model 0 ms" 0 -n 1000 -c 40 -k 40 "${slow[@]}"
  kill "$worker"; wait "$worker" 2>/dev/null || true
  SMSGATE_WORKER_HISTORY_CACHE=0 start_worker; proc[worker]=$worker; echo "$worker" >"$tmp/pid.worker"
  phase "(e2) history reads without the cache (a consumer per read)" 0 -n 1000 -c 40 -k 40 "${slow[@]}"
fi
grep -h '"level":"ERROR"' "$tmp"/*.log | head -5 || true
