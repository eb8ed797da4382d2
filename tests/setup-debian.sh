#!/usr/bin/env bash
# Install the Debian packages the integration tests use. Idempotent: only
# missing packages are installed. Run as root (CI does).
set -euo pipefail

packages=(
    runc            # the OCI runtime the shim drives
    busybox-static  # a static busybox for test rootfs images
    uidmap          # newuidmap/newgidmap and subordinate-id tooling
    passwd          # useradd, for the shim tests' unprivileged users
    util-linux      # setpriv, unshare, mount
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
