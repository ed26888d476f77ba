#!/usr/bin/env bash
# Build Kueue's controller manager from its Go module, at a pinned version, into the test cache.
#
# Run:   hack/build-kueue.sh               (or: make kueue-build)
#        hack/build-kueue.sh --print-bin    (prints the bin directory and exits)
#        hack/build-kueue.sh --print-root   (prints the version root: bin/, config/ and exits)
# Env:   FTOP_CACHE (default ~/.cache/finetune-operator), GO_BUILD_P (default 2),
#        KUEUE_VERSION (default v0.17.0).
#
# Result: $FTOP_CACHE/kueue-<version>/bin/kueue (the manager, sigs.k8s.io/kueue/cmd/kueue) and
# $FTOP_CACHE/kueue-<version>/config/{crd,webhook}/ (the CRDs of config/components/crd/bases, the
# crd kustomization.yaml with its conversion-webhook patches, and the webhook definitions of
# config/components/webhook/manifests.yaml, copied out of the downloaded module). A built version is skipped, so a warm run is instant.
#
# GOPATH/GOMODCACHE/GOCACHE are the ones of hack/build-control-plane.sh, so the k8s.io modules
# and the build cache are shared. sigs.k8s.io/kueue's go.mod has no replace directives, so
# `go install sigs.k8s.io/kueue/cmd/kueue@VERSION` builds it with exactly its own go.sum.
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE="${FTOP_CACHE:-$HOME/.cache/finetune-operator}"
ROOT="$CACHE/kueue-$KUEUE_VERSION"
BIN="$ROOT/bin"
CONFIG="$ROOT/config"

case "${1:-}" in
  --print-bin) echo "$BIN"; exit 0 ;;
  --print-root) echo "$ROOT"; exit 0 ;;
esac

export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/pkg/mod"
export GOCACHE="$CACHE/go-build"
export GOFLAGS="-buildvcs=false"   # no -mod=mod: `go install pkg@version` refuses it
export GOTOOLCHAIN=local
export CGO_ENABLED=0
P="${GO_BUILD_P:-2}"

T0=$(date +%s)
log() { printf '[build-kueue %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

if [[ -x "$BIN/kueue" && -f "$CONFIG/.ready" ]]; then
  log "kueue $KUEUE_VERSION: already built, skipping ($BIN/kueue)"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-kueue: the go command is not on PATH (Go >= 1.25 is needed for kueue $KUEUE_VERSION)" >&2
  exit 1
fi
mkdir -p "$BIN" "$CONFIG"

exec 9>"$ROOT/.build.lock"
if ! flock -n 9; then
  log "another build of kueue $KUEUE_VERSION is running; waiting for it"
  flock 9
fi

# ---- sources: CRDs and webhook definitions out of the module --------------------------------
log "downloading sigs.k8s.io/kueue@$KUEUE_VERSION"
MODDIR=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
[[ -d "$MODDIR" ]] || { echo "build-kueue: module directory not found after download" >&2; exit 1; }
CRDS=("$MODDIR"/config/components/crd/bases/*.yaml)
WEBHOOKS="$MODDIR/config/components/webhook/manifests.yaml"
if [[ ${#CRDS[@]} -lt 5 || ! -f "$MODDIR/config/components/crd/bases/kueue.x-k8s.io_workloads.yaml" ]]; then
  echo "build-kueue: CRDs missing in $MODDIR/config/components/crd/bases" >&2; exit 1
fi
[[ -f "$WEBHOOKS" ]] || { echo "build-kueue: $WEBHOOKS missing" >&2; exit 1; }
rm -rf "$CONFIG/crd" "$CONFIG/webhook"
mkdir -p "$CONFIG/crd" "$CONFIG/webhook"
cp "${CRDS[@]}" "$CONFIG/crd/"
# conversion-webhook patches (v1beta1 <-> v1beta2) and the kustomization that lists which apply
mkdir -p "$CONFIG/crd/patches"
cp "$MODDIR"/config/components/crd/kustomization.yaml "$CONFIG/crd/kustomization.yaml"
cp "$MODDIR"/config/components/crd/patches/webhook_in_*.yaml "$CONFIG/crd/patches/"
cp "$WEBHOOKS" "$CONFIG/webhook/manifests.yaml"
chmod -R u+w "$CONFIG"
log "copied ${#CRDS[@]} CRDs and the webhook manifests to $CONFIG"

# ---- the manager ------------------------------------------------------------------------------
if [[ ! -x "$BIN/kueue" ]]; then
  t=$(date +%s)
  log "kueue: go install sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION (-p $P) ..."
  TMPBIN=$(mktemp -d "$ROOT/gobin.XXXXXX")
  V=sigs.k8s.io/kueue/pkg/version
  GOBIN="$TMPBIN" go install -p "$P" -trimpath \
    -ldflags "-s -w -X $V.GitVersion=$KUEUE_VERSION -X $V.GitCommit=module-$KUEUE_VERSION -X $V.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  mv "$TMPBIN/kueue" "$BIN/kueue"
  rmdir "$TMPBIN"
  log "kueue: built in $(( $(date +%s) - t ))s ($(du -h "$BIN/kueue" | cut -f1))"
fi
echo "$KUEUE_VERSION" > "$CONFIG/.ready"
echo "kueue-$KUEUE_VERSION" > "$BIN/VERSION"
log "done in $(( $(date +%s) - T0 ))s: $BIN"
