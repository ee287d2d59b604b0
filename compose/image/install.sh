#!/bin/sh
# Runs INSIDE the image's root filesystem, as root (chroot from compose/image/build.sh, a RUN
# step of compose/Dockerfile): installs rawcap into the venv /opt/rawcap from local wheels
# only, makes bcc importable there and adds the non-root user. It only adds files (build.sh
# turns what it writes into a layer and refuses deletions).
#
#   install.sh WHEEL_DIR deps      the dependencies of rawcap (every wheel but rawcap's own)
#   install.sh WHEEL_DIR rawcap    rawcap itself (no dependency resolution)
#   install.sh WHEEL_DIR all       both (compose/Dockerfile)
set -eu
wheels="$1"
what="$2"
venv=/opt/rawcap
uid=10001

pip_() {
  # pip runs from its own wheel, so the venv carries no pip.
  "$venv/bin/python" "$(ls "$wheels"/pip-*.whl | head -n1)/pip" "$@" \
    --disable-pip-version-check --no-cache-dir --no-index --find-links "$wheels"
}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv --without-pip "$venv"
fi
rawcap_wheel="$(ls "$wheels"/rawcap-*.whl | head -n1)"
case "$what" in
  deps|all)
    # Everything rawcap's wheel requires, at the versions the wheel directory holds.
    pip_ install -q -r /dev/stdin <<REQ
$(ls "$wheels"/*.whl | sed -n 's:.*/\([^/-]*\)-\([^-]*\)-.*\.whl$:\1==\2:p' | grep -v -i -e '^rawcap==' -e '^pip==')
REQ
    ;;
esac
case "$what" in
  rawcap|all)
    pip_ install -q --no-deps "$rawcap_wheel"
    PYTHONDONTWRITEBYTECODE=1 "$venv/bin/rawcap" --help >/dev/null
    ;;
esac
[ "$what" != rawcap ] || exit 0

# bcc is pure Python over libbcc (python3-bpfcc): link that package alone into the venv.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"

# The non-root user of the consumers; the capture agent runs as uid 0 with capabilities.
if ! grep -q "^rawcap:" /etc/passwd; then
  echo "rawcap:x:$uid:$uid:rawcap:/var/lib/rawcap:/usr/sbin/nologin" >> /etc/passwd
  echo "rawcap:x:$uid:" >> /etc/group
  echo "rawcap:!:19000::::::" >> /etc/shadow
fi
mkdir -p /var/lib/rawcap
chown "$uid:$uid" /var/lib/rawcap
