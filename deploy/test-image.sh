#!/usr/bin/env bash
# Builds deploy/Dockerfile without Docker and without any registry, then
# runs the image's own binaries against a real nats-server and pushes one
# simulated SMS through it.
#
#   1. installs what is missing (podman, debootstrap, nats-server) with apt;
#   2. builds the two base images the Dockerfile names, from Debian's
#      packages, under exactly those names: debian:bookworm-slim
#      (debootstrap --variant=minbase, slimmed like Docker's) and
#      rust:1.89-bookworm (that plus build-essential and this machine's
#      rustup toolchain in /usr/local/cargo and /usr/local/rustup, with the
#      real rust image's CARGO_HOME, RUSTUP_HOME and PATH, and the CAs this
#      machine added under /usr/local/share/ca-certificates, which cargo
#      needs behind a TLS-inspecting proxy). The compiler is whatever rustup
#      runs here, not necessarily 1.89. Kept between runs: a tag that
#      exists is not built again unless --rebuild-base;
#   3. builds deploy/Dockerfile as it is:
#        podman build --isolation chroot -f deploy/Dockerfile -t smsgate:test .
#      (cargo fetches the crates inside the build; the RUN cache mounts live
#      in /var/tmp/buildah-cache and survive between runs);
#   4. mounts the image's filesystem (podman create + podman mount; `podman
#      run` cannot start containers on every machine) and runs ingress,
#      worker and sender from it with chroot, as the image's USER, with the
#      image's ENV, against a nats-server with JetStream on a free port;
#      waits for their health endpoints, sends an SMS with the image's
#      `smsgate simulate` and waits for the echo reply in
#      `smsgate conversation` (the channel of deploy/channels.example.json:
#      echo chat, replies written to the log, no Twilio account);
#   5. prints the image's size and the time taken, and stops and removes
#      everything it started, also on failure or Ctrl-C.
#
# Usage: deploy/test-image.sh [--rebuild-base] [--no-cache] [--skip-build]
#   --rebuild-base  build debian:bookworm-slim and rust:1.89-bookworm again
#                   (also SMSGATE_REBUILD_BASE=1)
#   --no-cache      build smsgate:test without podman's layer cache (the
#                   cargo cache mounts stay)
#   --skip-build    check the smsgate:test image that is there
# Environment: SMSGATE_IMAGE [smsgate:test], SMSGATE_IMAGE_MAX_MB [100: the
# size bound it asserts], SMSGATE_DEBIAN_MIRROR and
# SMSGATE_DEBIAN_SECURITY_MIRROR [what the host's apt sources use].
# Needs root (debootstrap, podman's storage, chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

say() { printf '\033[1m[test-image %3ss]\033[0m %s\n' "$((SECONDS - started))" "$*"; }
die() { printf '\033[1;31m[test-image] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }

image=${SMSGATE_IMAGE:-smsgate:test}
rebuild_base=${SMSGATE_REBUILD_BASE:-0}
build_flags=()
skip_build=0
for arg in "$@"; do
  case $arg in
    --rebuild-base) rebuild_base=1 ;;
    --no-cache) build_flags+=(--no-cache) ;;
    --skip-build) skip_build=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg (see --help)" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, podman's storage and chroot need it)"

# The FROM names, read from the Dockerfile so they cannot drift apart.
mapfile -t froms < <(awk 'toupper($1) == "FROM" { print $2 }' deploy/Dockerfile)
rust_base=""; debian_base=""
for f in "${froms[@]}"; do
  case $f in
    rust:*) rust_base=$f ;;
    debian:*) debian_base=$f ;;
    scratch) ;;
    *) die "deploy/Dockerfile names a base image this script cannot build: $f" ;;
  esac
