#!/usr/bin/env bash
# Build the operator and the CPU trainer image from the repository's own Dockerfiles, with no
# registry: the base image is a Debian bookworm root filesystem made by debootstrap.
#
# Run:   hack/build-images.sh [operator] [trainer]   (default: both; needs root)
#        hack/build-images.sh --print-archives       (prints name=path of each image archive, exits)
# Env:   FTOP_CACHE (default ~/.cache/finetune-operator); the cache is $FTOP_CACHE/images-cache
#        (or FTOP_IMAGES_CACHE). PIP_CERT: a CA bundle for pip inside the builds (default: the
#        host's /etc/ssl/certs/ca-certificates.crt when present; passed as a build secret, never
#        stored in an image). DEBIAN_MIRROR (default http://deb.debian.org/debian).
#        FTOP_DOCKER_SOCK (default /run/ftop-docker.sock). DOCKER_CLI (default /usr/bin/docker:
#        Debian's 20.10 client, BuildKit built in; a 23+ client needs the buildx plugin).
#
# Steps, each skipped when its output is current:
#   1. debootstrap --variant=minbase bookworm -> $CACHE/rootfs/ftop-base-bookworm.tar ->
#      `docker import` as localhost/ftop-base:bookworm.
#   2. A private engine: containerd + dockerd with their own root, state and socket, no bridge
#      and no iptables/sysctl changes, unless one already answers at FTOP_DOCKER_SOCK. Stopped on
#      exit when this script started it. Its data root ($CACHE/docker) keeps the layer cache and
#      pip's cache mount between runs.
#   3. docker build (BuildKit, --network host) of
#        localhost/finetune-operator:dev  operator/Dockerfile, PYTHON_IMAGE=the base
#        localhost/finetune-trainer:cpu   trainer_image/Dockerfile, BASE_IMAGE=the base,
#                                         EXTRAS=train, DS_OPS=the CPU ops
#   4. A smoke run of each new image (its pods' UID, read-only root, no network), then docker save
#      to $CACHE/images/<name>.tar, only when the image ID differs from the one saved (kept in
#      <name>.tar.id). The end-to-end harness imports these archives
#      (`ctr -n k8s.io images import`) and runs pods with imagePullPolicy: Never.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FTOP_IMAGES_CACHE:-${FTOP_CACHE:-$HOME/.cache/finetune-operator}/images-cache}"
ARCHIVES="$CACHE/images"
SOCK="${FTOP_DOCKER_SOCK:-/run/ftop-docker.sock}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
BASE_IMAGE=localhost/ftop-base:bookworm
OPERATOR_IMAGE=localhost/finetune-operator:dev
TRAINER_IMAGE=localhost/finetune-trainer:cpu
CPU_DS_OPS="DS_ACCELERATOR=cpu DS_BUILD_CPU_ADAM=1 DS_BUILD_SHM_COMM=1"

# name -> image; the archive is $ARCHIVES/<name>.tar
declare -A IMAGE=([operator]="$OPERATOR_IMAGE" [trainer]="$TRAINER_IMAGE")
ORDER=(operator trainer)

if [[ "${1:-}" == "--print-archives" ]]; then
  for n in "${ORDER[@]}"; do echo "$n=$ARCHIVES/$n.tar"; done
  exit 0
fi

TARGETS=()
for a in "$@"; do
  case "$a" in
    operator|trainer) TARGETS+=("$a") ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images: unknown argument '$a' (operator, trainer, --print-archives)" >&2; exit 2 ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ORDER[@]}")

