#!/usr/bin/env bash
# Source-hash benchmark (issue 5): locald's no-op check against
# `git status --porcelain`, and its first full hash against `b3sum`, on the
# Linux kernel sources from Debian's linux-source-6.1 package committed into
# a scratch git repository. Prints both ratios and the core count.
#
#   tests/bench/hash/run.sh            # scratch tree in /var/tmp/locald-bench-hash
#   SCRATCH=/some/dir tests/bench/hash/run.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
scratch=${SCRATCH:-/var/tmp/locald-bench-hash}
tree=$scratch/linux-source-6.1

need() { command -v "$1" >/dev/null 2>&1; }

if [ ! -f /usr/src/linux-source-6.1.tar.xz ]; then
    apt-get install -y linux-source-6.1
fi
need git || apt-get install -y git
need xargs || apt-get install -y findutils
need b3sum || cargo install b3sum

if [ ! -f "$scratch/.ready" ]; then
    rm -rf "$scratch"
    mkdir -p "$scratch"
    tar -xf /usr/src/linux-source-6.1.tar.xz -C "$scratch"
    # Debian's tree ignores everything at its top level ("/*" under a
    # "Debian packaging" comment); drop that block so the tree behaves like
    # upstream's and git and locald see the same files.
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
    touch "$scratch/.ready"
fi

cd "$repo"
cargo build --release -q -p locald-tests --bin locald-bench-hash
target=${CARGO_TARGET_DIR:-$repo/target}
"$target/release/locald-bench-hash" "$tree"
