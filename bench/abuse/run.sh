#!/usr/bin/env bash
# Boots under abuse, one command (root): legitimate PXE boots against `pxeforge serve` while an
# attacker on the same segment holds 20,000 HTTP connections, sends 100,000 TFTP read requests
# from spoofed sources and floods DHCP DISCOVERs from random MACs; the same boots without the
# attack side by side, repeated, with the ratio and its spread. Writes bench/abuse/RESULTS.md
# (the measured part, between its markers) and bench/abuse/latest-run.json (every number; not
# committed: it is output).
#
# Two network namespaces it creates and removes, joined by a veth pair, carry all of it:
#   server ns  pxfab-s 10.98.0.1/16; pxeforge serve: HTTP :8080, TFTP :69, proxyDHCP on pxfab-s;
#              10.99.0.0/16 (the spoofed sources) routed back to the client side, where the
#              replies are dropped (no forwarding there), as a forged sender's replies vanish
#   client ns  pxfab-c 10.98.0.2/16 + legitimate hosts 10.98.1.1-32 + attacker 10.98.2.1-N
# Legitimate boot (as PXE firmware, then iPXE): DISCOVER/OFFER + REQUEST/ACK on 4011 ->
# TFTP undionly.kpxe (blksize 1468, content checked) -> GET /ipxe?mac= -> the kernel it names
# (size checked); boots start at a fixed rate (open loop), so "attempted" is the same in every run.
#
# Env: PXEFORGE_BIN (skip the build), REPEATS (3), DURATION (30 s of boots), BOOT_RATE (10/s),
#      CONCURRENCY (64 boots at once at most), TCP_N (20000), TCP_ADDRS (100 attacker addresses),
#      TCP_RATE (2000 connections opened a second, reopening those the server closes),
#      SPOOF_N (100000), SPOOF_RATE (4000/s), DHCP_FLOOD_N (40000), DHCP_FLOOD_RATE (1500/s),
#      TFTP_MAX_TRANSFERS (4096), TFTP_MAX_PER_ADDR (16), TFTP_NEW_PER_SEC (20),
#      HTTP_PER_ADDR (256), HTTP_CONNECTIONS (16384), SERVER_LOG (warn), KEEP_TMP (0).
# Needs: ip (iproute2), python3 >= 3.9; nothing leaves the two namespaces.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [ "$(id -u)" != 0 ]; then
    echo "bench/abuse needs root (network namespaces, raw sockets, TFTP port 69)" >&2
    exit 1
fi
for tool in ip python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see scripts/install-deps.sh)" >&2; exit 1; }
done
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-30}
BOOT_RATE=${BOOT_RATE:-10}
CONCURRENCY=${CONCURRENCY:-64}
TCP_N=${TCP_N:-20000}
TCP_ADDRS=${TCP_ADDRS:-100}
TCP_RATE=${TCP_RATE:-2000}
SPOOF_N=${SPOOF_N:-100000}
SPOOF_RATE=${SPOOF_RATE:-4000}
DHCP_FLOOD_N=${DHCP_FLOOD_N:-40000}
DHCP_FLOOD_RATE=${DHCP_FLOOD_RATE:-1500}
TFTP_MAX_TRANSFERS=${TFTP_MAX_TRANSFERS:-4096}
TFTP_MAX_PER_ADDR=${TFTP_MAX_PER_ADDR:-16}
TFTP_NEW_PER_SEC=${TFTP_NEW_PER_SEC:-20}
HTTP_PER_ADDR=${HTTP_PER_ADDR:-256}
HTTP_CONNECTIONS=${HTTP_CONNECTIONS:-16384}
SERVER_LOG=${SERVER_LOG:-warn}
LEGIT_HOSTS=32

if [ -z "${PXEFORGE_BIN:-}" ]; then
    echo "== building pxeforge (release)" >&2
    (cd "$repo" && cargo build --release -p pxeforge-server >&2)
    PXEFORGE_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/pxeforge
fi
PXEFORGE_BIN=$(readlink -f "$PXEFORGE_BIN")

