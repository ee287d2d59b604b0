#!/usr/bin/env bash
# Builds the rawcap container image without Docker or a registry, as an OCI image layout:
#
#   $CACHE/image/oci/                      OCI layout; tags:
#       base-<key>    Debian 12 minbase (= debian:bookworm-slim) + compose/image/packages.txt
#       deps-<key>    + the venv /opt/rawcap with rawcap's dependencies
#       src-<key>     + rawcap itself, and the image config (entrypoint, user, env)
#       <version>     (pyproject's) the last src-<key> built; $RAWCAP_IMAGE_TAG overrides
#   $CACHE/image/current                   the src-<key> tag of this checkout's last build
#   $CACHE/image/rawcap-<tag>.oci.tar      with --archive: an oci-archive of the image
#                                          (containerd: ctr images import --base-name ...)
#
# One layer a stage, each rebuilt only when its inputs change: the Debian layer when
# packages.txt (or this script's BASE_REV) changes, the dependencies when pyproject.toml,
# wheels.sh or install.sh change, rawcap's layer when a source file of the package changes.
# A second run with nothing changed takes about a second. Builds of several checkouts into
# one cache are serialized by a lock.
#
# CACHE is $RAWCAP_STACK_CACHE or compose/.cache. Needs root (mmdebstrap --mode=root,
# chroot, umoci unpack keeps file owners), mmdebstrap, umoci, skopeo (--archive), Debian's
# python3 with python3-venv and python3-dev, gcc; Debian's package archive reachable.
#
#   build.sh [--archive] [--print-tag]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${RAWCAP_STACK_CACHE:-$REPO/compose/.cache}"
OUT="$CACHE/image"
LAYOUT="$OUT/oci"
BASE_REV=1            # bump to rebuild the Debian layer with the same package list
SUITE=bookworm
MIRROR="${RAWCAP_IMAGE_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${RAWCAP_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# The image config; compose/Dockerfile states the same (tests/image/test_dockerfile.py).
UID_GID=10001:10001
WORKDIR=/var/lib/rawcap
IMAGE_PATH=/opt/rawcap/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Python sources of the image: what the wheel packs (pyproject's packages.find) + metadata.
SRC_DIRS=(rawcap schemas capture enrich archiver dissector forensics history)
SRC_FILES=(pyproject.toml README.md)

archive=0
print_tag=0
for arg in "$@"; do
  case "$arg" in
    --archive) archive=1 ;;
    --print-tag) print_tag=1 ;;
    *) echo "build.sh: error: unknown argument $arg (allowed: --archive, --print-tag)" >&2; exit 2 ;;
  esac
done

say() { echo "image: [${SECONDS}s] $*" >&2; }
need() { command -v "$1" >/dev/null || { say "error: $1 not found ($2)"; exit 1; }; }
[ "$(id -u)" = 0 ] || { say "error: run as root (mmdebstrap --mode=root, chroot, umoci unpack)"; exit 1; }
need mmdebstrap "apt-get install mmdebstrap"
need umoci "apt-get install umoci"

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

sha() { sha256sum | cut -c1-16; }
packages() { grep -v -e '^#' -e '^[[:space:]]*$' "$HERE/packages.txt"; }
# Files of the rawcap wheel, in a stable order, without build products.
src_files() {
  (cd "$REPO" && find "${SRC_DIRS[@]}" -type f \( -name '*.py' -o -name '*.c' -o -name '*.h' \
     -o -name '*.md' -o -name '*.typed' \) -not -path '*/__pycache__/*' | LC_ALL=C sort \
   && printf '%s\n' "${SRC_FILES[@]}")
}

base_key="$( (echo "$BASE_REV $SUITE $MIRROR"; packages) | sha)"
deps_key="$( (echo "$base_key"; cat "$REPO/pyproject.toml" "$HERE/wheels.sh" "$HERE/install.sh") | sha)"
src_key="$( (echo "$deps_key"; cd "$REPO" && src_files | while read -r f; do echo "$f"; cat "$f"; done) | sha)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)"
final_tag="${RAWCAP_IMAGE_TAG:-$version}"

built=0
commit_tag() {  # the work-in-progress tag becomes $1 (a stage that died leaves no tag)
  umoci tag --image "$LAYOUT:wip" "$1"
  umoci rm --image "$LAYOUT:wip"
  built=1
}
has_tag() {  # (no grep -q on a pipe: with pipefail, umoci's SIGPIPE would fail the test)
  [ -f "$LAYOUT/index.json" ] && grep -qx -- "$1" <<<"$(umoci ls --layout "$LAYOUT" 2>/dev/null)"
}
[ -f "$LAYOUT/index.json" ] || umoci init --layout "$LAYOUT"

