#!/usr/bin/env bash
# Build the test control plane from Go modules, at pinned versions, into a cache outside the repo.
#
# Run:   hack/build-control-plane.sh            (or: make cluster-build)
#        hack/build-control-plane.sh --print-bin  (prints the bin directory and exits)
# Env:   FTOP_CACHE (default ~/.cache/finetune-operator), GO_BUILD_P (default 2).
#
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, and for the real node
# kubelet and kube-proxy (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3), kwok
# (sigs.k8s.io/kwok), helm (helm.sh/helm/v3) and coredns (github.com/coredns/coredns, a build
# with only the plugins the test cluster's DNS uses) and prometheus (github.com/prometheus/
# prometheus, Kubernetes service discovery only) into $FTOP_CACHE/<version-stamp>/bin. Binaries already there are skipped, so a warm run is instant.
# GOPATH/GOMODCACHE/GOCACHE live under $FTOP_CACHE/go so later builds are incremental.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the staging modules
# (k8s.io/api, k8s.io/apimachinery, ...) with local ./staging paths. We build it from a
# throw-away wrapper module that requires k8s.io/kubernetes and replaces every staging module
# (the list is read from the downloaded go.mod) with the matching v0.Y.Z release.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"  # the Go module's version of Prometheus 3.16.0

CACHE="${FTOP_CACHE:-$HOME/.cache/finetune-operator}"
STAMP="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_coredns-${COREDNS_VERSION}_prometheus-${PROMETHEUS_VERSION}"
ROOT="$CACHE/$STAMP"
BIN="$ROOT/bin"
SRC="$ROOT/src"

if [[ "${1:-}" == "--print-bin" ]]; then
  echo "$BIN"
  exit 0
fi

export GOPATH="$CACHE/go"
export GOMODCACHE="$CACHE/go/pkg/mod"
export GOCACHE="$CACHE/go-build"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
P="${GO_BUILD_P:-2}"
mkdir -p "$BIN" "$SRC"

need() {  # need NAME... -> true when any of the binaries is missing
  local n
  for n in "$@"; do [[ -x "$BIN/$n" ]] || return 0; done
  return 1
}

