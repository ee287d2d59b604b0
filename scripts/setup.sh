#!/usr/bin/env bash
# make setup: everything rawcap needs on a fresh Debian 12 machine of this kind, as root.
# Idempotent; a step already done is skipped, so a second run takes seconds.
#
#   1. apt: bcc (python3-bpfcc, bpfcc-tools), tcpdump, tshark, kcat, iproute2, libpcap,
#      libdeflate, JDK + Maven (for the Kafka jars), the benchmarks' traffic sources
#      (trafgen from netsniff-ng, nginx-light, wrk, dnsmasq-base, dig), PostgreSQL server +
#      pgbench + psql (the PostgreSQL dissector's tests run a private cluster), and the newest
#      linux-headers-6.12.*-cloud-amd64 (+ -common) with /lib/modules/$(uname -r)/{build,source}
#      pointing at them; tracefs mounted (bcc tracepoints)
#   2. .venv at the repo root with rawcap installed editable ('.[test]'), bcc importable
#   3. compose/install-stack.sh: Kafka broker jars + MinIO server for `rawcap stack`
#   4. compose/install-k8s.sh: Kubernetes v1.36 (one multi-call binary: kube-apiserver,
#      kube-controller-manager, kube-scheduler, kubelet, kubectl, etcd) and helm, built from
#      the Go module proxy for `rawcap stack up --k8s` and the chart tests, then
#      compose/install-node.sh: containerd 2 for the test worker node (tests/k8s: pods)
#   5. compose/image/build.sh: the rawcap container image (OCI layout in the cache; mmdebstrap,
#      umoci; tests/image runs it with runc, tests/k8s in pods). Cached: seconds when nothing
#      changed, about a minute when a source file did, a few minutes on a fresh machine
#
# 2-5 run side by side once apt is done: the Go builds (MinIO, Kubernetes + helm,
# containerd) are CPU-bound, while pip, Maven and mmdebstrap mostly wait on the network.
# Each background step's output is printed when it ends (logs in $RAWCAP_SETUP_LOGS, default
# a temporary directory); setup fails if any step failed. A fresh machine's times: README.md
# ("Tests").
#
# Environment: VENV (default .venv), PYTHON (default python3), RAWCAP_STACK_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
APT_PACKAGES=(python3-bpfcc bpfcc-tools tcpdump tshark kcat iproute2 libpcap0.8-dev netsniff-ng libdeflate0
              nginx-light wrk dnsmasq-base bind9-dnsutils postgresql postgresql-contrib
              python3-venv openjdk-17-jdk-headless maven ca-certificates openssl
              mmdebstrap umoci runc skopeo python3-dev gcc libc6-dev binutils
              containernetworking-plugins)
export DEBIAN_FRONTEND=noninteractive

