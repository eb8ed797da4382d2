#!/usr/bin/env bash
# Installs what locald's tests and examples need on a Debian 12 machine.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

packages=(
  python3          # examples/hello and test services
  procps           # ps, for test diagnostics
  util-linux       # setpriv, setsid
  runc             # container runtime behind locald-shim
  busybox-static   # rootfs for container test bundles and the test images
  bash-static      # bash for the CNB fixture builder's images (tests/fixtures/cnb)
  umoci            # builds the test images (OCI layouts) without a daemon
  skopeo           # pushes them to the test registry, writes oci-archives
  docker-registry  # a private registry on 127.0.0.1 for the pull tests
  uidmap           # newuidmap/newgidmap, subuid ranges
  umoci            # a second OCI layer unpacker to compare locald's with
  passwd           # useradd, for the shim tests' unprivileged users
  dbus             # dbus-daemon for private session buses
  dbus-bin         # dbus-send, dbus-monitor
  libglib2.0-bin   # gdbus, a D-Bus client nobody here wrote
  systemd          # systemd-journald, journalctl, busctl, systemd-cat
  python3-jeepney  # the editor client in docs/editors/, run by the D-Bus tests
  systemd-container # systemd-nspawn: a real user manager for the unit's end-to-end test
  debootstrap      # the container's root file system (cached in /var/cache/locald-tests)
  git              # incremental builds: real repositories for .gitignore and info/exclude
  libsystemd-dev   # sd_journal_sendv() for the journal benchmark's reference sender
  gcc              # builds that sender (tests/bench/journal/run.sh)
  libc6-dev
  chromium         # the dashboard's browser tests (tests/tests/dashboard.rs), headless
  chromium-driver  # WebDriver for it
  python3-selenium # the WebDriver client that drives it (tests/browser/dashboard.py)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup-debian: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup-debian: cargo is missing; install Rust with rustup" >&2; exit 1; }
