#!/usr/bin/env bash
# Voice bench (ConversationRelay, voice.mode "relay"): N concurrent relay
# calls, each a WebSocket from the testkit's Twilio simulator (signed
# upgrade, setup, prompts), against release builds of ingress and the worker
# (in one test process, the worker on its own runtime) on a private
# nats-server, the model being the testkit's streaming stub (first token
# after 300 ms, then one every 20 ms). Reports the first-token latency that
# smsgate adds: the instant the caller's simulator received the first token
# minus the instant the stub wrote it (prompt → durable turn → worker →
# model stream → P.voice.tokens → ingress → socket), p50/p99/max.
# Usage: deploy/bench-voice.sh [CALLS] [TURNS_PER_CALL]   (defaults 50 3)
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-50}; rounds=${2:-3}
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server; }
RELAY_BENCH_CALLS=$calls RELAY_BENCH_ROUNDS=$rounds \
  cargo test --release -q -p smsgate-ingress --test it relay::fifty_concurrent_relay_calls -- --nocapture 2>&1 \
  | grep -E "concurrent relay calls|test result"