say() { echo "setup: $*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null && SUDO="sudo" || { say "error: run as root (apt, kernel headers)"; exit 1; }
fi

# --- 1. apt packages ------------------------------------------------------------------
missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
headers_ok() {
  local build="/lib/modules/$(uname -r)/build"
  [ -e "$build/Makefile" ] && [ -e "/lib/modules/$(uname -r)/source/Makefile" ] \
    && readlink -f "$build" | grep -q 'linux-headers-6\.12\..*-cloud-amd64'
}

need=($(missing "${APT_PACKAGES[@]}"))
if [ ${#need[@]} -eq 0 ] && headers_ok; then
  say "apt packages and kernel headers already installed"
else
  say "apt-get update"
  $SUDO apt-get update -qq
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if ! headers_ok; then
    arch_pkg="$(apt-cache search --names-only '^linux-headers-6\.12\..*-cloud-amd64$' \
                | awk '{print $1}' | sort -V | tail -n1)"
    [ -n "$arch_pkg" ] || { say "error: apt-cache offers no linux-headers-6.12.*-cloud-amd64"; exit 1; }
    common_pkg="${arch_pkg%-cloud-amd64}-common"
    say "apt-get install $arch_pkg $common_pkg"
    $SUDO apt-get install -y -qq --no-install-recommends "$arch_pkg" "$common_pkg" >/dev/null
    mod="/lib/modules/$(uname -r)"
    $SUDO mkdir -p "$mod"
    $SUDO ln -sfn "/usr/src/$arch_pkg" "$mod/build"
    $SUDO ln -sfn "/usr/src/$common_pkg" "$mod/source"
    headers_ok || { say "error: $mod/build does not point at usable headers"; exit 1; }
    say "kernel headers: $mod/build -> /usr/src/$arch_pkg"
  fi
fi

# bcc attaches tracepoints by the ids under tracefs, which not every host mounts.
if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
  $SUDO mount -t tracefs nodev /sys/kernel/tracing && say "mounted tracefs on /sys/kernel/tracing"
fi

# --- 3-5 in the background, beside the venv ------------------------------------------
LOGS="${RAWCAP_SETUP_LOGS:-$(mktemp -d /tmp/rawcap-setup.XXXXXX)}"
mkdir -p "$LOGS"
declare -A JOBS=()
background() {  # background NAME COMMAND...: run it in a process group of its own, output in $LOGS/NAME.log
  local name="$1"; shift
  setsid bash -c 't0=$SECONDS; "$@" || exit; echo "setup: $0 took $((SECONDS - t0)) s"' "$name" "$@" \
    >"$LOGS/$name.log" 2>&1 </dev/null &
  JOBS[$name]=$!
}
finish() {  # wait for each job, print its output, fail if one failed
  local name failed=()
  for name in stack k8s image; do
    if wait "${JOBS[$name]}"; then
      cat "$LOGS/$name.log"
    else
      cat "$LOGS/$name.log"; failed+=("$name")
    fi
  done
  JOBS=()
  [ ${#failed[@]} -eq 0 ] || { say "error: ${failed[*]} failed (logs in $LOGS)"; exit 1; }
}
stop_jobs() { local p; for p in "${JOBS[@]}"; do kill -- "-$p" 2>/dev/null || true; done; }
trap stop_jobs EXIT
background stack bash compose/install-stack.sh
background k8s bash -c 'bash compose/install-k8s.sh && bash compose/install-node.sh'
background image bash compose/image/build.sh
say "building in the background: stack (Kafka jars, MinIO), k8s (Kubernetes, helm, containerd), image"

# --- 2. Python venv -------------------------------------------------------------------
stamp="$VENV/.rawcap-installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { say "error: $PYTHON is older than 3.11"; exit 1; }
  say "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
# The C extensions (rawcap/pcap/_fastpcap.c, rawcap/kafka/_recvbuf.c, dissector/*.c,
# dissector/http1/*.c) are built in place by the editable install: rebuild when a source is
# newer than the stamp or a .so does not import.
exts='rawcap.pcap._fastpcap, rawcap.kafka._recvbuf, dissector.http1._chttp1, dissector._crows, dissector._cwalk, dissector._ctext'
newer=""
if [ -f "$stamp" ]; then  # (find fails without a stamp, and pipefail would end setup)
  newer=$(find rawcap dissector \( -name '*.c' -o -name '*.h' \) -newer "$stamp" | head -1)
fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -z "$newer" ] \
   && [ -x "$VENV/bin/rawcap" ] && "$VENV/bin/python" -c "import $exts" 2>/dev/null; then
  say "rawcap already installed in $VENV"
else
  say "pip install -e '.[test]' into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  touch "$stamp"
fi
# bcc is pure Python over libbcc: link just that package, not all of dist-packages.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "$(readlink "$site/bcc" 2>/dev/null)" != /usr/lib/python3/dist-packages/bcc ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
  say "linked bcc into $site"
fi
"$VENV/bin/python" -c 'import bcc' || { say "error: bcc does not import in $VENV"; exit 1; }

# --- 3-5: wait for the background steps -----------------------------------------------
finish
say "done in $SECONDS s"