T0=$(date +%s)
BUILT=0
log() { printf '[build-control-plane %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

if need etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm coredns prometheus \
    && ! command -v go >/dev/null 2>&1; then
  echo "build-control-plane: the go command is not on PATH (Go >= 1.24 is needed to build $STAMP)" >&2
  exit 1
fi

# One build at a time per version stamp (tests, make targets and other checkouts share the cache).
exec 9>"$ROOT/.build.lock"
if ! flock -n 9; then
  log "another build of $STAMP is running; waiting for it"
  flock 9
fi

# ---- wrapper-module builder --------------------------------------------------------------
# gobuild MODDIR OUTNAME PKG LDFLAGS
gobuild() {
  local dir="$1" name="$2" pkg="$3" ld="$4" t
  if [[ -x "$BIN/$name" ]]; then log "$name: already built, skipping"; return; fi
  t=$(date +%s)
  log "$name: go build $pkg ..."
  (cd "$dir" && go build -p "$P" -trimpath -ldflags "-s -w $ld" -o "$BIN/$name.tmp.$$" "$pkg")
  mv "$BIN/$name.tmp.$$" "$BIN/$name"
  BUILT=1
  log "$name: built in $(( $(date +%s) - t ))s ($(du -h "$BIN/$name" | cut -f1))"
}

# wrapper DIR MODULE@VERSION PKG... : a module whose tools.go imports the packages to build
wrapper() {
  local dir="$1" modver="$2"; shift 2
  mkdir -p "$dir"
  if [[ -f "$dir/.ready" && "$(cat "$dir/.ready")" == "$modver $*" ]]; then return; fi
  log "preparing wrapper module in $dir for $modver"
  (
    cd "$dir"
    rm -f go.mod go.sum tools.go
    go mod init build.local/wrapper >/dev/null 2>&1
    {
      echo '//go:build tools'
      echo
      echo '// Package tools pins the commands this wrapper module builds.'
      echo 'package tools'
      echo
      echo 'import ('
      for p in "$@"; do echo "	_ \"$p\""; done
      echo ')'
    } > tools.go
    if [[ -n "${EXTRA_REPLACES:-}" ]]; then printf '%s\n' "$EXTRA_REPLACES" >> go.mod; fi
    go mod edit -require="$modver"
    go mod tidy
  )
  echo "$modver $*" > "$dir/.ready"
}

# ---- etcd ---------------------------------------------------------------------------------
if need etcd; then
  EXTRA_REPLACES="" wrapper "$SRC/etcd" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
    go.etcd.io/etcd/server/v3
  gobuild "$SRC/etcd" etcd go.etcd.io/etcd/server/v3 \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
else log "etcd: already built, skipping"; fi

# ---- kubernetes ---------------------------------------------------------------------------
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
if need "${K8S_CMDS[@]}"; then
  log "downloading k8s.io/kubernetes@$K8S_VERSION (go.mod + sources)"
  KGOMOD=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  STAGING_V="v0.${K8S_VERSION#v1.}"
  # every `k8s.io/foo => ./staging/src/k8s.io/foo` replace becomes `k8s.io/foo => k8s.io/foo v0.Y.Z`
  EXTRA_REPLACES=$(awk -v v="$STAGING_V" '
      /=> *\.\/staging\/src\// { for (i = 1; i <= NF; i++) if ($i ~ /^k8s\.io\//) { print "replace " $i " => " $i " " v; break } }' "$KGOMOD")
  log "replacing $(echo "$EXTRA_REPLACES" | wc -l) staging modules with $STAGING_V"
  EXTRA_REPLACES="$EXTRA_REPLACES" wrapper "$SRC/kubernetes" "k8s.io/kubernetes@$K8S_VERSION" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  MAJOR=$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')
  MINOR=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
  BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  KLD=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    KLD="$KLD -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR"
    KLD="$KLD -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE -X $pkg.gitCommit=module-$K8S_VERSION"
  done
  for c in "${K8S_CMDS[@]}"; do
    gobuild "$SRC/kubernetes" "$c" "k8s.io/kubernetes/cmd/$c" "$KLD"
  done
else log "kubernetes: already built, skipping"; fi

# ---- kwok ---------------------------------------------------------------------------------
if need kwok; then
  EXTRA_REPLACES="" wrapper "$SRC/kwok" "sigs.k8s.io/kwok@$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
  gobuild "$SRC/kwok" kwok sigs.k8s.io/kwok/cmd/kwok \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
else log "kwok: already built, skipping"; fi

# ---- helm ---------------------------------------------------------------------------------
if need helm; then
  EXTRA_REPLACES="" wrapper "$SRC/helm" "helm.sh/helm/v3@$HELM_VERSION" helm.sh/helm/v3/cmd/helm
  gobuild "$SRC/helm" helm helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
else log "helm: already built, skipping"; fi

# ---- coredns ------------------------------------------------------------------------------
# Only the plugins the test cluster's DNS uses (kubernetes, no forward: it never asks upstream),
# compiled in from a main package of our own; the full plugin set takes minutes longer to build.
if need coredns; then
  dir="$SRC/coredns"
  EXTRA_REPLACES="" wrapper "$dir" "github.com/coredns/coredns@$COREDNS_VERSION" \
    github.com/coredns/coredns/coremain
  mkdir -p "$dir/cmd/coredns"
  cat > "$dir/cmd/coredns/main.go" <<'GO'
// Command coredns: CoreDNS with the plugins of the test cluster's DNS only.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"log", "errors", "health", "ready", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
  (cd "$dir" && go mod tidy)
  gobuild "$dir" coredns ./cmd/coredns ""
else log "coredns: already built, skipping"; fi

# ---- prometheus -------------------------------------------------------------------------
# For the real-node tests: Debian's prometheus package is built without Kubernetes service
# discovery. Prometheus' own build tags keep only that discoverer (remove_all_sd +
# enable_kubernetes_sd); the web UI's assets are not compiled in (the tests use the HTTP API).
if need prometheus; then
  EXTRA_REPLACES="" wrapper "$SRC/prometheus" "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" \
    github.com/prometheus/prometheus/cmd/prometheus
  PTAGS="remove_all_sd,enable_kubernetes_sd"
  if [[ ! -x "$BIN/prometheus" ]]; then
    t=$(date +%s)
    log "prometheus: go build -tags $PTAGS ..."
    (cd "$SRC/prometheus" && go build -p "$P" -tags "$PTAGS" -trimpath -ldflags "-s -w \
      -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v0.} \
      -X github.com/prometheus/common/version.Branch=module" \
      -o "$BIN/prometheus.tmp.$$" github.com/prometheus/prometheus/cmd/prometheus)
    mv "$BIN/prometheus.tmp.$$" "$BIN/prometheus"
    BUILT=1
    log "prometheus: built in $(( $(date +%s) - t ))s ($(du -h "$BIN/prometheus" | cut -f1))"
  fi
else log "prometheus: already built, skipping"; fi

echo "$STAMP" > "$BIN/VERSION"
log "done in $(( $(date +%s) - T0 ))s: $BIN"
if [[ "$BUILT" == 1 ]]; then
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd kwok helm coredns prometheus; do
    printf '  %-24s %s\n' "$b" "$(du -h "$BIN/$b" | cut -f1)"
  done
  log "cache size: $(du -sh "$CACHE" 2>/dev/null | cut -f1) in $CACHE"
fi
