#!/usr/bin/env bash
# Development-loop benchmark of issue 13, side by side in one run (not a test):
#   edit -> the service answering with the new content, for a host service
#   with a one-second build (`sleep 1` and a copy), watched by locald
#   (`watch = true`, build inputs src/**), against the same build and restart
#   done by a script at the moment of the edit (the floor: no watching, no
#   debounce, no supervisor). Prints the medians and the ratio (target: the
#   watch adds little over the build itself, ratio <= 1.3x).
#
#   ROUNDS=7 tests/bench/devloop/run.sh            # builds locald --release
#   LOCALD=target/debug/locald tests/bench/devloop/run.sh
#
# Not measured (not done): a watched no-op check against `git status` on a
# large tree; locald's builds still decide with their own stat-cached walk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "${LOCALD:-}" ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" -p locald --bin locald
    LOCALD="$target/release/locald"
fi
exec python3 "$here/bench.py" "$LOCALD" "${ROUNDS:-7}"
