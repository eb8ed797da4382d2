#!/usr/bin/env bash
# Container benchmarks of issue 10, side by side in one run (not a test):
#   pull   locald vs `skopeo copy` from a local registry        (target <= 1.0x)
#   start  `locald up` -> first output line vs `podman run --rm` (target <= 0.5x)
#          and vs bare `runc run` of a prepared bundle, the floor (target <= 1.3x)
#   unpack locald vs `umoci unpack --rootless` (unpack.sh)       (target <= 1.0x)
# Each prints medians of interleaved rounds and the ratios.
#
#   sudo ROUNDS=7 tests/bench/containers/run.sh [--user NAME] [--dir DIR] [--only pull|start|unpack]
#
# Runs as root: podman and runc run as root, and the shim is installed as a
# root-owned setuid copy in the work directory. --user NAME also runs
# `locald up` as that user (created if missing, with subordinate ids), the
# way users run it. --dir DIR works there instead of /var/tmp (/dev/shm
# takes the disk out of the comparison; it must not be mounted nosuid).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

[ "$(id -u)" -eq 0 ] || { echo "run.sh: run as root" >&2; exit 1; }

dir=/var/tmp
user=""
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --user) user="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# What the tests need (registry, skopeo, umoci, runc, busybox), and podman,
# which only the benchmark compares with.
bash "$root/tests/setup-debian.sh"
if ! command -v podman >/dev/null; then
    echo "run.sh: installing podman"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman
fi

cargo build --release --manifest-path "$root/Cargo.toml" \
    -p locald --bin locald -p locald-shim --bin locald-shim \
    -p locald-tests --bin containers-bench

shimdir="$(mktemp -d "$dir/containers-bench-shim-XXXXXX")"
trap 'rm -rf "$shimdir"' EXIT
chmod 0755 "$shimdir"
install -o root -g root -m 4755 "$target/release/locald-shim" "$shimdir/locald-shim"

args=(--locald "$target/release/locald" --shim "$shimdir/locald-shim"
      --rounds "${ROUNDS:-7}" --dir "$dir")
[ -n "$user" ] && args+=(--user "$user")

if [ -z "$only" ] || [ "$only" = pull ] || [ "$only" = start ]; then
    [ -n "$only" ] && args+=(--only "$only")
    "$target/release/containers-bench" "${args[@]}"
fi
if [ -z "$only" ] || [ "$only" = unpack ]; then
    echo
    uargs=(--dir "$dir")
    [ -n "$user" ] && uargs+=(--user "$user")
    ROUNDS="${ROUNDS:-7}" bash "$here/unpack.sh" "${uargs[@]}"
fi
