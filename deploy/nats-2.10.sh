#!/usr/bin/env bash
# Puts a nats-server 2.10 (Debian trixie's package) in .local/nats-2.10/ and
# prints its path, without installing anything from trixie on this bookworm
# machine: trixie is added as an apt source in a scratch file only for
# `apt-get download`, the package is unpacked with `dpkg-deb -x`, and the
# source is removed again (left in place it would pull trixie's libc into
# later installs). Debian bookworm has only 2.9.10, which rejects
# `sync_interval` (deploy/nats/single.conf) and lacks 2.10's features.
#
#   NATS_SERVER_BIN=$(deploy/nats-2.10.sh) cargo test ...   # tests on 2.10
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.local/nats-2.10
bin="$PWD/$dest/usr/sbin/nats-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
scratch=/etc/apt/sources.list.d/smsgate-trixie-scratch.sources
cleanup() { $SUDO rm -f "$scratch"; $SUDO apt-get update -qq >/dev/null 2>&1 || true; }
trap cleanup EXIT
$SUDO tee "$scratch" >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
$SUDO apt-get update -qq >/dev/null
work=$(mktemp -d)
(cd "$work" && apt-get download -qq nats-server/trixie >/dev/null)
mkdir -p "$dest"
dpkg-deb -x "$work"/nats-server_*.deb "$dest"
rm -rf "$work"
"$bin" --version >&2
echo "$bin"
