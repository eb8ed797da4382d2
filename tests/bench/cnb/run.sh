#!/usr/bin/env bash
# Buildpacks build benchmarks of issue 11, side by side in one run (not a test):
#   noop  `locald build` of a built, unchanged service vs `git status` of the
#         same tree (target <= 1.0x), and vs a skipped host build of it
#   warm  a rebuild after a one-file change (warm cache) vs the cold first
#         build (no .locald/)                                   (ratio reported)
# Medians of interleaved rounds, then the ratios.
#
#   sudo ROUNDS=7 tests/bench/cnb/run.sh [--user NAME] [--debug]
#
# Runs as root to install the shim as a root-owned setuid copy; locald runs
# as NAME (default locald-cnb-bench, created with subordinate ids if
# missing), as users run it. The builder is the test fixture
# (tests/fixtures/cnb/): public builders cannot be downloaded here, so the
# build itself is the fixture's bash lifecycle, and "warm vs cold" measures
# locald's part (images, copy, container, export import) plus that.
# --debug uses target/debug binaries instead of building release ones.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

[ "$(id -u)" -eq 0 ] || { echo "run.sh: run as root" >&2; exit 1; }
user=locald-cnb-bench
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --user) user="$2"; shift 2 ;;
        --debug) profile=debug; shift ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
rounds="${ROUNDS:-7}"

if [ "$profile" = release ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" \
        -p locald --bin locald -p locald-shim --bin locald-shim
fi
bin="$target/$profile"

if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
if ! grep -q "^$user:" /etc/subuid; then
    start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' /etc/subuid /etc/subgid)
    usermod --add-subuids "$start-$((start + 65535))" --add-subgids "$start-$((start + 65535))" "$user"
fi
uid=$(id -u "$user")
gid=$(id -g "$user")

work="$(mktemp -d /var/tmp/cnb-bench-XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
mkdir -p "$work"/{run,data,config,home}
chmod 0700 "$work"/{run,data,config,home}
proj="$work/proj"
mkdir "$proj"
"$root/tests/fixtures/cnb/make-builder.sh" "$proj/builder" >/dev/null
echo "hello from the benchmark" >"$proj/hello.txt"
# A tree of some size, like a small project.
for d in $(seq 1 20); do
    mkdir -p "$proj/src/m$d"
    for f in $(seq 1 50); do echo "module $d file $f" >"$proj/src/m$d/f$f.txt"; done
done
cat >"$proj/locald.toml" <<'EOF'
[project]
name = "cnb-bench"

[services.web]
build = { builder = "oci:./builder:builder", run_image = "oci:./builder:run" }

# The same sources as a host build, for the "skipped host build" comparison.
[services.host]
build = { command = "true", inputs = ["**"] }
command = "true"
EOF
(cd "$proj" && git init -q && git add -A && git -c user.email=b@b -c user.name=b commit -qm init)
chown -R "$uid:$gid" "$work"
install -o root -g root -m 4755 "$bin/locald-shim" "$work/locald-shim"

as_user() {
    setpriv --reuid="$uid" --regid="$gid" --init-groups env \
        XDG_RUNTIME_DIR="$work/run" XDG_DATA_HOME="$work/data" \
        XDG_CONFIG_HOME="$work/config" HOME="$work/home" \
        LOCALD_SHIM="$work/locald-shim" NO_COLOR=1 "$@"
}
# Milliseconds one run of "$@" takes (as the user, in the project).
ms() {
    local t0 t1
    t0=$(date +%s%N)
    (cd "$proj" && as_user "$@" >"$work/last.log" 2>&1) || { echo "run.sh: $* failed:" >&2; cat "$work/last.log" >&2; exit 1; }
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

echo "rounds: $rounds, binaries: $bin"
ms "$bin/locald" build >/dev/null   # the first builds, images imported
noop_l=() noop_g=() noop_h=() cold=() warm=()
for i in $(seq 1 "$rounds"); do
    noop_l+=("$(ms "$bin/locald" build web)")
    noop_h+=("$(ms "$bin/locald" build host)")
    noop_g+=("$(ms git status --porcelain)")
done
for i in $(seq 1 "$rounds"); do
    as_user rm -rf "$proj/.locald"
    cold+=("$(ms "$bin/locald" build web)")
    as_user sh -c "echo round $i >>'$proj/hello.txt'"
    warm+=("$(ms "$bin/locald" build web)")
done
nl=$(printf '%s\n' "${noop_l[@]}" | median)
ng=$(printf '%s\n' "${noop_g[@]}" | median)
nh=$(printf '%s\n' "${noop_h[@]}" | median)
mc=$(printf '%s\n' "${cold[@]}" | median)
mw=$(printf '%s\n' "${warm[@]}" | median)
echo "noop: locald build ${nl} ms, git status ${ng} ms, ratio $(awk -v a="$nl" -v b="$ng" 'BEGIN{printf "%.2f", a/(b>0?b:1)}')x (target <= 1.0x)"
echo "noop: locald build ${nl} ms (CNB), ${nh} ms (host build, same tree), ratio $(awk -v a="$nl" -v b="$nh" 'BEGIN{printf "%.2f", a/(b>0?b:1)}')x"
echo "warm: rebuild after a one-file change ${mw} ms, cold build ${mc} ms, ratio $(awk -v a="$mw" -v b="$mc" 'BEGIN{printf "%.2f", a/(b>0?b:1)}')x"
