#!/usr/bin/env bash
# TFTP benchmark, one command: pxeforge vs tftpd-hpa vs dnsmasq (TFTP only) vs atftpd on
# loopback. Needs root: it runs inside a private network namespace because dnsmasq's TFTP port is
# fixed at 69. Extra arguments go to bench.py (--repeats N, --clients N, --storm-repeats N,
# --hog N).
#
# atftpd's package conflicts with tftpd-hpa's, so its binary comes from the unpacked .deb
# (`apt-get download atftpd`, `dpkg -x`), cached under /var/cache/pxeforge-tests/atftpd/SHA256
# (the .deb's sha256, as apt's index lists it); set ATFTPD=/path/to/atftpd to use another.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [ "$(id -u)" != 0 ]; then
    echo "bench/tftp needs root (network namespace, dnsmasq on port 69)" >&2
    exit 1
fi
for tool in in.tftpd dnsmasq curl atftp python3 ip; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see scripts/install-deps.sh)" >&2; exit 1; }
done
atftpd_binary() {
    local sha cache deb tmp
    sha=$(apt-cache show atftpd 2>/dev/null | awk '/^SHA256:/ { print $2; exit }')
    [ -n "$sha" ] || { echo "atftpd: not in the apt index (apt-get update?)" >&2; return 1; }
    cache="/var/cache/pxeforge-tests/atftpd/$sha"
    if [ ! -x "$cache/usr/sbin/atftpd" ]; then
        tmp=$(mktemp -d)
        # apt's sandbox user must be able to write the download directory.
        chmod 755 "$tmp"
        (cd "$tmp" && apt-get download -q atftpd >&2) || { rm -rf "$tmp"; return 1; }
        deb=$(ls "$tmp"/atftpd_*.deb)
        if [ "$(sha256sum "$deb" | cut -d' ' -f1)" != "$sha" ]; then
            echo "atftpd: $deb does not match the index's sha256 $sha" >&2
            rm -rf "$tmp"
            return 1
        fi
        mkdir -p "$cache.part"
        dpkg -x "$deb" "$cache.part"
        rm -rf "$cache" && mv "$cache.part" "$cache"
        rm -rf "$tmp"
    fi
    echo "$cache/usr/sbin/atftpd"
}
atftpd="${ATFTPD:-$(atftpd_binary)}"
target="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && cargo build --release -p pxeforge-tftp --example tftp-serve)
ns="pxf-tftp-bench-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip netns exec "$ns" ip link set lo up
# tftpd-hpa resolves its bind address with AI_ADDRCONFIG, which finds no IPv4 in a namespace
# that has only loopback: give the namespace a veth pair (both ends inside, carries nothing).
ip netns exec "$ns" ip link add pxftb0 type veth peer name pxftb1
ip netns exec "$ns" ip addr add 10.254.254.1/30 dev pxftb0
ip netns exec "$ns" ip link set pxftb0 up
ip netns exec "$ns" ip link set pxftb1 up
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
ip netns exec "$ns" python3 "$here/bench.py" --pxeforge "$target/release/examples/tftp-serve" \
    --atftpd "$atftpd" "$@"
