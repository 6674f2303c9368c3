#!/usr/bin/env bash
# Measures ingress alone, one build or two side by side, and optionally the
# Python peer (FastAPI + nats-py doing the same job, deploy/bench/peer.py).
#
#   deploy/bench-ingress.sh [options] [BUILD_A [BUILD_B]]
#     BUILD     an smsgate-ingress binary, or a directory holding one
#               (default: target/release/smsgate-ingress, built first)
#     -s SECS   seconds of load per run (10)
#     -c CONNS  wrk connections (32)
#     -r ROUNDS runs per build, alternating A B A B ... (3; 0: none, only
#               the extra runs below)
#     --peer    also run the Python peer each round (installs FastAPI,
#               uvicorn, nats-py into ~/.cache/smsgate-peer on first use)
#     --profile perf record -g on each build's process during one extra run
#               and print its top functions (self time)
#     --syscalls  count each build's system calls (perf's syscall
#               tracepoints) during one extra run, per webhook
#     --callgrind run each build once more under valgrind's callgrind (8
#               connections; counters zeroed after the warm-up) and print
#               the instructions per webhook: the same for the same binary
#               and input whatever else the machine does
#
# Each run gets a private nats-server (temporary file store) and a fresh
# server process with one channel, then wrk posts distinct webhooks, each
# signed as Twilio signs it (pre-signed by deploy/bench/make-webhooks.py, so
# signing is not measured), after one second of warm-up. Per run it prints
# throughput, p50/p99 latency, the server's CPU per accepted webhook (user +
# system time from /proc over the load window, divided by the 2xx answers,
# and the system part alone),
# nats-server's CPU per webhook, and the server's peak RSS; then the median
# per build and the ratios B/A (and A/peer, B/peer).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=10; c=32; rounds=3; peer=0; profile=0; syscalls=0; callgrind=0; builds=()
while [ $# -gt 0 ]; do
  case $1 in
    -s) secs=$2; shift 2 ;; -c) c=$2; shift 2 ;; -r) rounds=$2; shift 2 ;;
    --peer) peer=1; shift ;; --profile) profile=1; shift ;;
    --syscalls) syscalls=1; shift ;; --callgrind) callgrind=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
    *) builds+=("$1"); shift ;;
  esac
