#!/usr/bin/env bash
# Fetches the test kernel (Debian's linux-image-amd64) and busybox-static into .cache/test-assets/:
#   vmlinuz                 the kernel
#   lib/modules/<kver>/     its modules (virtio-net is a module in Debian's kernel)
#   busybox                 a static busybox
#   kver                    the kernel version string
# Idempotent: does nothing when the assets are already there.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/.cache/test-assets"
if [ -s "$out/vmlinuz" ] && [ -x "$out/busybox" ] && [ -s "$out/kver" ]; then exit 0; fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
[ -n "$pkg" ] || { echo "fetch-test-assets: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -qq "$pkg" busybox-static)
dpkg -x "$work"/${pkg}_*.deb "$work/k"
dpkg -x "$work"/busybox-static_*.deb "$work/b"
kver=${pkg#linux-image-}
cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz"
mkdir -p "$out/lib/modules"
rm -rf "$out/lib/modules/$kver"
cp -a "$work/k/lib/modules/$kver" "$out/lib/modules/"
cp "$work/b/bin/busybox" "$out/busybox"
chmod 0755 "$out/busybox"
echo "$kver" > "$out/kver"
echo "fetch-test-assets: kernel $kver and busybox in $out"
