#!/usr/bin/env bash
# Journald flood benchmark (issue 4): the same 1,000,000-line generator
#   (a) through a real `locald up` of a one-service project into journald
#       with locald's fields (LOCALD=stand-in measures the JournalSink fed
#       from a pipe instead, without the supervisor),
#   (b) straight into journald with the same fields via sd_journal_sendv(),
#   (c) through systemd-cat (stream protocol, no fields),
# each into a fresh private journald (a journal namespace without rate
# limits), counting every line in the journal afterwards. Prints lines/s and
# the ratios a/b (target >= 0.9) and a/c. Needs root.
#
# Then (issue 12; UNITS=0 skips it) the same flood in a real systemd user
# manager booted with systemd-nspawn (units.rs): (u) a service run as a
# transient unit, whose output forwarder writes locald's fields and the
# daemon copies nothing, (h) the same service on the host runtime (copied
# through the daemon), (c) systemd-cat; prints u/c (target >= 0.9) and the
# daemon's CPU time during (u) against (h) (target < 5 %).
#
#   ROUNDS=3 tests/bench/journal/run.sh [--lines N] [--locald PATH]
#
# Each case runs ROUNDS times (interleaved); the best rate of each counts,
# since the machine may be busy with other work during a round.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

if ! [ -e /usr/include/systemd/sd-journal.h ] || ! command -v cc >/dev/null; then
    bash "$root/tests/setup-debian.sh"
fi

cargo build --release --manifest-path "$root/Cargo.toml" -p locald-tests --bin journal-bench --bin journal-units-bench -p locald --bin locald -p locald-ctl --bin locald-ctl
bench="$target/release/journal-bench"
sd_send="$target/release/journal-bench-sd-send"
cc -O2 -Wall -o "$sd_send" "$here/sd_send.c" -lsystemd

args=(run --rounds "${ROUNDS:-3}" --sd-send "$sd_send")
case "${LOCALD:-$target/release/locald}" in
    stand-in) ;;
    *) args+=(--locald "${LOCALD:-$target/release/locald}") ;;
esac
"$bench" "${args[@]}" "$@"
if [ "${UNITS:-1}" != 0 ]; then
    lines=()
    if [ "${1:-}" = --lines ] && [ -n "${2:-}" ]; then lines=(--lines "$2"); fi
    "$target/release/journal-units-bench" --rounds "${ROUNDS:-2}" --sd-send "$sd_send" "${lines[@]}"
fi
