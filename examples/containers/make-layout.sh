#!/bin/sh
# Builds the example's image, offline: an OCI image layout at ./layout
# (tag `v1`) holding Debian's busybox-static, its applets as symlinks and a
# page for httpd to serve. Needs umoci and busybox-static
# (apt-get install umoci busybox-static); runs as any user.
#
#   examples/containers/make-layout.sh [LAYOUT_DIR]
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
layout="${1:-$here/layout}"
busybox=/bin/busybox

for tool in umoci "$busybox"; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "make-layout.sh: $tool is missing (apt-get install umoci busybox-static)" >&2
        exit 1
    }
done

rm -rf "$layout"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

umoci init --layout "$layout"
umoci new --image "$layout:v1"
# --rootless: no root needed, files end up owned by root in the image.
umoci unpack --rootless --image "$layout:v1" "$work/bundle"
rootfs="$work/bundle/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/www"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
printf 'hello from a locald container\n' > "$rootfs/www/index.html"
umoci repack --image "$layout:v1" "$work/bundle"
umoci config --image "$layout:v1" \
    --config.env PATH=/bin \
    --config.workingdir / \
    --config.cmd /bin/sh
umoci gc --layout "$layout"
# umoci writes blobs 0600: let other users of this machine (or locald run
# as another user than this script) read the image.
chmod -R go+rX "$layout"
echo "make-layout.sh: built $layout (tag v1)"