done
[ -n "$rust_base" ] && [ -n "$debian_base" ] || die "expected a rust:* and a debian:* FROM in deploy/Dockerfile, found: ${froms[*]}"
suite=${debian_base#debian:}; suite=${suite%%-*}   # bookworm

# --- 1. tools ----------------------------------------------------------------------
need=()
command -v podman >/dev/null 2>&1 || need+=(podman fuse-overlayfs uidmap)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v rustup >/dev/null 2>&1 || die "rustup is missing: the rust base image is made from this machine's rustup toolchain (https://rustup.rs)"

# --- cleanup: everything started below is registered here -----------------------
work=$(mktemp -d /var/tmp/smsgate-test-image.XXXXXX)
logs="$work/logs"; mkdir -p "$logs"
pids=()
ctr=""
ok=0
# Whether a process started is still running (an exited one stays a zombie
# until waited for, which kill -0 does not tell).
running() { [ -r "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
all_alive() { local p; for p in "${pids[@]}"; do running "$p" || return 1; done; }
any_running() { local p; for p in "${pids[@]}"; do running "$p" && return 0; done; return 1; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do any_running || break; sleep 0.1; done
    kill -9 "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ -n "$ctr" ]; then
    podman umount "$ctr" >/dev/null 2>&1 || true
    podman rm -f "$ctr" >/dev/null 2>&1 || true
  fi
  # debootstrap mounts /proc and /sys in its target while it works; never
  # remove a tree that still has something mounted in it.
  local m
  for m in $(findmnt -rn -o TARGET | grep "^$work/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  if [ "$ok" = 1 ]; then
    rm -rf --one-file-system "$work"
  else
    find "$work" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf --one-file-system {} + 2>/dev/null || true
    printf '[test-image] logs kept in %s\n' "$logs" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints a file's last lines under a header (for failures).
show_log() { printf '\n----- %s (last %s lines) -----\n' "$1" "${2:-40}" >&2; tail -n "${2:-40}" "$1" >&2 || true; }

# --- 2. base images ------------------------------------------------------------------
# The Debian mirror the host's apt uses (deb822 .sources files or sources.list).
host_mirror() { # host_mirror SUITE
  local s=$1 u
  u=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$s" '
        BEGIN { RS = ""; FS = "\n" }
        { uris = ""; ok = 0
          for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uris = a[2] }
            if ($i ~ /^Suites:/) { n = split($i, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == s) ok = 1 }
            if ($i ~ /^Enabled:[ \t]*no/) { ok = 0; break }
          }
          if (ok && uris != "") { print uris; exit } }')
  if [ -z "$u" ]; then
    u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk -v s="$s" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++; if ($(i+1) == s) { print $i; exit } }')
  fi
  printf '%s' "${u%/}"
}
mirror=${SMSGATE_DEBIAN_MIRROR:-$(host_mirror "$suite")}
mirror=${mirror:-http://deb.debian.org/debian}
security=${SMSGATE_DEBIAN_SECURITY_MIRROR:-$(host_mirror "$suite-security")}
security=${security:-http://deb.debian.org/debian-security}

build_debian_base() {
  local t0=$SECONDS rootfs="$work/debian-rootfs" include=()
  say "building $debian_base: debootstrap --variant=minbase $suite from $mirror (log $logs/debootstrap.log)"
  # Without ca-certificates apt in the image could not use an https mirror.
  case $mirror$security in *https:*) include=(--include=ca-certificates) ;; esac
  debootstrap --variant=minbase "${include[@]}" "$suite" "$rootfs" "$mirror" >"$logs/debootstrap.log" 2>&1 \
    || { show_log "$logs/debootstrap.log"; die "debootstrap failed"; }
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
  # What Docker's debian:*-slim images do: no documentation, no apt caches.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::GzipIndexes "true"; Acquire::CompressionTypes::Order:: "gz";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/log/*.log
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  : >"$rootfs/etc/resolv.conf"; : >"$rootfs/etc/hostname"
  tar --numeric-owner -C "$rootfs" -c . | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "$debian_base" >"$logs/import.log" 2>&1 \
    || { show_log "$logs/import.log"; die "podman import $debian_base failed"; }
  rm -rf --one-file-system "$rootfs"
  say "built $debian_base in $((SECONDS - t0)) s"
}

build_rust_base() {
  local t0=$SECONDS ctx="$work/rust-context" sysroot name cargo_home rustup_home
  # The toolchain rustup runs here when nothing overrides it (run from / so a
  # rust-toolchain file in some checkout does not count).
  sysroot=$(cd / && rustc --print sysroot)
  name=$(basename "$sysroot")
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
  say "building $rust_base from $debian_base + build-essential + this machine's toolchain $name ($(cd / && rustc --version))"
  mkdir -p "$ctx/rustup/toolchains" "$ctx/cargo"
  # The toolchain without its 800 MB of HTML documentation; cargo/bin holds
  # rustup and its proxies (cargo, rustc, ...).
  tar -C "$sysroot" --exclude=./share/doc -c . | { mkdir -p "$ctx/rustup/toolchains/$name" && tar -C "$ctx/rustup/toolchains/$name" -x; }
  cp -a "$cargo_home/bin" "$ctx/cargo/bin"
  # Certificate authorities this machine added to its store (a TLS-inspecting
  # proxy's, say) are needed by cargo in the build too, or crates.io fails.
  mkdir -p "$ctx/local-ca"
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -a /usr/local/share/ca-certificates/. "$ctx/local-ca/"
    say "trusting this machine's own CAs in $rust_base too: $(cd "$ctx/local-ca" && find . -name '*.crt' | sed 's#^\./##' | tr '\n' ' ')"
  fi
  sed -e "s/^default_toolchain *=.*/default_toolchain = \"$name\"/" -e '/^\[overrides\]/,$d' \
    "$rustup_home/settings.toml" >"$ctx/rustup/settings.toml"
  grep -q '^default_toolchain' "$ctx/rustup/settings.toml" || echo "default_toolchain = \"$name\"" >>"$ctx/rustup/settings.toml"
  cat >"$ctx/Containerfile" <<EOF
FROM $debian_base
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      build-essential pkg-config ca-certificates curl git libssl-dev \\
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:\$PATH
COPY local-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN chmod -R a+w /usr/local/cargo /usr/local/rustup && rustup --version && cargo --version && rustc --version
EOF
  podman build --isolation chroot --pull=never -t "$rust_base" "$ctx" >"$logs/rust-base.log" 2>&1 \
    || { show_log "$logs/rust-base.log"; die "building $rust_base failed"; }
  rm -rf --one-file-system "$ctx"
  say "built $rust_base in $((SECONDS - t0)) s ($(grep -m1 '^rustc ' "$logs/rust-base.log" || true))"
}

t_base=$SECONDS
if [ "$skip_build" = 0 ]; then
  if [ "$rebuild_base" = 1 ] || ! podman image exists "$debian_base"; then
    build_debian_base; rebuild_base=1   # the rust image is built on it
  else
    say "$debian_base is there (--rebuild-base builds it again)"
  fi
  if [ "$rebuild_base" = 1 ] || ! podman image exists "$rust_base"; then
    build_rust_base
  else
    say "$rust_base is there (--rebuild-base builds it again)"
  fi
fi
t_base=$((SECONDS - t_base))

# --- 3. the image ----------------------------------------------------------------------
t_build=$SECONDS
if [ "$skip_build" = 0 ]; then
  say "podman build --isolation chroot -f deploy/Dockerfile -t $image . (log $logs/build.log)"
  # The whole output goes to the log; the steps and the workspace's crates show here.
  set +e
  podman build --isolation chroot --pull=never "${build_flags[@]}" -f deploy/Dockerfile -t "$image" . 2>&1 \
    | tee "$logs/build.log" | grep --line-buffered -E '^(\[[0-9/]+\] )?(STEP|COMMIT)|^ *(Compiling smsgate|Finished|error)'
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || { show_log "$logs/build.log" 60; die "podman build failed"; }
fi
t_build=$((SECONDS - t_build))
podman image exists "$image" || die "no image $image (build it: drop --skip-build)"

# --- 4. run it ----------------------------------------------------------------------
t_run=$SECONDS
ctr=$(podman create --name "smsgate-test-image-$$" "$image")
mnt=$(podman mount "$ctr")
[ -x "$mnt/usr/local/bin/smsgate-ingress" ] || die "no /usr/local/bin/smsgate-ingress in $image"
user=$(podman image inspect --format '{{.Config.User}}' "$image")
[ -n "$user" ] || die "$image has no USER: it would run as root"
uid=${user%%:*}
home=$(awk -F: -v u="$uid" '$3 == u { print $6 }' "$mnt/etc/passwd")
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')

# A free TCP port: below the kernel's ephemeral range (where a client's
# outgoing connection could take it at any time) and used by no socket.
eph_low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$eph_low" -gt 12000 ] || eph_low=32768
used_ports=" "
free_port() { # free_port VAR: sets VAR
  local p hex
  while :; do
    p=$((10000 + RANDOM % (eph_low - 10000)))
    case $used_ports in *" $p "*) continue ;; esac
    hex=$(printf ':%04X' "$p")
    awk -v h="$hex" 'FNR > 1 && substr($2, length($2) - 4) == h { found = 1 } END { exit !found }' \
      /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
    used_ports+="$p "; printf -v "$1" '%s' "$p"; return
  done
}
for v in nats_port ingress_port admin_port worker_port sender_port; do free_port "$v"; done

# What the services and the CLI see: the image's ENV, then what
# docker-compose.yml would set.
run_env=("${image_env[@]}"
  "HOME=${home:-/}"
  "SMSGATE_NATS_URL=nats://127.0.0.1:$nats_port"
  "SMSGATE_CHANNELS=/etc/smsgate/channels.example.json"
  "SMSGATE_PUBLIC_BASE_URL=http://127.0.0.1:$ingress_port"
  "TWILIO_AUTH_TOKEN=test-image-auth-token"
  "SMS_WEBHOOK_PATH_TOKEN=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 32)"
  "SMSGATE_INGRESS_ADDR=127.0.0.1:$ingress_port"
  "SMSGATE_ADMIN_ADDR=127.0.0.1:$admin_port"
  "SMSGATE_ADMIN_URL=http://127.0.0.1:$admin_port"
  "SMSGATE_WORKER_ADDR=127.0.0.1:$worker_port"
  "SMSGATE_SENDER_ADDR=127.0.0.1:$sender_port")

# image_cmd CMD ARGS... sets cmd to what runs CMD from the image's filesystem
# as the image's USER with only run_env. /proc and /dev are bound in a private
# mount namespace, so they go away with the process and never show on the
# host. Every step execs the next: started with `"${cmd[@]}" &`, $! is the
# service's own pid.
image_cmd() {
  cmd=(unshare --mount --propagation private -- /bin/bash -c '
    set -e; root=$1; user=$2; shift 2
    mount --bind /proc "$root/proc"
    mount --bind /dev "$root/dev"
    exec chroot --userspec="$user" "$root" "$@"' image_cmd "$mnt" "$user" /usr/bin/env -i "${run_env[@]}" "$@")
}
in_image() { image_cmd "$@"; "${cmd[@]}"; }

say "nats-server with JetStream on 127.0.0.1:$nats_port"
nats-server -js -sd "$work/nats" -a 127.0.0.1 -p "$nats_port" >"$logs/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
nats_info() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$nats_port && head -n 1 <&3" 2>/dev/null || true; }
for _ in $(seq 100); do nats_info | grep -q '"jetstream":true' && break; sleep 0.1; done
nats_info | grep -q '"jetstream":true' || { show_log "$logs/nats.log"; die "nats-server with JetStream did not start"; }


fail_with_logs() {
  local f
  for f in "$logs"/{ingress,worker,sender,nats}.log; do [ -f "$f" ] && show_log "$f" 30; done
  die "$*"
}

# All three at once, as docker-compose.yml starts them (each depends on nats
# only).
declare -A svc_pid=() restarts=()
start_service() {
  image_cmd "/usr/local/bin/smsgate-$1"
  "${cmd[@]}" >>"$logs/$1.log" 2>&1 &
  svc_pid[$1]=$!
  pids=("$nats_pid" "${svc_pid[@]}")
  say "started smsgate-$1 from the image as $user (pid $!)"
}
for svc in ingress worker sender; do start_service "$svc"; done

# A service that exits while they come up is started again, at most 3 times,
# and said so loudly: docker-compose.yml's `restart: unless-stopped` does
# the same, so a failure it would hide shows here as a warning.
supervise() {
  local svc rc
  for svc in ingress worker sender; do
    running "${svc_pid[$svc]}" && continue
    rc=0; wait "${svc_pid[$svc]}" 2>/dev/null || rc=$?
    restarts[$svc]=$((${restarts[$svc]:-0} + 1))
    [ "${restarts[$svc]}" -le 3 ] || fail_with_logs "smsgate-$svc exited (status $rc) 4 times"
    say "WARNING: smsgate-$svc exited (status $rc) while starting; its log ends with:"
    tail -n 2 "$logs/$svc.log" | sed 's/^/    /'
    start_service "$svc"
  done
}

# The health endpoints, asked with the image's own wget (its healthchecks use it).
# (BusyBox's wget crashes on its -T option; the time limit is timeout's.)
health() { image_cmd wget -q -O /dev/null "http://127.0.0.1:$1$2"; timeout 3 "${cmd[@]}" >/dev/null 2>&1; }
wait_health() { # wait_health NAME PORT PATH
  for _ in $(seq 60); do
    health "$2" "$3" && { say "$1 answers on :$2$3"; return; }
    supervise
    sleep 0.5
  done
  fail_with_logs "$1 did not answer on 127.0.0.1:$2$3 within 30 s"
}
wait_health ingress "$ingress_port" /api/health
wait_health worker "$worker_port" /api/health
wait_health sender "$sender_port" /api/health
wait_health "ingress (ready)" "$ingress_port" /api/ready
all_alive || fail_with_logs "a service exited"
# The pids cleanup stops are the services themselves, not a shell around them.
for p in "${pids[@]:1}"; do
  case $(cat "/proc/$p/comm") in smsgate-*) ;; *) die "pid $p is $(cat "/proc/$p/comm"), not a service" ;; esac
done

peer=+15551230000
body="image check $RANDOM$RANDOM"
say "smsgate simulate --channel local --from $peer --body \"$body\" (the image's CLI, as $user)"
in_image smsgate simulate --channel local --from "$peer" --body "$body" >"$logs/simulate.log" 2>&1 \
  || { show_log "$logs/simulate.log"; fail_with_logs "smsgate simulate failed"; }
cat "$logs/simulate.log"

# The echo chat answers with the same text, and the channel's sender writes
# it to its log instead of calling Twilio: the conversation shows
#   [10:30] ← Them: image check 123
#   [10:30] → You: image check 123  (logged)
replied=0
for _ in $(seq 60); do
  if in_image smsgate conversation --channel local "$peer" >"$logs/conversation.txt" 2>&1 \
     && grep -qF "← Them: $body" "$logs/conversation.txt" \
     && grep -qF "→ You: $body  (logged)" "$logs/conversation.txt"; then replied=1; break; fi
  sleep 0.5
done
cat "$logs/conversation.txt"
[ "$replied" = 1 ] || fail_with_logs "no logged echo reply in the conversation within 30 s"
grep -qE '"outcome": ?"logged"' "$logs/sender.log" || fail_with_logs "the sender's log has no outcome logged"
in_image smsgate channels >"$logs/channels.txt" 2>&1 || { cat "$logs/channels.txt"; fail_with_logs "smsgate channels failed"; }
cat "$logs/channels.txt"
t_run=$((SECONDS - t_run))

# --- 5. report ---------------------------------------------------------------------
size=$(podman image inspect --format '{{.Size}}' "$image")
say "$image: $size bytes ($(numfmt --to=iec --suffix=B "$size")); $debian_base: $(podman image inspect --format '{{.Size}}' "$debian_base" | numfmt --to=iec --suffix=B)"
# The footprint is part of the product: stripped binaries on an empty base.
max_mb=${SMSGATE_IMAGE_MAX_MB:-100}
[ "$size" -le $(( max_mb * 1000 * 1000 )) ] || die "$image is $size bytes, over the ${max_mb} MB bound (deploy/Dockerfile ships stripped binaries on an empty base; what grew?)"
for svc in "${!restarts[@]}"; do
  say "WARNING: smsgate-$svc had to be started again ${restarts[$svc]} time(s) (see above)"
done
say "passed: base images ${t_base}s, image build ${t_build}s, run ${t_run}s, total $((SECONDS - started))s"
ok=1
