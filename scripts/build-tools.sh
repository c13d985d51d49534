#!/usr/bin/env bash
# Builds the real components podnet's tests and lab run against — etcd; kube-apiserver, kubectl,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (k8s.io/kubernetes);
# containerd 2.x; helm and cnitool; CoreDNS; Kubernetes' e2e suite (e2e.test, ginkgo, agnhost) — from the Go module proxy, once, into a cache outside the
# repository keyed by version. A second run finds the stamped binaries and returns at once.
#
#   scripts/build-tools.sh            # build what is missing, print the bin dir
#   scripts/build-tools.sh npapi-conformance   # also the network-policy-api suite
#
# Environment: PODNET_TOOLS_CACHE (default /var/cache/podnet-tools), GOPROXY (default the
# public proxy, never "direct"). A build interrupted half-way leaves no stamped directory, so
# the next run starts that tool again instead of trusting a partial binary.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CNI_VERSION="${CNI_VERSION:-v1.3.0}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.2.9}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
NPAPI_VERSION="${NPAPI_VERSION:-v0.3.0}"
CACHE="${PODNET_TOOLS_CACHE:-/var/cache/podnet-tools}"

die() { echo "build-tools: $*" >&2; exit 1; }
step() { echo "build-tools: $*" >&2; }

command -v go >/dev/null || die "Go is not installed (need go >= 1.26 on PATH); install it and retry"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
# A proxy list ending in ",direct" would let a build reach arbitrary hosts; refuse it.
case "$GOPROXY" in *direct*) export GOPROXY="${GOPROXY%%,direct}"; GOPROXY="${GOPROXY%%|direct}";; esac
export GOPROXY
export GONOSUMDB= GOFLAGS="-mod=mod -trimpath"

proxy_check() {
  curl -fsS -m 20 -o /dev/null "${GOPROXY%%,*}/k8s.io/kubernetes/@v/${K8S_VERSION}.info" \
    || die "Go module proxy ${GOPROXY%%,*} is unreachable or lacks k8s.io/kubernetes ${K8S_VERSION}"
}

# stamped DIR: a tool directory counts only once its .complete stamp exists.
stamped() { [ -f "$1/.complete" ]; }

# finish TMP DIR: atomically publish a finished build.
finish() {
  touch "$1/.complete"
  rm -rf "$2"
  mv "$1" "$2"
}

# wrapper_module WORK MODULE PKG...: $WORK/mod, a tidied module that requires k8s.io/kubernetes
# $K8S_VERSION and imports PKG... (build tag "tools"). k8s.io/kubernetes replaces its staging
# modules with local paths, which a dependent module cannot follow; the wrapper pins each
# of them to its published v0.x twin.
wrapper_module() {
  local work=$1 module=$2; shift 2
  local staging_ver="v0${K8S_VERSION#v1}"
  mkdir -p "$work/mod"
  curl -fsS -m 60 "${GOPROXY%%,*}/k8s.io/kubernetes/@v/${K8S_VERSION}.mod" -o "$work/k8s.mod" \
    || die "cannot fetch k8s.io/kubernetes ${K8S_VERSION} go.mod from the proxy"
  {
    echo "module $module"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$work/k8s.mod" \
      | awk -v v="$staging_ver" '{print "replace " $1 " => " $1 " " v}'
  } > "$work/mod/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    local p
    for p in "$@"; do echo "	_ \"$p\""; done
    echo ")"
  } > "$work/mod/tools.go"
  (cd "$work/mod" && go mod tidy -e >"$work/tidy.log" 2>&1) \
    || { tail -30 "$work/tidy.log" >&2; die "go mod tidy failed for the wrapper module $module"; }
}

