#!/usr/bin/env bash
# Installs what pxeforge's tests and benchmarks need on a fresh Debian 12 machine (run as root).
# Debian's qemu-system-x86 (7.2) must match qemu-utils; some images carry a newer backported
# qemu-utils, so both are pinned to the bookworm release together.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(
  qemu-system-x86 qemu-utils ipxe ipxe-qemu ovmf busybox-static
  dnsmasq tftpd-hpa tftp-hpa atftp nginx kea-admin kea-dhcp4-server
  squashfs-tools e2fsprogs mtools dosfstools gdisk cpio wrk curl iproute2
  isc-dhcp-client tcpdump sqlite3 zstd
  mmdebstrap attr libcap2-bin strace openssl systemd
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || ! qemu-system-x86_64 --version >/dev/null 2>&1; then
  apt-get update -qq
  # qemu-utils must be the same release as qemu-system-x86 (a newer one Breaks it).
  qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  others=()
  for p in "${missing[@]}"; do [ "$p" = qemu-utils ] || others+=("$p"); done
  apt-get install -y -qq --allow-downgrades "${others[@]}" "qemu-utils=$qv" >/dev/null
fi
# The Debian services must not run on their own: the tests and benches start them by hand.
for svc in dnsmasq tftpd-hpa nginx kea-dhcp4-server; do
  systemctl stop "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
done
python3 -m pip show pykickstart >/dev/null 2>&1 || python3 -m pip install -q pykickstart
# The release sync tests write their fixture tree's .treeinfo with productmd (mtools, dosfstools above).
python3 -m pip show productmd >/dev/null 2>&1 || python3 -m pip install -q productmd