done
need=(); command -v nats-server >/dev/null || need+=(nats-server); command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
[ "$profile$syscalls" != 00 ] && ! command -v perf >/dev/null && need+=(linux-perf)
[ "$callgrind" = 1 ] && ! command -v valgrind >/dev/null && need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; fi
if [ ${#builds[@]} -eq 0 ]; then
  cargo build --release -q -p smsgate-ingress
  builds=(target/release/smsgate-ingress)
fi
for i in "${!builds[@]}"; do
  [ -d "${builds[$i]}" ] && builds[$i]="${builds[$i]}/smsgate-ingress"
  [ -x "${builds[$i]}" ] || { echo "not an executable: ${builds[$i]}" >&2; exit 2; }
done
venv=${SMSGATE_PEER_VENV:-$HOME/.cache/smsgate-peer}
if [ "$peer" = 1 ] && [ ! -x "$venv/bin/uvicorn" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q fastapi uvicorn uvloop httptools nats-py
fi

tmp=$(mktemp -d)
pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$tmp"' EXIT
token=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 48)
path="/api/channels/sms/twilio/webhook/$token"
# Enough distinct webhooks that none repeats in a run (30k/s upper bound).
python3 deploy/bench/make-webhooks.py $(( (secs + 2) * 30000 )) 1000 "https://sms.example.com$path" \
  bench-auth-token AC00000000000000000000000000000000 +15005550006 >"$tmp/hooks.txt"
cat >"$tmp/channels.json" <<JSON
{"channel_id": "bench", "config": {
  "twilio_account_sid": "AC00000000000000000000000000000000", "twilio_auth_token": "bench-auth-token",
  "twilio_from_number": "+15005550006", "webhook_path_token": "$token",
  "public_base_url": "https://sms.example.com", "delivery": "log"}}
JSON

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU ticks of processes: FIELDS is '$14 + $15' (user + system) or '$15'
# (system alone), from /proc/PID/stat.
ticks_of() { local fields=$1 t=0 p; shift; for p in "$@"; do t=$(( t + $(awk "{print $fields}" "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo $t; }
ticks() { ticks_of '$14 + $15' "$@"; }
hz=$(getconf CLK_TCK)
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }
wrk_load() { WEBHOOKS_FILE="$tmp/hooks.txt" WRK_THREADS=1 wrk -t1 -c"$c" -d"$1s" --latency -s deploy/bench/wrk-webhooks.lua "http://127.0.0.1:$port$path"; }

# start LABEL: a nats-server and the server under test; sets port, server_pids, nats_pid.
start() {
  local label=$1 nats_port; nats_port=$(free_port); port=$(free_port)
  rm -rf "$tmp/js"
  nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$tmp/js" >"$tmp/nats.log" 2>&1 & nats_pid=$!; pids+=($nats_pid)
  for _ in $(seq 50); do nc -z 127.0.0.1 "$nats_port" 2>/dev/null && break; sleep 0.1; done
  if [ "$label" = peer ]; then
    ( cd deploy/bench && PEER_NATS_URL="nats://127.0.0.1:$nats_port" PEER_TOKEN="$token" PEER_AUTH_TOKEN=bench-auth-token \
        PEER_PUBLIC_BASE=https://sms.example.com exec "$venv/bin/uvicorn" --host 127.0.0.1 --port "$port" \
        --workers "${PEER_WORKERS:-1}" --loop uvloop --http httptools --no-access-log --log-level warning peer:app ) >"$tmp/server.log" 2>&1 &
  else
    SMSGATE_NATS_URL="nats://127.0.0.1:$nats_port" SMSGATE_CHANNELS="$tmp/channels.json" \
    SMSGATE_INGRESS_ADDR="127.0.0.1:$port" SMSGATE_ADMIN_ADDR="127.0.0.1:0" SMSGATE_ADMIN_TOKEN=bench-admin-token-0123456789abcdef \
    RUST_LOG=${RUST_LOG:-info} SMSGATE_LOG_FORMAT=json ${wrap:-} "${builds[$label]}" >"$tmp/server.log" 2>&1 &
  fi
  local main=$!; pids+=($main)
  for _ in $(seq 300); do nc -z 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  server_pids=("$main" $(pgrep -P "$main" || true))
}

name() { if [ "$1" = peer ]; then echo peer; else echo "${builds[$1]}"; fi; }
results="$tmp/results.tsv"
run() {
  local label=$1 out t0 n0 t1 n1 reqs non2xx ok rps p50 p99 rss
  start "$label"
  wrk_load 1 >/dev/null
  t0=$(ticks "${server_pids[@]}"); k0=$(ticks_of '$15' "${server_pids[@]}"); n0=$(ticks "$nats_pid")
  out=$(wrk_load "$secs")
  t1=$(ticks "${server_pids[@]}"); k1=$(ticks_of '$15' "${server_pids[@]}"); n1=$(ticks "$nats_pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); ok=$(( reqs - ${non2xx:-0} ))
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")"); p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  rss=0; for p in "${server_pids[@]}"; do rss=$(( rss + $(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done
  stop_all
  [ "$ok" -gt 0 ] || { echo "no webhook accepted by $(name "$label"); its log:" >&2; tail -5 "$tmp/server.log" >&2; exit 1; }
  awk -v l="$label" -v n="$(name "$label")" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v ok="$ok" -v bad="${non2xx:-0}" \
      -v cpu=$(( t1 - t0 )) -v kcpu=$(( k1 - k0 )) -v ncpu=$(( n1 - n0 )) -v hz="$hz" -v rss="$rss" -v secs="$secs" 'BEGIN {
    us = cpu / hz * 1e6 / ok; kus = kcpu / hz * 1e6 / ok; nus = ncpu / hz * 1e6 / ok
    printf "%-5s %8d req/s  p50 %6.2f ms  p99 %6.2f ms  server %5.1f us/webhook (user %.1f + system %.1f; %3.0f%% of a core)  nats-server %5.1f us  peak RSS %4d MiB  non-2xx %d  %s\n", \
      l, rps, p50, p99, us, us - kus, kus, 100 * cpu / hz / secs, nus, rss / 1024, bad, n > "/dev/stderr"
    printf "%s\t%d\t%.2f\t%.2f\t%.1f\t%.1f\t%d\t%.1f\n", l, rps, p50, p99, us, nus, rss / 1024, kus }' >>"$results"
}

labels=("${!builds[@]}"); [ "$peer" = 1 ] && labels+=(peer)
echo "== ${#builds[@]} build(s)$([ "$peer" = 1 ] && echo " + the Python peer"), $rounds round(s) of ${secs}s, wrk 1 thread, $c connections; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for i in "${!builds[@]}"; do echo "   $i = ${builds[$i]}"; done
for _ in $(seq "$rounds"); do for l in "${labels[@]}"; do run "$l"; done; done

# -r 0: only the extra runs asked for (--profile, --syscalls, --callgrind).
if [ "$rounds" -gt 0 ]; then
  echo "== median per build"
  median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
  declare -A rps us
  for l in "${labels[@]}"; do
    col() { awk -F'\t' -v l="$l" -v k="$1" '$1 == l {print $k}' "$results" | median; }
    rps[$l]=$(col 2); us[$l]=$(col 5)
    printf '%-5s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  server %5.1f us/webhook (system %s)  nats-server %5.1f us  peak RSS %s MiB\n' \
      "$l" "${rps[$l]}" "$(col 3)" "$(col 4)" "${us[$l]}" "$(col 8)" "$(col 6)" "$(col 7)"
  done
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
  if [ ${#builds[@]} -eq 2 ]; then
    echo "== B/A: throughput x$(ratio "${rps[1]}" "${rps[0]}"), CPU per webhook x$(ratio "${us[1]}" "${us[0]}")"
  fi
  if [ "$peer" = 1 ]; then
    for i in "${!builds[@]}"; do echo "== $i/peer: throughput x$(ratio "${rps[$i]}" "${rps[peer]}")"; done
  fi
fi

if [ "$profile" = 1 ]; then
  for i in "${!builds[@]}"; do
    echo "== top functions (self time) of build $i under load"
    start "$i"
    ( wrk_load $(( secs + 2 )) >/dev/null ) & load=$!
    sleep 1
    perf record -g -F 999 -p "${server_pids[0]}" -o "$tmp/perf.data" -- sleep "$secs" >/dev/null 2>&1 || true
    wait $load; stop_all; [ -n "${PERF_OUT:-}" ] && cp "$tmp/perf.data" "$PERF_OUT.$i"
    perf report -i "$tmp/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | sed -E "s/ +/ /g" | cut -c1-150 | head -25 || true
  done
fi

accepted() { local reqs bad; reqs=$(awk '/requests in/ {print $1}' <<<"$1"); bad=$(awk '/Non-2xx/ {print $NF}' <<<"$1"); echo $(( reqs - ${bad:-0} )); }

if [ "$syscalls" = 1 ]; then
  events=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait
  for i in "${!builds[@]}"; do
    echo "== system calls per webhook of build $i under load"
    start "$i"
    perf stat -x, -e "$events" -p "${server_pids[0]}" -o "$tmp/syscalls.csv" -- sleep $(( secs + 1 )) & counting=$!
    out=$(wrk_load "$secs"); wait $counting || true; stop_all
    awk -F, -v n="$(accepted "$out")" '$3 ~ /sys_enter/ { $3 = ($3 ~ /^raw/) ? "all" : substr($3, index($3, "sys_enter_") + 10); printf "   %-12s %5.2f\n", $3, $1 / n }' "$tmp/syscalls.csv"
  done
fi

if [ "$callgrind" = 1 ]; then
  for i in "${!builds[@]}"; do
    echo "== instructions per webhook of build $i (callgrind, 8 connections, ${secs}s)"
    wrap="valgrind --tool=callgrind --callgrind-out-file=$tmp/callgrind.out" start "$i"
    c=8 wrk_load 2 >/dev/null; callgrind_control --zero "${server_pids[0]}" >/dev/null 2>&1
    out=$(c=8 wrk_load "$secs"); stop_all
    callgrind_annotate "$tmp/callgrind.out" 2>/dev/null | awk -v n="$(accepted "$out")" '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "   %.1fk instructions per webhook (%d webhooks)\n", $1 / n / 1000, n }'
  done
fi