# The version Kubernetes binaries report (what `make` stamps in).
version_ldflags() {
  local maj=${K8S_VERSION#v}; maj=${maj%%.*}
  local min=${K8S_VERSION#v*.}; min=${min%%.*}
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$maj -X $pkg.gitMinor=$min"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}

# build_kubernetes NAME CMD...: the k8s.io/kubernetes commands CMD (cmd/<CMD>) into
# $CACHE/NAME-$K8S_VERSION. k8s.io/kubernetes replaces its staging modules with local paths,
# which `go install` refuses; a wrapper module pins each of them to its published v0.x twin.
# Builds share Go's build cache, so the second set compiles only what the first did not.
build_kubernetes() {
  local name=$1; shift
  local dest="$CACHE/$name-$K8S_VERSION"
  stamped "$dest" && return 0
  proxy_check
  step "building $* $K8S_VERSION (cold: 10-25 min on 2 cores for the first set)"
  local work; work=$(mktemp -d "$CACHE/.$name-build.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  local pkgs=() c
  for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  wrapper_module "$work" podnet.dev/tools/kubernetes "${pkgs[@]}"
  mkdir -p "$work/out"
  local ld; ld=$(version_ldflags)
  # One `go build` for the whole set: it compiles each package once and links the
  # commands side by side (a link is mostly one core's work).
  (cd "$work/mod" && go build -tags tools -ldflags "$ld" -o "$work/out/" "${pkgs[@]}") \
    || die "building kubernetes $K8S_VERSION ($*) failed (see output above)"
  for c in "$@"; do
    "$work/out/$c" --version >/dev/null 2>&1 || "$work/out/$c" version --client >/dev/null \
      || die "built $c does not run"
  done
  mkdir -p "$work/pub"
  for c in "$@"; do mv "$work/out/$c" "$work/pub/"; done
  finish "$work/pub" "$dest"
}

# The upstream test suite, from the same k8s.io/kubernetes version as the control plane:
# e2e.test (`go test -c` of test/e2e), the ginkgo CLI at the version k8s.io/kubernetes pins,
# and agnhost (test/images/agnhost), the binary of the e2e framework's main test image
# (scripts/build-lab-images.sh packs it). Same wrapper module as build_kubernetes.
build_e2e() {
  local dest="$CACHE/e2e-$K8S_VERSION"
  stamped "$dest" && return 0
  proxy_check
  step "building e2e.test, ginkgo and agnhost $K8S_VERSION (cold: ~5 min after the kubernetes set)"
  local work; work=$(mktemp -d "$CACHE/.e2e-build.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  wrapper_module "$work" podnet.dev/tools/e2e \
    github.com/onsi/ginkgo/v2/ginkgo k8s.io/kubernetes/test/e2e k8s.io/kubernetes/test/images/agnhost
  mkdir -p "$work/pub"
  (
    cd "$work/mod"
    go test -c -ldflags "$(version_ldflags)" -o "$work/pub/e2e.test" k8s.io/kubernetes/test/e2e
    # ginkgo has none of the version variables; -X of a symbol a binary lacks is ignored.
    go build -ldflags "$(version_ldflags)" -o "$work/pub/" github.com/onsi/ginkgo/v2/ginkgo \
      k8s.io/kubernetes/test/images/agnhost
  ) || die "building the e2e binaries $K8S_VERSION failed (see output above)"
  "$work/pub/e2e.test" --version 2>/dev/null | grep -qx "$K8S_VERSION" || die "built e2e.test does not report $K8S_VERSION"
  "$work/pub/ginkgo" version >/dev/null || die "built ginkgo does not run"
  "$work/pub/agnhost" --help >/dev/null || die "built agnhost does not run"
  finish "$work/pub" "$dest"
}

# The data files of agnhost's image from the same module: porter's TLS certificate and key
# (the e2e Proxy tests serve HTTPS with them from /localhost.crt and /localhost.key).
fetch_agnhost_files() {
  local dest="$CACHE/agnhost-files-$K8S_VERSION"
  stamped "$dest" && return 0
  step "agnhost's data files from k8s.io/kubernetes $K8S_VERSION"
  local work; work=$(mktemp -d "$CACHE/.agnhost-files.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  local dir
  dir=$(cd "$work" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed"
  [ -f "$dir/test/images/agnhost/porter/localhost.crt" ] || die "k8s.io/kubernetes@$K8S_VERSION has no agnhost porter certificate"
  mkdir -p "$work/pub"
  cp "$dir/test/images/agnhost/porter/localhost.crt" "$dir/test/images/agnhost/porter/localhost.key" "$work/pub/"
  finish "$work/pub" "$dest"
}

# The network-policy-api conformance suite (sigs.k8s.io/network-policy-api/conformance at
# $NPAPI_VERSION) as one test binary: podnet's runner (lab/npapi-conformance) with the
# suite's manifests copied in, the base workload without its SCTP servers (agnhost porter
# exits on a kernel without SCTP, and every base pod runs two). Only on request
# (`scripts/build-tools.sh npapi-conformance`): scripts/policy-conformance asks for it.
build_npapi_conformance() {
  local dest="$CACHE/npapi-conformance-$NPAPI_VERSION"
  stamped "$dest" && return 0
  step "building the network-policy-api conformance suite $NPAPI_VERSION (cold: ~4 min)"
  local work; work=$(mktemp -d "$CACHE/.npapi-build.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  local repo; repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  mkdir -p "$work/mod" "$work/pub"
  cat > "$work/mod/go.mod" <<MOD
module podnet.dev/tools/npapi-conformance

go 1.26.0

require sigs.k8s.io/network-policy-api $NPAPI_VERSION
MOD
  cp "$repo/lab/npapi-conformance/conformance_test.go" "$work/mod/"
  local dir
  dir=$(cd "$work/mod" && GOFLAGS= go mod download -json "sigs.k8s.io/network-policy-api@$NPAPI_VERSION" \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') || die "go mod download sigs.k8s.io/network-policy-api@$NPAPI_VERSION failed"
  [ -f "$dir/conformance/base/manifests.yaml" ] || die "sigs.k8s.io/network-policy-api@$NPAPI_VERSION has no conformance/base/manifests.yaml"
  cp -r "$dir/conformance/base" "$work/mod/"
  chmod -R u+w "$work/mod/base"
  # Drop each container (a "        - name:" item) whose block runs agnhost porter.
  awk '
    function flush() { if (block != "" && block !~ /agnhost porter/) printf "%s", block; block = "" }
    /^        - name: / { flush(); block = $0 "\n"; next }
    block != "" && /^          / { block = block $0 "\n"; next }
    { flush(); print }
    END { flush() }
  ' "$dir/conformance/base/manifests.yaml" > "$work/mod/base/manifests.yaml"
  local before after
  before=$(grep -c '^        - name: ' "$dir/conformance/base/manifests.yaml")
  after=$(grep -c '^        - name: ' "$work/mod/base/manifests.yaml")
  if grep -q -e 'porter' -e 'SCTP' "$work/mod/base/manifests.yaml" || [ $((before - after)) -ne 10 ]; then
    die "removing the SCTP servers from the base manifests of network-policy-api $NPAPI_VERSION went wrong ($before containers before, $after after); check the awk filter against the new layout"
  fi
  local images
  images=$(grep -rhoE 'image: *[^ ]+' "$work/mod/base" | sed 's/image: *//' | sort -u)
  [ "$images" = "registry.k8s.io/e2e-test-images/agnhost:2.45" ] \
    || die "network-policy-api $NPAPI_VERSION's manifests name images the lab does not carry: $images (scripts/build-lab-images.sh tags agnhost as registry.k8s.io/e2e-test-images/agnhost:2.45)"
  (
    cd "$work/mod"
    go mod tidy >"$work/tidy.log" 2>&1 || { tail -30 "$work/tidy.log" >&2; die "go mod tidy failed for the conformance runner"; }
    go test -c -ldflags "-s -w" -o "$work/pub/npapi-conformance.test" .
  ) || die "building the network-policy-api conformance suite $NPAPI_VERSION failed (see output above)"
  "$work/pub/npapi-conformance.test" -test.list 'TestConformance' | grep -qx TestConformance \
    || die "built npapi-conformance.test does not list TestConformance"
  finish "$work/pub" "$dest"
}

# containerd 2.x for the real-node lab (kubelet 1.36 needs CRI from containerd >= 2): the
# daemon, its runc shim and ctr, without the storage drivers that need cgo.
build_containerd() {
  local dest="$CACHE/containerd-$CONTAINERD_VERSION"
  stamped "$dest" && return 0
  step "building containerd $CONTAINERD_VERSION"
  local work; work=$(mktemp -d "$CACHE/.containerd-build.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/pub"
  local c
  for c in containerd containerd-shim-runc-v2 ctr; do
    GOBIN="$work/pub" go install -tags "no_btrfs no_devmapper no_zfs" \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/$c@$CONTAINERD_VERSION" \
      || die "go install containerd/cmd/$c@$CONTAINERD_VERSION failed"
  done
  "$work/pub/containerd" --version | grep -q "${CONTAINERD_VERSION}" || die "built containerd does not report $CONTAINERD_VERSION"
  finish "$work/pub" "$dest"
}

# etcd's own main module carries replace directives (go install refuses it), so a wrapper
# module builds its server the way etcd's main.go does.
build_etcd() {
  local dest="$CACHE/etcd-$ETCD_VERSION"
  stamped "$dest" && return 0
  step "building etcd $ETCD_VERSION"
  local work; work=$(mktemp -d "$CACHE/.etcd-build.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/mod" "$work/pub"
  cat > "$work/mod/go.mod" <<MOD
module podnet.dev/tools/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat > "$work/mod/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (
    cd "$work/mod"
    go mod tidy >"$work/tidy.log" 2>&1 || { tail -30 "$work/tidy.log" >&2; die "go mod tidy failed for the etcd wrapper module"; }
    go build -ldflags "-s -w" -o "$work/pub/etcd" .
  ) || die "building etcd $ETCD_VERSION failed (see output above)"
  "$work/pub/etcd" --version | grep -q "etcd Version: ${ETCD_VERSION#v}" || die "built etcd does not report $ETCD_VERSION"
  finish "$work/pub" "$dest"
}

build_go_tool() { # name version module-path/cmd ldflags
  local name=$1 version=$2 pkg=$3 ld=$4
  local dest="$CACHE/$name-$version"
  stamped "$dest" && return 0
  step "building $name $version"
  local work; work=$(mktemp -d "$CACHE/.$name-build.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/pub"
  GOBIN="$work/pub" go install -ldflags "-s -w $ld" "$pkg@$version" \
    || die "go install $pkg@$version failed"
  finish "$work/pub" "$dest"
}

mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
# Two lanes at once. Kubernetes' two sets and its e2e suite share most packages through
# Go's build cache, so they go one after another; the other modules share little with
# them and build beside them, filling the gaps a lane leaves (downloads, link steps that
# keep one core busy). Each lane stops at its first failure; the script fails when
# either does, after both have ended.
(
  build_kubernetes kubernetes kube-apiserver kubectl
  build_kubernetes kubernetes-node kube-controller-manager kube-scheduler kubelet kube-proxy
  build_e2e
  fetch_agnhost_files
) &
kubernetes_lane=$!
(
  build_etcd
  build_go_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  build_go_tool cnitool "$CNI_VERSION" github.com/containernetworking/cni/cnitool ""
  build_containerd
  # Cluster DNS of the real-node lab (Kubernetes' DNS conformance tests need it).
  build_go_tool coredns "$COREDNS_VERSION" github.com/coredns/coredns \
    "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
) &
other_lane=$!
lanes_ok=1
wait "$kubernetes_lane" || lanes_ok=0
wait "$other_lane" || lanes_ok=0
[ "$lanes_ok" = 1 ] || die "a build failed (see its output above)"

# One directory of symlinks so callers need a single PATH entry.
bin="$CACHE/bin"
mkdir -p "$bin"
ln -sfn "$CACHE/etcd-$ETCD_VERSION/etcd" "$bin/etcd"
ln -sfn "$CACHE/kubernetes-$K8S_VERSION/kube-apiserver" "$bin/kube-apiserver"
ln -sfn "$CACHE/kubernetes-$K8S_VERSION/kubectl" "$bin/kubectl"
ln -sfn "$CACHE/helm-$HELM_VERSION/helm" "$bin/helm"
ln -sfn "$CACHE/cnitool-$CNI_VERSION/cnitool" "$bin/cnitool"
for c in kube-controller-manager kube-scheduler kubelet kube-proxy; do
  ln -sfn "$CACHE/kubernetes-node-$K8S_VERSION/$c" "$bin/$c"
done
for c in containerd containerd-shim-runc-v2 ctr; do
  ln -sfn "$CACHE/containerd-$CONTAINERD_VERSION/$c" "$bin/$c"
done
ln -sfn "$CACHE/coredns-$COREDNS_VERSION/coredns" "$bin/coredns"
for c in e2e.test ginkgo agnhost; do
  ln -sfn "$CACHE/e2e-$K8S_VERSION/$c" "$bin/$c"
done
ln -sfn "$CACHE/agnhost-files-$K8S_VERSION" "$bin/agnhost-files"
for extra in "$@"; do
  case "$extra" in
    npapi-conformance)
      build_npapi_conformance
      ln -sfn "$CACHE/npapi-conformance-$NPAPI_VERSION/npapi-conformance.test" "$bin/npapi-conformance.test" ;;
    *) die "unknown extra tool '$extra' (known: npapi-conformance)" ;;
  esac
done
echo "$bin"
