#!/usr/bin/env bash
# Watched no-op benchmark (issue 13): `locald-ctl build SERVICE` of a
# service whose build hashes the whole Linux kernel tree, while the project
# is watched, against `git status --porcelain` of the same tree. The
# watcher vouches that nothing changed, so the check costs an inotify sync
# and a manifest read, not a walk. Prints both medians and the ratio
# (target: at most 0.1).
#
#   tests/bench/watch/run.sh [CALLS]   # scratch tree in /var/tmp/locald-bench-watch
#   SCRATCH=/some/dir tests/bench/watch/run.sh
#
# The tree is Debian's linux-source-6.1 committed into a scratch git
# repository, prepared as tests/bench/hash/run.sh does. Uses a release build
# (built here) and a private dbus-daemon; nothing touches the user's session.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
calls=${1:-20}
scratch=${SCRATCH:-/var/tmp/locald-bench-watch}
tree=$scratch/linux-source-6.1
need() { command -v "$1" >/dev/null 2>&1; }
if [ ! -f /usr/src/linux-source-6.1.tar.xz ]; then
    apt-get install -y linux-source-6.1
fi
need git || apt-get install -y git
need dbus-daemon || apt-get install -y dbus
if [ ! -f "$scratch/.ready" ]; then
    rm -rf "$scratch"
    mkdir -p "$scratch"
    tar -xf /usr/src/linux-source-6.1.tar.xz -C "$scratch"
    # As in tests/bench/hash/run.sh: drop Debian's "ignore everything at
    # the top level" block so git and locald see upstream's files.
    python3 - "$tree/.gitignore" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
i = s.find('# Debian packaging: ignore everything')
if i >= 0:
    s = s[:s.rindex('#\n', 0, i)]
open(p, 'w').write(s)
PY
    git -C "$tree" init -q
    git -C "$tree" add -A
    git -C "$tree" -c user.name=bench -c user.email=bench@invalid commit -qm import
    # locald's own files stay out of both git status and the source hash.
    printf '/locald.toml\n/.locald/\n' >> "$tree/.git/info/exclude"
    touch "$scratch/.ready"
fi
cat > "$tree/locald.toml" <<'TOML'
[project]
name = "benchwatch"

[services.kernel]
command = ["sleep", "1000000"]
build = { command = ["true"], inputs = ["**"] }
watch = true
stop_timeout = "1s"
TOML

cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --release --locked -q -p locald -p locald-ctl >&2
bin="$(cd "$target/release" && pwd)"

work=$(mktemp -d /tmp/locald-bench-watch.XXXXXX)
bus_pid=""
daemon_pid=""
cleanup() {
  (cd "$tree" && LOCALD_BUS_ADDRESS="${address:-}" "$bin/locald-ctl" down >/dev/null 2>&1) || true
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

"$bin/locald" daemon --bus-address "$address" --state-dir "$work/state" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 1 200); do
  busctl --address="$address" status dev.locald.Locald1 >/dev/null 2>&1 && break
  sleep 0.05
done
export LOCALD_BUS_ADDRESS="$address"
export LOCALD_PROXY_PORT=0
(cd "$tree" && "$bin/locald-ctl" up >&2)

python3 - "$bin/locald-ctl" "$tree" "$calls" <<'PY'
import statistics, subprocess, sys, time
ctl, tree, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])

def run(argv):
    t = time.perf_counter()
    out = subprocess.run(argv, cwd=tree, capture_output=True, text=True)
    return time.perf_counter() - t, out

# The watcher's first walk and the first build's walk come first; a
# check is vouched for once a walk started after the watcher was quiet.
deadline = time.time() + 600
while True:
    _, out = run([ctl, "build", "kernel"])
    if "watched" in out.stdout:
        break
    if time.time() > deadline:
        sys.exit(f"no watched no-op check within 10 minutes: {out.stdout}{out.stderr}")
    time.sleep(1)

watched = []
for _ in range(calls):
    dt, out = run([ctl, "build", "kernel"])
    if "watched" not in out.stdout:
        sys.exit(f"not a watched no-op: {out.stdout}{out.stderr}")
    watched.append(dt)
git = []
run(["git", "status", "--porcelain"])
for _ in range(calls):
    dt, out = run(["git", "status", "--porcelain"])
    if out.stdout.strip():
        sys.exit(f"the tree is not clean for git:\n{out.stdout[:2000]}")
    git.append(dt)
files = subprocess.run(["git", "ls-files"], cwd=tree, capture_output=True, text=True).stdout.count("\n")
w, g = statistics.median(watched), statistics.median(git)
print(f"tree: {tree} ({files} files), {calls} calls each, medians")
print(f"locald-ctl build (watched no-op): {w*1000:8.2f} ms  (max {max(watched)*1000:.2f} ms)")
print(f"git status --porcelain:          {g*1000:8.2f} ms  (max {max(git)*1000:.2f} ms)")
print(f"ratio locald/git: {w/g:.3f} (target <= 0.1)")
PY
