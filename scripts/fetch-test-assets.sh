#!/usr/bin/env bash
# Fetches the test kernel (Debian's linux-image-amd64) and busybox-static into .cache/test-assets/:
#   vmlinuz                 the kernel
#   lib/modules/<kver>/     its modules (virtio-net is a module in Debian's kernel)
#   busybox                 a static busybox
#   virtio-modules/         the virtio-net and virtio-blk modules, for initramfs recipes
#   kver                    the kernel version string (written last: its presence means complete)
# Idempotent: does nothing when the assets are already there.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/.cache/test-assets"
if [ -s "$out/kver" ] && [ -s "$out/vmlinuz" ] && [ -x "$out/busybox" ] && [ -d "$out/virtio-modules" ]; then exit 0; fi
mkdir -p "$top/.cache"
work=$(mktemp -d "$top/.cache/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
[ -n "$pkg" ] || { echo "fetch-test-assets: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -qq "$pkg" busybox-static)
dpkg -x "$work"/${pkg}_*.deb "$work/k"
dpkg -x "$work"/busybox-static_*.deb "$work/b"
kver=${pkg#linux-image-}
# Assemble beside the final place, then swap it in with one rename, so that a concurrent or
# interrupted run never leaves a half module tree behind.
new="$work/test-assets"
mkdir -p "$new/lib/modules" "$new/virtio-modules"
cp "$work/k/boot/vmlinuz-$kver" "$new/vmlinuz"
cp -a "$work/k/lib/modules/$kver" "$new/lib/modules/"
cp "$work/b/bin/busybox" "$new/busybox"
chmod 0755 "$new/busybox"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk; do
  find "$new/lib/modules/$kver" -name "$m.ko*" -exec cp {} "$new/virtio-modules/" \;
done
echo "$kver" > "$new/kver"
old="$work/old"
if [ -e "$out" ]; then mv "$out" "$old"; fi
mv "$new" "$out"
echo "fetch-test-assets: kernel $kver and busybox in $out"
