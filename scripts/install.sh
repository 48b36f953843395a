#!/usr/bin/env bash
# `make install`: berthd into a venv under $PREFIX, the `berth` group, and its init files.
#
#   PREFIX   where the venv goes (default /opt/berthd: the path the units name)
#   DESTDIR  stage everything under this directory instead of the live system (for packaging): no root
#            needed, no group created, nothing enabled
#   PYTHON   the interpreter the venv is made from (default python3)
#
# Safe to run again: an existing venv is reused and the project reinstalled, unchanged files are left
# alone, the group is created only when missing, a running berthd is restarted onto the new code.
set -euo pipefail

PREFIX=${PREFIX:-/opt/berthd}
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PYTHON=${PYTHON:-python3}
GROUP=berth
SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$PREFIX/venv
UNIT_DIR=/etc/systemd/system

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  die "must run as root to install into $PREFIX and /etc (try: sudo make install),
       or set DESTDIR=/some/dir to stage the files without root"
fi
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than 3.11"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON cannot make venvs (apt-get install python3-venv)"

systemd_running=false
[ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && systemd_running=true

# 1. The venv, with berthd installed from this checkout (not editable: the checkout may go away).
if [ -x "$DESTDIR$VENV/bin/python" ]; then
  say "reusing the venv $DESTDIR$VENV"
else
  "$PYTHON" -m venv "$DESTDIR$VENV"
  say "created the venv $DESTDIR$VENV"
fi
# Build one wheel from a copy, so that pip's build/ and egg-info (root-owned) stay out of the checkout.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
mkdir "$build/src" "$build/dist"
tar -C "$SOURCE" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' --exclude='./*.egg-info' \
  --exclude=./build --exclude=./run --exclude=./var -cf - . | tar -C "$build/src" -xf -
# Through bin/python, not bin/pip: in a staged venv the scripts already name the final path.
python=$DESTDIR$VENV/bin/python
pip=("$python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" wheel --no-deps --wheel-dir "$build/dist" "$build/src"
wheel=("$build"/dist/berthd-*.whl)
"${pip[@]}" install "${wheel[0]}"
# The same version number with new code must still replace the installed files.
"${pip[@]}" install --force-reinstall --no-deps "${wheel[0]}"
version=$("$python" -I -m berthd -v)
say "installed berthd ${version#Version } into $DESTDIR$VENV"
if [ -n "$DESTDIR" ]; then
  # A venv names its own path in its scripts; make them name the final one.
  { grep -rlIF "$DESTDIR$VENV" "$DESTDIR$VENV/bin" "$DESTDIR$VENV/pyvenv.cfg" || true; } \
    | while IFS= read -r file; do sed -i "s#$DESTDIR$VENV#$VENV#g" "$file"; done
  say "pointed the venv's scripts at $VENV"
fi

# 2. The client on everyone's PATH.
mkdir -p "$DESTDIR/usr/local/bin"
if [ "$(readlink "$DESTDIR/usr/local/bin/berth" 2>/dev/null)" != "$VENV/bin/berth" ]; then
  ln -sfn "$VENV/bin/berth" "$DESTDIR/usr/local/bin/berth"
  say "linked /usr/local/bin/berth -> $VENV/bin/berth"
fi

# 3. The group whose members may use the socket.
if [ -z "$DESTDIR" ]; then
  if getent group "$GROUP" >/dev/null; then
    say "group $GROUP exists"
  else
    groupadd --system "$GROUP"
    say "created the system group $GROUP"
  fi
fi

# 4. Init files, with the venv's path put in. systemd units always (harmless where systemd does not run);
#    the sysvinit script where systemd is not the init.
changed_units=false
install_file() {  # SOURCE TARGET MODE: copy with /opt/berthd replaced by $PREFIX; sets $changed
  local rendered
  rendered=$(mktemp)
  sed "s#/opt/berthd#$PREFIX#g" "$1" >"$rendered"
  changed=false
  if cmp -s "$rendered" "$DESTDIR$2"; then
    say "$2 is up to date"
  else
    install -D -m "$3" "$rendered" "$DESTDIR$2"
    changed=true
    say "installed $2"
  fi
  rm -f "$rendered"
}
for unit in berthd.service berthd.socket; do
  install_file "$SOURCE/init/$unit" "$UNIT_DIR/$unit" 0644
  $changed && changed_units=true
done
if ! $systemd_running; then
  install_file "$SOURCE/init/berthd.init" /etc/init.d/berthd 0755
fi

# 5. Start it (systemd only; a staged install or a sysvinit host is left to the admin).
if $systemd_running; then
  if $changed_units; then
    systemctl daemon-reload
    say "ran systemctl daemon-reload"
  fi
  systemctl enable --now berthd.socket
  say "enabled and started berthd.socket (berthd starts on the first connection)"
  if systemctl is-active --quiet berthd.service; then
    systemctl restart berthd.service
    say "restarted the running berthd.service onto the new code"
  fi
fi

echo
if [ -n "$DESTDIR" ]; then
  say "staged under $DESTDIR; on the target, run: groupadd --system $GROUP && systemctl daemon-reload && systemctl enable --now berthd.socket"
elif $systemd_running; then
  say "status: systemctl status berthd.socket berthd.service; logs: journalctl -u berthd"
else
  say "systemd is not running here: start with /etc/init.d/berthd start (at boot: update-rc.d berthd defaults)"
fi
cat <<EOF
install: to let a user deploy, add them to the $GROUP group (they must log in again afterwards):
             usermod -aG $GROUP USERNAME
         then, as that user:
             export BERTHD_SOCK_PATH=/run/berthd/berthd.sock
             berth ping
EOF
