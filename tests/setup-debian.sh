#!/usr/bin/env bash
# Installs what the integration tests need on a Debian 12 machine.
# Idempotent: installs only the packages that are missing.
set -euo pipefail

packages=(
    git # incremental.rs: real repositories for .gitignore and .git/info/exclude
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
