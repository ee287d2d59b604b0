#!/usr/bin/env bash
# Installs the Kubernetes binaries of `rawcap stack up --k8s` and of the chart tests into
# $CACHE/bin (CACHE is $RAWCAP_STACK_CACHE or compose/.cache, beside MinIO):
#
#   rawcap-kube   one multi-call binary (compose/k8s: pinned go.mod/go.sum) holding
#                 kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#                 (Kubernetes v1.36.3) and etcd (v3.6.8, the server Kubernetes pins)
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, etcd
#                 symlinks to rawcap-kube (it dispatches on the name it is started by)
#   helm          Helm $HELM_VERSION
#
# Both come from the Go module proxy and are built here (no download site). Idempotent: a
# binary built from the same sources is kept; a lock lets two setups share one cache.
# Needs: go (1.26+; /usr/local/go/bin is searched too).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${RAWCAP_STACK_CACHE:-$HERE/.cache}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
# The Kubernetes minor of helm's client-go (v0.36.x for v3.21.4): what `helm template` and
# `helm lint` assume without a cluster (helm's Makefile stamps it in; unstamped it is 1.20).
HELM_K8S_MINOR="${HELM_K8S_MINOR:-36}"
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd)
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="-buildvcs=false"

say() { echo "install-k8s: $*"; }
command -v go >/dev/null || { say "error: go not found (install Go 1.26+; the machine image has it in /usr/local/go)"; exit 1; }

mkdir -p "$CACHE/bin"
exec 9>"$CACHE/.install-k8s.lock"
flock 9

# --- rawcap-kube (multi-call) ---------------------------------------------------------
KUBE="$CACHE/bin/rawcap-kube"
STAMP="$CACHE/bin/.rawcap-kube.sum"
# The version the commands report (/version, --version): what Kubernetes' own build stamps in
# with -X; without it they say v0.0.0-master, and helm refuses charts with a kubeVersion.
K8S_VERSION="$(sed -n 's:^[[:space:]]*k8s.io/kubernetes \(v[0-9.]*\)$:\1:p' "$HERE/k8s/go.mod")"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  LDFLAGS="$LDFLAGS -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
want="$( (cat "$HERE/k8s/go.mod" "$HERE/k8s/go.sum" "$HERE/k8s/main.go"; echo "$LDFLAGS") | sha256sum | cut -d' ' -f1)"
if [ -x "$KUBE" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  say "rawcap-kube present at $KUBE"
else
  say "building rawcap-kube (Kubernetes $K8S_VERSION + etcd; ~15 min cold on 2 idle cores, ~2 GB memory)"
  t0=$(date +%s)
  (cd "$HERE/k8s" && go build -trimpath -ldflags="$LDFLAGS" -o "$KUBE.tmp" .)
  mv -f "$KUBE.tmp" "$KUBE"
  echo "$want" > "$STAMP"
  say "rawcap-kube built in $(( $(date +%s) - t0 )) s ($(du -h "$KUBE" | cut -f1))"
fi
for c in "${COMMANDS[@]}"; do
  [ "$(readlink "$CACHE/bin/$c" 2>/dev/null)" = rawcap-kube ] || ln -sfn rawcap-kube "$CACHE/bin/$c"
done

# --- helm -----------------------------------------------------------------------------
HELM="$CACHE/bin/helm"
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  HELM_LDFLAGS="$HELM_LDFLAGS -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
HELM_STAMP="$CACHE/bin/.helm.ldflags"  # go install records no -ldflags in the binary
have_helm() {
  [ -x "$HELM" ] && [ "$(cat "$HELM_STAMP" 2>/dev/null)" = "$HELM_LDFLAGS" ] \
    && go version -m "$HELM" 2>/dev/null | grep -q "mod[[:space:]]*helm.sh/helm/v3[[:space:]]*$HELM_VERSION"
}
if have_helm; then
  say "helm $HELM_VERSION present at $HELM"
else
  say "building helm $HELM_VERSION from the Go module proxy (~4 min cold)"
  t0=$(date +%s)
  GOBIN="$CACHE/bin" go install -trimpath -ldflags="$HELM_LDFLAGS" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$HELM_LDFLAGS" > "$HELM_STAMP"
  have_helm || { say "error: $HELM was not built"; exit 1; }
  say "helm built in $(( $(date +%s) - t0 )) s"
fi
