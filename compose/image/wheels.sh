#!/bin/sh
# Builds the wheels of the rawcap image: rawcap itself (with its compiled extension) and,
# unless --no-deps, every runtime dependency; plus pip's own wheel (install.sh runs pip from
# it, so no pip is left in the image). Shared objects lose their debug symbols (strip
# --strip-unneeded, as Debian packages do; zstandard's alone drop from 23 MB to ~2 MB), and
# the wheel is repacked with a new RECORD. Used by compose/image/build.sh (on the host, whose
# Debian python3 is the image's) and by the first stage of compose/Dockerfile.
#
#   wheels.sh SOURCE_DIR WHEEL_DIR [--no-deps]   SOURCE_DIR holds pyproject.toml + packages
#
# Needs Debian's python3 with python3-venv and python3-dev, gcc and binutils.
set -eu
src="$1"
out="$2"
deps="${3:-}"
build_venv="${WHEELS_BUILD_VENV:-/tmp/rawcap-wheels-venv}"
pip="$build_venv/bin/pip"
if [ ! -x "$build_venv/bin/wheel" ]; then
  /usr/bin/python3 -m venv "$build_venv"
  "$pip" install -q --disable-pip-version-check wheel
fi
mkdir -p "$out"
"$pip" wheel -q --disable-pip-version-check $deps --wheel-dir "$out" "$src"
"$pip" download -q --disable-pip-version-check --no-deps --dest "$out" pip

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for whl in "$out"/*.whl; do
  "$build_venv/bin/python" -c 'import sys, zipfile
sys.exit(not any(".so" in n for n in zipfile.ZipFile(sys.argv[1]).namelist()))' "$whl" || continue
  rm -rf "$tmp"/*
  "$build_venv/bin/wheel" unpack --dest "$tmp" "$whl" >/dev/null
  find "$tmp" -name '*.so*' -type f -exec strip --strip-unneeded {} +
  rm "$whl"
  "$build_venv/bin/wheel" pack --dest-dir "$out" "$tmp"/* >/dev/null
done