tmp=$(mktemp -d /tmp/pxeforge-bench-abuse.XXXXXX)
ns_s="pxfab-srv-$$"
ns_c="pxfab-cli-$$"
cleanup() {
    ip netns del "$ns_s" 2>/dev/null || true
    ip netns del "$ns_c" 2>/dev/null || true
    [ "${KEEP_TMP:-0}" = 1 ] && echo "== kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add "$ns_s"
ip netns add "$ns_c"
ip -n "$ns_s" link set lo up
ip -n "$ns_c" link set lo up
ip -n "$ns_s" link add pxfab-s type veth peer name pxfab-c netns "$ns_c"
ip -n "$ns_s" addr add 10.98.0.1/16 dev pxfab-s
ip -n "$ns_c" addr add 10.98.0.2/16 dev pxfab-c
legit=()
for i in $(seq 1 "$LEGIT_HOSTS"); do
    ip -n "$ns_c" addr add "10.98.1.$i/16" dev pxfab-c
    legit+=("10.98.1.$i")
done
attackers=()
for i in $(seq 1 "$TCP_ADDRS"); do
    ip -n "$ns_c" addr add "10.98.2.$i/16" dev pxfab-c
    attackers+=("10.98.2.$i")
done
ip -n "$ns_s" link set pxfab-s up
ip -n "$ns_c" link set pxfab-c up
# The spoofed sources' replies go back over the veth and die there (the client side forwards
# nothing and owns none of these addresses): no ICMP comes back to end a transfer early.
ip -n "$ns_s" route add 10.99.0.0/16 via 10.98.0.2
ip netns exec "$ns_c" sysctl -qw net.ipv4.ip_forward=0
for k in all.rp_filter default.rp_filter pxfab-s.rp_filter; do
    ip netns exec "$ns_s" sysctl -qw "net.ipv4.conf.$k=0"
done

join() { local IFS=,; echo "$*"; }
python3 "$here/abuse.py" site --repo "$repo" --out "$tmp" --server-ip 10.98.0.1 --http-port 8080 \
    --tftp "max_transfers = $TFTP_MAX_TRANSFERS" \
    --tftp "max_transfers_per_addr = $TFTP_MAX_PER_ADDR" \
    --tftp "new_per_source_per_sec = $TFTP_NEW_PER_SEC" \
    --limits "http_connections_per_addr = $HTTP_PER_ADDR" \
    --limits "http_connections = $HTTP_CONNECTIONS" \
    --limits "exempt = []" >/dev/null
chmod -R a+rX "$tmp"

version=$("$PXEFORGE_BIN" --version 2>/dev/null || echo "pxeforge")
cmdline="bench/abuse/run.sh (REPEATS=$REPEATS DURATION=$DURATION BOOT_RATE=$BOOT_RATE TCP_N=$TCP_N TCP_ADDRS=$TCP_ADDRS TCP_RATE=$TCP_RATE SPOOF_N=$SPOOF_N SPOOF_RATE=$SPOOF_RATE DHCP_FLOOD_N=$DHCP_FLOOD_N DHCP_FLOOD_RATE=$DHCP_FLOOD_RATE)"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), $version" >&2
python3 "$here/abuse.py" run --bin "$PXEFORGE_BIN" --bin-version "$version" \
    --site-json "$tmp/site.json" --tmp "$tmp" \
    --ns-srv "$ns_s" --ns-cli "$ns_c" --srv-iface pxfab-s --cli-iface pxfab-c \
    --server-ip 10.98.0.1 --http-port 8080 --tftp-port 69 \
    --legit-addrs "$(join "${legit[@]}")" --tcp-addrs "$(join "${attackers[@]}")" \
    --tcp-n "$TCP_N" --tcp-rate "$TCP_RATE" --spoof-n "$SPOOF_N" --spoof-rate "$SPOOF_RATE" --spoof-net 10.99.0.0/16 \
    --dhcp-flood-n "$DHCP_FLOOD_N" --dhcp-flood-rate "$DHCP_FLOOD_RATE" \
    --boot-rate "$BOOT_RATE" --duration "$DURATION" --concurrency "$CONCURRENCY" \
    --repeats "$REPEATS" --server-log "$SERVER_LOG" \
    --json-out "$here/latest-run.json" --report-out "$tmp/report.md" --command "$cmdline"

# The measured part of RESULTS.md is replaced; the reading above and below it is kept.
python3 - "$here/RESULTS.md" "$tmp/report.md" "$tmp/site/pxeforge.toml" <<'EOF'
import re, sys
results, report, settings = sys.argv[1:4]
text = open(results).read()
toml = open(settings).read()
picked = "".join(s for s in re.split(r"(?m)^(?=\[)", toml) if re.match(r"\[(tftp|limits)\]", s))
block = ("<!-- measured: begin (bench/abuse/run.sh rewrites this part) -->\n"
         + open(report).read()
         + "\nSettings the server ran with (the rest at their defaults; `--tftp 0.0.0.0:69`, "
           "`--dhcp proxy` on the veth):\n\n```toml\n" + picked.strip() + "\n```\n"
         + "<!-- measured: end -->")
new, n = re.subn(r"(?s)<!-- measured: begin.*?<!-- measured: end -->", lambda m: block, text)
open(results, "w").write(new if n else text + "\n" + block + "\n")
EOF
echo "== wrote $here/RESULTS.md and $here/latest-run.json" >&2
