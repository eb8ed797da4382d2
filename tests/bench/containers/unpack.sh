#!/usr/bin/env bash
# Layer-unpack benchmark (issue 10): the same busybox-based image of three
# gzip layers unpacked by locald (through `locald internal-unpack`) and by
# `umoci unpack --rootless`, interleaved, in fresh directories. Prints the
# median and best times and the ratio locald/umoci (target <= 1.0x).
# Not part of the test suite.
#
#   ROUNDS=7 tests/bench/containers/unpack.sh [--user NAME] [--sync] [--dir DIR]
#
# --user NAME runs both as that user (setpriv; locald maps the user's
# subordinate ids and chowns every file); --sync adds locald's final syncfs
# (what the store does; umoci never syncs); --dir DIR works there instead of
# /var/tmp (/dev/shm takes the disk out of the comparison).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

command -v umoci >/dev/null && command -v newuidmap >/dev/null && [ -x /bin/busybox ] \
    || bash "$root/tests/setup-debian.sh"

cargo build --release --manifest-path "$root/Cargo.toml" \
    -p locald-tests --bin unpack-bench --bin locald-test-unpack -p locald --bin locald
exec "$target/release/unpack-bench" --locald "$target/release/locald" \
    --rounds "${ROUNDS:-7}" "$@"
