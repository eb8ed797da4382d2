#!/usr/bin/env bash
# Installs what the integration tests and benchmarks need on Debian 12, if
# missing. Idempotent: run it as often as you like.
set -euo pipefail
packages=(
    systemd          # systemd-journald, journalctl, systemd-cat (journal tests)
    libsystemd-dev   # sd_journal_sendv() for the journal benchmark's sender
    gcc              # builds that sender
    libc6-dev
    util-linux       # unshare (points default-path tools at a private journald)
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
