#!/usr/bin/env bash
# Installs the container runtime of a test worker node (tests/k8s/node.py) into $CACHE/bin:
# containerd, ctr and containerd-shim-runc-v2 v$CONTAINERD_VERSION, built from the Go module
# proxy (Debian 12's containerd 1.6 speaks only CRI v1alpha2, which kubelet v1.36 dropped).
# runc and the CNI plugins are Debian's (apt: runc, containernetworking-plugins).
# `make setup` runs it beside compose/install-k8s.sh, for tests/k8s/test_pods.py.
# Idempotent; ~2-10 min cold on 2 cores (with the Go module cache Kubernetes leaves). Needs go (1.24+).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${RAWCAP_STACK_CACHE:-$HERE/.cache}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
export PATH="$PATH:/usr/local/go/bin" GOFLAGS="-buildvcs=false"
say() { echo "install-node: $*"; }
mkdir -p "$CACHE/bin"
exec 9>"$CACHE/.install-node.lock"
flock 9
have() {
  local b
  for b in containerd ctr containerd-shim-runc-v2; do
    go version -m "$CACHE/bin/$b" 2>/dev/null \
      | grep -q "mod[[:space:]]*github.com/containerd/containerd/v2[[:space:]]*$CONTAINERD_VERSION" || return 1
  done
}
if have; then
  say "containerd $CONTAINERD_VERSION present in $CACHE/bin"
else
  say "building containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2)"
  m=github.com/containerd/containerd/v2
  GOBIN="$CACHE/bin" go install -trimpath -ldflags='-s -w' -tags 'no_btrfs no_devmapper no_zfs' \
    "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION" \
    "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  have || { say "error: containerd was not built"; exit 1; }
fi
