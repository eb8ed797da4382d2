#!/usr/bin/env bash
# Benchmark: `locald-ctl status --json` for one project of 100 services.
# Prints p50/p99 over 100 calls of the command, of the raw D-Bus round trip
# for the same data (GetManagedObjects), and of the bus floor (ListNames),
# each both as a process (busctl) and in-process (jeepney), plus the
# daemon's RSS. Targets: status p99 < 10 ms, RSS < 30 MiB.
#
#   tests/bench/status/run.sh [SERVICES] [CALLS]
#
# Uses a release build (built here if missing) and a private dbus-daemon;
# nothing touches the user's session. Not a timed test: run it by hand.
set -euo pipefail
cd "$(dirname "$0")/../../.."
services=${1:-100}
calls=${2:-100}

target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -p locald -p locald-ctl >&2
bin="$(cd "$target/release" && pwd)"

work=$(mktemp -d /tmp/locald-bench-status.XXXXXX)
bus_pid=""
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  [ -n "$bus_pid" ] && kill "$bus_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$work/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
CONF
read -r address bus_pid < <(dbus-daemon --config-file="$work/bus.conf" --fork \
  --print-address=1 --print-pid=1 2>/dev/null | paste -sd' ')

mkdir -p "$work/project"
{
  echo '[project]'
  echo 'name = "bench"'
  for i in $(seq 1 "$services"); do
    printf '\n[services.svc%03d]\ncommand = "exec sleep 100000"\nstop_timeout = "1s"\n' "$i"
  done
} > "$work/project/locald.toml"

"$bin/locald" daemon --bus-address "$address" --state-dir "$work/state" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 1 200); do
  busctl --address="$address" status dev.locald.Locald1 >/dev/null 2>&1 && break
  sleep 0.05
done

export LOCALD_BUS_ADDRESS="$address"
(cd "$work/project" && "$bin/locald-ctl" up >&2)

/usr/bin/python3 tests/bench/status/bench.py \
  --ctl "$bin/locald-ctl" --address "$address" --project "$work/project" \
  --daemon-pid "$daemon_pid" --services "$services" --calls "$calls"

(cd "$work/project" && "$bin/locald-ctl" down >&2)