T0=$(date +%s)
log() { printf '[build-images %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { echo "build-images: $*" >&2; exit 1; }

# ---- tools ----------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, dockerd)"
# The docker client must drive BuildKit: Debian's docker.io 20.10 client does so itself; a newer
# client needs the buildx plugin (a 23+ client without it fails with DOCKER_BUILDKIT=1).
DOCKER_CLI="${DOCKER_CLI:-/usr/bin/docker}"
[[ -x "$DOCKER_CLI" ]] || DOCKER_CLI="$(command -v docker || true)"
[[ -n "$DOCKER_CLI" ]] || die "no docker client (apt-get install docker.io)"
cli_major="$("$DOCKER_CLI" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)"
if [[ -z "$cli_major" || "$cli_major" -ge 23 ]] && ! "$DOCKER_CLI" buildx version >/dev/null 2>&1; then
  die "$DOCKER_CLI cannot run BuildKit builds (version '${cli_major:-?}', no buildx plugin); set DOCKER_CLI to Debian's /usr/bin/docker (docker.io)"
fi
for t in debootstrap dockerd containerd runc flock tar; do
  command -v "$t" >/dev/null 2>&1 || die "'$t' is not on PATH (apt-get install debootstrap docker.io containerd runc)"
done
PIP_CERT_FILE="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
SECRET_ARGS=()
if [[ -r "$PIP_CERT_FILE" ]]; then
  SECRET_ARGS=(--secret "id=pipcert,src=$PIP_CERT_FILE")
else
  log "no CA bundle at '$PIP_CERT_FILE': pip in the builds uses its own"
fi

mkdir -p "$CACHE" "$ARCHIVES" "$CACHE/rootfs" "$CACHE/logs"
# One build at a time per cache, and one per engine socket.
exec 8>"$CACHE/.build.lock"
if ! flock -n 8; then log "another build uses $CACHE; waiting for it"; flock 8; fi
exec 9>"$SOCK.lock"
if ! flock -n 9; then log "another build uses $SOCK; waiting for it"; flock 9; fi

export DOCKER_HOST="unix://$SOCK" DOCKER_BUILDKIT=1
docker() { "$DOCKER_CLI" "$@"; }

# ---- engine ---------------------------------------------------------------------------------
RUN_DIR="${SOCK%.sock}"                       # /run/ftop-docker: dockerd's exec root
CTR_DIR="$RUN_DIR-containerd"                 # containerd's state and socket
CTR_SOCK="$CTR_DIR/containerd.sock"
STARTED_DOCKERD="" STARTED_CONTAINERD=""

stop_pid() {  # stop_pid PID NAME
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  log "$2 (pid $pid) did not stop in 30s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}
rm_run_dir() {  # remove a stopped engine's state dir under /run (dockerd leaves netns/default mounted)
  local m
  [[ -d "$1" ]] || return 0
  for m in $(awk -v d="$1/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || true
  done
  if ! grep -q " $1/" /proc/self/mounts; then rm -rf "$1"; fi
}
cleanup() {
  local rc=$?
  if [[ -n "$STARTED_DOCKERD" ]]; then stop_pid "$STARTED_DOCKERD" dockerd; rm_run_dir "$RUN_DIR"; fi
  if [[ -n "$STARTED_CONTAINERD" ]]; then stop_pid "$STARTED_CONTAINERD" containerd; rm_run_dir "$CTR_DIR"; fi
  if [[ -n "$STARTED_DOCKERD$STARTED_CONTAINERD" ]]; then log "engine stopped"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_up; then
  log "using the engine already at $SOCK ($(docker info --format '{{.DockerRootDir}}' 2>/dev/null))"
else
  t=$(date +%s)
  rm -f "$SOCK"
  mkdir -p "$CTR_DIR" "$CACHE/engine" "$CACHE/containerd" "$CACHE/docker"
  # Our own containerd: dockerd would otherwise attach to any containerd at the default
  # /run/containerd socket (e.g. a test node's) instead of starting its own.
  cat >"$CACHE/engine/containerd.toml" <<EOF
version = 2
root = "$CACHE/containerd"
state = "$CTR_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
  # dockerd's own config file: the host's /etc/docker/daemon.json does not apply, and its
  # identity key stays in the cache instead of /etc/docker/key.json.
  printf '{"deprecated-key-path": "%s"}\n' "$CACHE/engine/key.json" >"$CACHE/engine/daemon.json"
  containerd --config "$CACHE/engine/containerd.toml" >>"$CACHE/logs/containerd.log" 2>&1 &
  STARTED_CONTAINERD=$!
  for _ in $(seq 1 60); do [[ -S "$CTR_SOCK" ]] && break; sleep 0.5; done
  [[ -S "$CTR_SOCK" ]] || die "containerd did not start; see $CACHE/logs/containerd.log"
  # No bridge, no iptables/ip-forward/masquerade changes on the host; builds use --network host.
  dockerd --config-file "$CACHE/engine/daemon.json" --data-root "$CACHE/docker" \
    --exec-root "$RUN_DIR" --pidfile "$RUN_DIR.pid" -H "unix://$SOCK" --containerd "$CTR_SOCK" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    >>"$CACHE/logs/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 1 120); do engine_up && break; kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
  engine_up || die "dockerd did not start; see $CACHE/logs/dockerd.log"
  log "engine started in $(( $(date +%s) - t ))s (dockerd $(docker version --format '{{.Server.Version}}'), data root $CACHE/docker, socket $SOCK)"
fi

# ---- 1. base image ---------------------------------------------------------------------------
ROOTFS_TAR="$CACHE/rootfs/ftop-base-$SUITE.tar"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "$BASE_IMAGE: present"
else
  if [[ ! -s "$ROOTFS_TAR" ]]; then
    t=$(date +%s)
    dir="$CACHE/rootfs/$SUITE.tmp"
    rm -rf "$dir"
    log "debootstrap --variant=minbase $SUITE from $MIRROR ..."
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$dir" "$MIRROR" \
      >"$CACHE/logs/debootstrap.log" 2>&1 \
      || { tail -n 30 "$CACHE/logs/debootstrap.log" >&2; die "debootstrap failed; see $CACHE/logs/debootstrap.log"; }
    # Like Debian's own images: the usual suites, no service starts, no apt caches.
    cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d" && chmod 755 "$dir/usr/sbin/policy-rc.d"
    rm -rf "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
      "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir"/etc/resolv.conf "$dir"/etc/hostname "$dir"/debootstrap
    tar --numeric-owner --xattrs -C "$dir" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
      -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$dir"
    log "debootstrap + tar: $(( $(date +%s) - t ))s ($(du -h "$ROOTFS_TAR" | cut -f1))"
  fi
  t=$(date +%s)
  docker import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
  log "$BASE_IMAGE: imported in $(( $(date +%s) - t ))s"
fi

# ---- 2. images -------------------------------------------------------------------------------
size() { numfmt --to=iec --suffix=B "$(docker image inspect --format '{{.Size}}' "$1")"; }
build() {  # build NAME DOCKERFILE BUILD-ARGS...
  local name="$1" file="$2" t log="$CACHE/logs/build-$1.log"
  shift 2
  t=$(date +%s)
  log "${IMAGE[$name]}: building from $file (log: $log) ..."
  if ! docker build --network host --progress plain "${SECRET_ARGS[@]}" -f "$REPO/$file" \
      -t "${IMAGE[$name]}" "$@" "$REPO" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "${IMAGE[$name]}: build failed; see $log"
  fi
  log "${IMAGE[$name]}: built in $(( $(date +%s) - t ))s, $(size "${IMAGE[$name]}")"
}
smoke() {  # smoke NAME: start the image the way its pods do (UID, read-only root, no network)
  local name="$1" ref="${IMAGE[$1]}" out
  local run=(docker run --rm --network none --read-only --tmpfs /tmp)
  case "$name" in
    operator)  # USER= empty: getpass falls back to the passwd entry for 65532
      out="$("${run[@]}" --user 65532:65532 -e USER= --entrypoint python "$ref" \
        -c 'import getpass, finetune_operator.main; print("operator imports; user", getpass.getuser())' 2>&1)" ;;
    trainer)   # the prebuilt DeepSpeed ops load with no compiler run (check_ds_ops forbids JIT)
      out="$("${run[@]}" --user 1000:1000 --tmpfs /workspace:uid=1000,gid=1000 --entrypoint python "$ref" \
        /opt/check_ds_ops.py 2>&1)" ;;
  esac || { echo "$out" >&2; die "$ref: smoke run failed"; }
  log "$ref: smoke run ok: $(echo "$out" | grep -E '^(operator|check_ds_ops)' | tr '\n' ' ')"
}
save() {  # save NAME: docker save when the image ID changed since the last save
  local name="$1" ref="${IMAGE[$1]}" id t
  local tar="$ARCHIVES/$name.tar"
  id="$(docker image inspect --format '{{.Id}}' "$ref")"
  if [[ -s "$tar" && "$(cat "$tar.id" 2>/dev/null)" == "$id" ]]; then
    log "$ref: $tar is current"
    return
  fi
  smoke "$name"
  t=$(date +%s)
  rm -f "$tar.id" "$tar"  # (the old archive goes first: a trainer archive is ~6 GB, two at once filled the disk)
  docker save -o "$tar.tmp" "$ref"
  mv "$tar.tmp" "$tar"
  echo "$id" >"$tar.id"
  log "$ref: saved to $tar in $(( $(date +%s) - t ))s ($(du -h "$tar" | cut -f1))"
}

for n in "${TARGETS[@]}"; do
  case "$n" in
    operator) build operator operator/Dockerfile --build-arg "PYTHON_IMAGE=$BASE_IMAGE" ;;
    trainer) build trainer trainer_image/Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" \
               --build-arg EXTRAS=train --build-arg "DS_OPS=$CPU_DS_OPS" ;;
  esac
done
for n in "${TARGETS[@]}"; do save "$n"; done
# Images the new builds replaced (untagged now) go; the layer cache and pip's cache mount stay.
docker image prune -f >/dev/null

for n in "${TARGETS[@]}"; do
  log "$n: ${IMAGE[$n]} $(size "${IMAGE[$n]}") -> $ARCHIVES/$n.tar"
done
log "done in $(( $(date +%s) - T0 ))s; cache $CACHE"