WORK="$OUT/work"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK"

# run_install LOWERDIRS UPPER WHAT: install.sh WHAT in an overlay of LOWERDIRS (overlayfs
# lowerdir syntax, topmost first) whose changes land in UPPER, which then holds exactly the
# new layer. The mounts live in a private mount namespace and end with the command.
run_install() {
  local lower="$1" upper="$2" what="$3" ovl="$WORK/ovl"
  rm -rf "$upper" "$ovl"
  mkdir -p "$upper" "$ovl/work" "$ovl/merged"
  cp "$HERE/install.sh" "$wheels/"
  unshare --mount --propagation private -- sh -c '
    set -e
    lower="$1" upper="$2" ovl="$3" wheels="$4" what="$5"
    r="$ovl/merged"
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$ovl/work" "$r"
    mount --rbind /dev "$r/dev"
    mount -t proc proc "$r/proc"
    mount --bind -o ro "$wheels" "$r/mnt"
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      PYTHONDONTWRITEBYTECODE=1 chroot "$r" /bin/sh /mnt/install.sh /mnt "$what"' \
    sh "$lower" "$upper" "$ovl" "$wheels" "$what"
  rm -rf "$ovl"
  # A deletion in the overlay would be a whiteout (a 0/0 character device): layers here
  # only add, so one means install.sh removed a file of a lower layer.
  if [ -n "$(find "$upper" -type c -print -quit)" ]; then
    say "error: install.sh $what removed files of a lower layer: $(find "$upper" -type c | head -n3)"
    exit 1
  fi
}

# add_layer FROM_TAG UPPER WHAT: FROM_TAG + the tar of UPPER, as the tag wip.
add_layer() {
  local upper="$2"
  umoci rm --image "$LAYOUT:wip" 2>/dev/null || true
  umoci tag --image "$LAYOUT:$1" wip
  (cd "$upper" && ls -A | LC_ALL=C sort | tar --numeric-owner --sort=name -cf "$WORK/layer.tar" -T -)
  umoci raw add-layer --image "$LAYOUT:wip" --history.created_by "compose/image/install.sh $3" \
    "$WORK/layer.tar"
  rm -f "$WORK/layer.tar"
}

# --- 1. Debian layer ------------------------------------------------------------------
# The root filesystem stays in the cache as the lower layer of the next stages' overlays.
base_rootfs="$OUT/rootfs/base-$base_key"
if has_tag "base-$base_key" && [ -f "$base_rootfs/.complete" ]; then
  say "Debian layer base-$base_key present"
