#!/usr/bin/env bash
# Installs locald system-wide from a release build:
#   /usr/local/bin/locald, /usr/local/bin/locald-ctl
#   /usr/libexec/locald/locald-shim       (root:root, mode 4755: setuid)
#   /etc/locald/shim.conf                 (names runc; root-owned)
#   /usr/lib/systemd/user/locald.service  (ExecStart pointed at the binary)
#   /usr/lib/systemd/user/locald-dashboard.service  (likewise; not enabled)
#   /usr/share/dbus-1/services/dev.locald.Locald1.service
#   /usr/local/share/man/man1/locald-ctl.1
# Then, as each user: systemctl --user enable --now locald
#
# Usage: packaging/install.sh [--destdir DIR] [--prefix /usr/local] [--no-build]
# With --destdir nothing outside DIR is touched (for packagers and tests);
# ownership and the setuid bit are still set, so run it as root.
set -euo pipefail
cd "$(dirname "$0")/.."

destdir=""
prefix=/usr/local
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) destdir="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (the shim must be root-owned and setuid)" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-target}/release"
if [ "$build" = 1 ]; then
  cargo build --release --locked -p locald -p locald-ctl -p locald-shim
fi

runc="$(command -v runc || echo /usr/sbin/runc)"
bindir="$destdir$prefix/bin"
install -d -m 0755 "$bindir" "$destdir/usr/libexec/locald" "$destdir/etc/locald" \
  "$destdir/usr/lib/systemd/user" "$destdir/usr/share/dbus-1/services" "$destdir$prefix/share/man/man1"
install -m 0755 "$target/locald" "$target/locald-ctl" "$bindir/"
# The shim is the project's privilege boundary (shim/SECURITY.md): root-owned,
# setuid, in a root-owned directory, never on a nosuid mount.
install -o root -g root -m 4755 "$target/locald-shim" "$destdir/usr/libexec/locald/locald-shim"
if [ ! -e "$destdir/etc/locald/shim.conf" ]; then
  printf "# locald-shim: the runc it runs (root-owned, not writable by others)\nrunc = %s\n" "$runc" \
    > "$destdir/etc/locald/shim.conf"
  chown root:root "$destdir/etc/locald/shim.conf"
  chmod 0644 "$destdir/etc/locald/shim.conf"
fi
sed "s|^ExecStart=.*|ExecStart=$prefix/bin/locald daemon|" systemd/locald.service \
  > "$destdir/usr/lib/systemd/user/locald.service"
sed "s|%h/.cargo/bin/locald-ctl|$prefix/bin/locald-ctl|" systemd/locald-dashboard.service \
  > "$destdir/usr/lib/systemd/user/locald-dashboard.service"
install -m 0644 systemd/dev.locald.Locald1.service "$destdir/usr/share/dbus-1/services/"
install -m 0644 docs/man/locald-ctl.1 "$destdir$prefix/share/man/man1/"

if [ -z "$destdir" ]; then
  mount_opts="$(findmnt -no OPTIONS -T /usr/libexec/locald 2>/dev/null || true)"
  case ",$mount_opts," in *,nosuid,*) echo "install.sh: warning: /usr/libexec/locald is on a nosuid mount; the shim cannot work there" >&2 ;; esac
  echo "installed; now, as your user: systemctl --user daemon-reload && systemctl --user enable --now locald"
fi
