#!/usr/bin/env bash
# TFTP alone under a flood of forged requests, for comparing builds of the TFTP crate: each
# `tftp-serve` given (the crate's example: `cargo build --release -p pxeforge-tftp --example
# tftp-serve`) serves undionly.kpxe in a private namespace with the crate's defaults, while
# SPOOF_N RRQs from random sources of 10.99.0.0/16 arrive at SPOOF_RATE and legitimate clients
# (32 addresses) fetch the file at BOOT_RATE for DURATION seconds. Root; same topology as run.sh.
# Usage: bench/abuse/tftp-flood.sh LABEL=PATH/TO/tftp-serve [LABEL=PATH ...]
# Env: SPOOF_N (100000), SPOOF_RATE (4000), BOOT_RATE (10), DURATION (20).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: $0 LABEL=tftp-serve ..." >&2; exit 2; }
SPOOF_N=${SPOOF_N:-100000}
SPOOF_RATE=${SPOOF_RATE:-4000}
BOOT_RATE=${BOOT_RATE:-10}
DURATION=${DURATION:-20}
tmp=$(mktemp -d /tmp/pxeforge-bench-tftp-flood.XXXXXX)
ns_s="pxfab-tfs-$$"
ns_c="pxfab-tfc-$$"
cleanup() {
    ip netns del "$ns_s" 2>/dev/null || true
    ip netns del "$ns_c" 2>/dev/null || true
    rm -rf "$tmp"
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
for i in $(seq 1 32); do
    ip -n "$ns_c" addr add "10.98.1.$i/16" dev pxfab-c
    legit+=("10.98.1.$i")
done
ip -n "$ns_s" link set pxfab-s up
ip -n "$ns_c" link set pxfab-c up
ip -n "$ns_s" route add 10.99.0.0/16 via 10.98.0.2
ip netns exec "$ns_c" sysctl -qw net.ipv4.ip_forward=0
for k in all.rp_filter default.rp_filter pxfab-s.rp_filter; do
    ip netns exec "$ns_s" sysctl -qw "net.ipv4.conf.$k=0"
done
python3 "$here/abuse.py" site --repo "$here/../.." --out "$tmp" --server-ip 10.98.0.1 >/dev/null
addrs=$(IFS=,; echo "${legit[*]}")
echo "| build | fetches served / attempted | fetch p50 / max (s) | ERROR busy seen, RRQ timeouts | server outcomes |"
echo "|---|---:|---|---|---|"
for arg in "$@"; do
    label=${arg%%=*}
    bin=$(readlink -f "${arg#*=}")
    ip netns exec "$ns_s" "$bin" "$tmp/tftp" 0.0.0.0:69 >/dev/null 2>"$tmp/serve.err" &
    server=$!
    sleep 0.5
    ip netns exec "$ns_c" python3 "$here/abuse.py" tftp-spoof --server 10.98.0.1 --port 69 \
        --n "$SPOOF_N" --rate "$SPOOF_RATE" --net 10.99.0.0/16 >/dev/null &
    spoof=$!
    sleep 1
    out=$(ip netns exec "$ns_c" python3 "$here/abuse.py" legit --site-json "$tmp/site.json" \
        --server 10.98.0.1 --tftp-port 69 --iface pxfab-c --addrs "$addrs" --no-dhcp --no-http \
        --rate "$BOOT_RATE" --duration "$DURATION")
    kill "$spoof" 2>/dev/null || true
    wait "$spoof" 2>/dev/null || true
    kill -TERM "$server"
    wait "$server" || true
    outcomes=$(grep -E '^pxeforge_tftp_transfers_total' "$tmp/serve.err" | grep -v ' 0$' \
        | sed -E 's/.*outcome="([a-z_]+)"\} ([0-9]+)/\1 \2/' | paste -sd, - | sed 's/,/, /g')
    python3 - "$label" "$outcomes" "$out" <<'EOF'
import json, sys
label, outcomes, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
c = out["counters"]
f = lambda x: "-" if x is None else "%.3f" % x
print("| %s | %d / %d | %s / %s | %d, %d | %s |" % (label, out["served"], out["attempted"],
      f(out["boot_p50"]), f(out["boot_max"]), c["tftp_busy"], c["tftp_rrq_timeouts"], outcomes))
EOF
done