else
  say "building the Debian layer: mmdebstrap $SUITE minbase + $(packages | tr '\n' ' ')"
  rm -rf "$OUT/rootfs"           # older bases go: one is kept
  mkdir -p "$OUT/debs" "$OUT/rootfs"  # debs: the downloaded packages, kept for the next build
  rootfs="$base_rootfs.tmp"
  # The dpkg path-excludes are those of debian:bookworm-slim (docs, man pages, locales).
  mmdebstrap --mode=root --variant=minbase --format=directory \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$(packages | paste -sd, -)" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='path-exclude=/usr/share/linda/*' \
    --aptopt='Acquire::Languages "none"' \
    --skip=download/empty --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in $OUT/debs /var/cache/apt/archives" \
    --customize-hook="sync-out /var/cache/apt/archives $OUT/debs" \
    "$SUITE" "$rootfs" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" >"$WORK/mmdebstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/mmdebstrap.log" >&2; say "error: mmdebstrap failed"; exit 1; }
  # /dev is the runtime's; the rest are leftovers of the package installs.
  rm -rf "$rootfs"/dev/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
         "$rootfs"/var/log/*.log "$rootfs"/var/log/apt "$rootfs"/var/cache/debconf/*-old \
         "$rootfs"/var/lib/dpkg/*-old
  umoci rm --image "$LAYOUT:wip" 2>/dev/null || true
  umoci new --image "$LAYOUT:wip"
  umoci insert --image "$LAYOUT:wip" --history.created_by "mmdebstrap $SUITE minbase" "$rootfs" /
  mv "$rootfs" "$base_rootfs"
  touch "$base_rootfs/.complete"
  commit_tag "base-$base_key"
  say "Debian layer base-$base_key built"
fi

# --- 2. dependencies layer ------------------------------------------------------------
# The sources that go into the wheel, staged (the checkout stays free of build products).
stage="$WORK/src"
stage_sources() {
  [ -d "$stage" ] && return 0
  mkdir -p "$stage"
  (cd "$REPO" && src_files | tar -cf - -T -) | tar -C "$stage" -xf -
}
wheels="$WORK/wheels"
build_venv="$OUT/build-venv"
export WHEELS_BUILD_VENV="$build_venv"
deps_upper="$OUT/layers/deps-$deps_key"

if has_tag "deps-$deps_key" && [ -f "$deps_upper.complete" ]; then
  say "dependencies layer deps-$deps_key present"
else
  say "building the dependencies layer: wheels of rawcap's requirements"
  rm -rf "$OUT/layers" "$wheels"  # an older deps layer goes: one is kept
  mkdir -p "$OUT/layers"
  stage_sources
  sh "$HERE/wheels.sh" "$stage" "$wheels"
  run_install "$base_rootfs" "$deps_upper" deps
  add_layer "base-$base_key" "$deps_upper" deps
  commit_tag "deps-$deps_key"
  touch "$deps_upper.complete"
  say "dependencies layer deps-$deps_key built"
fi

# --- 3. rawcap layer + image config ---------------------------------------------------
if has_tag "src-$src_key"; then
  say "rawcap layer src-$src_key present"
else
  say "building the rawcap layer"
  rm -rf "$wheels"
  mkdir -p "$wheels"
  stage_sources
  sh "$HERE/wheels.sh" "$stage" "$wheels" --no-deps
  run_install "$deps_upper:$base_rootfs" "$WORK/upper" rawcap
  add_layer "deps-$deps_key" "$WORK/upper" rawcap
  umoci config --image "$LAYOUT:wip" \
    --config.user "$UID_GID" --config.workingdir "$WORKDIR" \
    --config.env "PATH=$IMAGE_PATH" --config.env PYTHONUNBUFFERED=1 \
    --config.env PYTHONDONTWRITEBYTECODE=1 \
    --config.entrypoint rawcap --config.cmd --help \
    --config.label "org.opencontainers.image.title=rawcap" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=src-$src_key" \
    --config.label "org.opencontainers.image.base.name=debian:$SUITE-slim" \
    --history.created_by "umoci config (compose/image/build.sh)"
  commit_tag "src-$src_key"
  say "rawcap layer src-$src_key built"
fi
# Move the version tag onto this build (umoci tag replaces an existing tag).
umoci tag --image "$LAYOUT:src-$src_key" "$final_tag"
echo "src-$src_key" >"$OUT/current.tmp" && mv "$OUT/current.tmp" "$OUT/current"
# Keep the 4 newest src- tags (other checkouts share the cache) and the base-/deps- tags
# they were built on; umoci gc (~15 s: it reads every blob) drops the blobs nothing
# references any more, after a build only.
mkdir -p "$OUT/tags"
echo "base-$base_key deps-$deps_key" >"$OUT/tags/src-$src_key"
if [ "$built" = 1 ]; then
  ls -t "$OUT/tags" | tail -n +5 | while read -r old; do rm -f "$OUT/tags/$old"; done
  keep="$(cd "$OUT/tags" && for t in *; do echo "$t"; cat "$t"; done | tr ' ' '\n' | sort -u)"
  umoci ls --layout "$LAYOUT" | grep -E '^(base|deps|src)-' | while read -r tag; do
    grep -qx "$tag" <<<"$keep" || umoci rm --image "$LAYOUT:$tag"
  done
  umoci gc --layout "$LAYOUT"
fi

if [ "$archive" = 1 ]; then
  need skopeo "apt-get install skopeo"
  tar_out="$OUT/rawcap-src-$src_key.oci.tar"
  if [ ! -f "$tar_out" ]; then
    rm -f "$OUT"/rawcap-src-*.oci.tar
    skopeo copy --quiet "oci:$LAYOUT:src-$src_key" "oci-archive:$tar_out.tmp:$final_tag"
    mv "$tar_out.tmp" "$tar_out"
  fi
  say "oci-archive $tar_out"
fi
say "image $LAYOUT:src-$src_key (tag $final_tag)"
[ "$print_tag" = 0 ] || echo "src-$src_key"
