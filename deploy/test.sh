#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and all tests against a real
# nats-server. Installs what is missing first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# run-local.sh (and README step 1's check below) shows JSON logs with jq.
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
# The console's tests drive a real headless Chromium over WebDriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The alert rules' unit tests and the observability profile's Prometheus config.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is missing; install Rust 1.89 or later (https://rustup.rs)" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== no test kit or test hook in a shipped build"
for crate in smsgate-shared smsgate-admin smsgate-ingress smsgate-worker smsgate-sender smsgate-cli; do
  # Captured first: with pipefail, `cargo tree | grep -q` can fail on SIGPIPE.
  tree=$(cargo tree -e normal -p "$crate")
  if grep -q smsgate-testkit <<<"$tree"; then
    echo "test.sh: $crate depends on smsgate-testkit outside dev-dependencies" >&2
    exit 1
  fi
done
# The worker's test hooks (feature fault-hooks) only in test builds: a
# build without dev-dependencies, as release builds and the image are, has
# no way to turn them on.
tree=$(cargo tree -e normal,features --workspace -i smsgate-worker)
if grep -q fault-hooks <<<"$tree"; then
  echo "test.sh: a build without dev-dependencies enables smsgate-worker's fault-hooks" >&2
  exit 1
fi
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== README step 1 against the binaries the tests built (deploy/readme-check.sh)"
./deploy/readme-check.sh
echo "== nats-server 2.10: the config files in deploy/nats and the bus tests"
if nats210=$(./deploy/nats-2.10.sh); then
  for f in deploy/nats/*.conf; do "$nats210" -c "$f" -t; done
  NATS_SERVER_BIN="$nats210" cargo test -p smsgate-shared --test it
  echo "== nats-server 2.10: a three-node cluster losing the inbound stream's leader"
  NATS_SERVER_BIN="$nats210" cargo test -p smsgate-e2e --test faults cluster -- --ignored
else
  echo "test.sh: SKIPPED: could not fetch nats-server 2.10 from Debian trixie (see above)" >&2
fi
if [ -f docker-compose.yml ]; then
  echo "== docker-compose config"
  docker-compose --env-file .env.example -f docker-compose.yml config -q
  docker-compose --env-file .env.example -f docker-compose.yml -f deploy/docker-compose.cluster.yml config -q
  docker-compose --env-file .env.example -f docker-compose.yml --profile observability config -q
fi
echo "== alert rules and Prometheus config (promtool)"
promtool check rules deploy/observability/alerts.yml
promtool test rules deploy/observability/alerts.test.yml
promtool check config deploy/observability/prometheus.yml
echo "== deploy/Dockerfile copies every workspace member"
members=$(sed -n 's/^members = \[\(.*\)\]/\1/p' Cargo.toml | tr -d '",')
for m in $members; do
  grep -qx "COPY $m $m" deploy/Dockerfile || { echo "test.sh: deploy/Dockerfile does not COPY the workspace member $m" >&2; exit 1; }
done
echo "== the container image: deploy/Dockerfile built with podman and run from its own filesystem"
if [ "$(id -u)" -eq 0 ]; then
  ./deploy/test-image.sh
else
  echo "test.sh: SKIPPED: deploy/test-image.sh needs root (debootstrap, podman storage, chroot)" >&2
fi
echo "== all checks passed"
