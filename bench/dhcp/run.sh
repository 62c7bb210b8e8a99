#!/usr/bin/env bash
# DHCP reservation-mode benchmark: pxeforge vs dnsmasq vs Kea, each driven by Kea's perfdhcp
# (DORA exchanges from many simulated clients) over a veth pair between two network namespaces
# that this script creates and removes. Needs root, perfdhcp (kea-admin), dnsmasq, kea-dhcp4.
#
#   bench/dhcp/run.sh [RATE] [SECONDS] [CLIENTS] [ROUNDS]     defaults: 2000 10 50000 3
#
# The servers take turns, ROUNDS times, so that load from elsewhere on the machine hits all of them
# alike; each server's row is its median round by exchanges/s. Prints one table (exchanges/s,
# lost exchanges, latency per server) and the ratios of pxeforge to each peer.
set -euo pipefail

RATE=${1:-2000}
SECS=${2:-10}
CLIENTS=${3:-50000}
ROUNDS=${4:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TAG="pxf-dbench-$$"
SRV="$TAG-srv"
CLI="$TAG-cli"
WORK=$(mktemp -d /tmp/pxf-dbench.XXXXXX)
SERVER_PID=""

cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    ip netns del "$SRV" 2>/dev/null || true
    ip netns del "$CLI" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "bench/dhcp: needs root (network namespaces, port 67)" >&2; exit 1; }
for tool in perfdhcp dnsmasq kea-dhcp4; do
    command -v "$tool" >/dev/null || { echo "bench/dhcp: $tool not installed" >&2; exit 1; }
done

echo "building pxeforge DHCP (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release -p pxeforge-dhcp --example dhcpd)
DHCPD="$TARGET/release/examples/dhcpd"

ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link set lo up
ip -n "$CLI" link set lo up
ip -n "$SRV" link add eth0 type veth peer name eth0 netns "$CLI"
ip -n "$SRV" addr add 10.1.0.1/16 dev eth0
ip -n "$CLI" addr add 10.1.0.2/16 dev eth0
ip -n "$SRV" link set eth0 up
ip -n "$CLI" link set eth0 up

POOL_START=10.1.1.0
POOL_END=10.1.255.254

start_pxeforge() {
    RUST_LOG=warn ip netns exec "$SRV" "$DHCPD" --mode reservation --interface eth0 \
        --lease-db "$WORK/pxeforge/leases.db" --pool "$POOL_START-$POOL_END/16" --ping-check off \
        >"$WORK/pxeforge.log" 2>&1 &
    SERVER_PID=$!
}

start_dnsmasq() {
    # --no-ping: dnsmasq otherwise ICMP-probes every new address (a second per new client), as
    # pxeforge does unless --ping-check off; Kea probes only with its ping-check hook. All three
    # run without probes here, so that the bench compares the servers, not the probe timeouts.
    ip netns exec "$SRV" dnsmasq --no-daemon --port=0 --interface=eth0 --bind-interfaces \
        --conf-file=/dev/null --no-resolv --no-hosts --user=root --dhcp-authoritative --no-ping \
        --dhcp-range="$POOL_START,$POOL_END,255.255.0.0,1h" --dhcp-lease-max=200000 \
        --dhcp-leasefile="$WORK/dnsmasq.leases" --pid-file="$WORK/dnsmasq.pid" \
        >"$WORK/dnsmasq.log" 2>&1 &
    SERVER_PID=$!
}

start_kea() {
    cat >"$WORK/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "eth0" ] },
    "lease-database": { "type": "memfile", "persist": true, "name": "$WORK/kea-leases4.csv", "lfc-interval": 0 },
    "valid-lifetime": 3600,
    "authoritative": true,
    "subnet4": [ { "id": 1, "subnet": "10.1.0.0/16", "pools": [ { "pool": "$POOL_START - $POOL_END" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "stderr" } ], "severity": "WARN" } ]
} }
JSON
    KEA_LOCKFILE_DIR="$WORK" KEA_PIDFILE_DIR="$WORK" \
        ip netns exec "$SRV" kea-dhcp4 -c "$WORK/kea.json" >"$WORK/kea.log" 2>&1 &
    SERVER_PID=$!
}

stop_server() {
    kill -INT "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# perfdhcp's final report → "exchanges/s lost% offer_avg_ms ack_avg_ms discovers acks"
measure() {
    local name=$1 out="$WORK/$1.perfdhcp"
    sleep 1
    ip netns exec "$CLI" perfdhcp -4 -l eth0 -r "$RATE" -R "$CLIENTS" -p "$SECS" -W 1000000 \
        >"$out" 2>&1 || true
    # The report has one block per exchange (DISCOVER-OFFER, REQUEST-ACK).
    awk '
        /^Rate:/ { rate = $2 }
        /^\*\*\*Statistics for: DISCOVER-OFFER/ { blk = "do" }
        /^\*\*\*Statistics for: REQUEST-ACK/ { blk = "ra" }
        /^sent packets:/ { sent[blk] = $3 }
        /^received packets:/ { recv[blk] = $3 }
        /^avg delay:/ { avg[blk] = $3 }
        END {
            lost = sent["do"] - recv["ra"]
            pct = sent["do"] > 0 ? 100.0 * lost / sent["do"] : 100
            printf "%.0f %.2f %s %s %d %d\n", rate, pct, avg["do"], avg["ra"], sent["do"], recv["ra"]
        }' "$out"
}

declare -A RESULT
for round in $(seq "$ROUNDS"); do
    for server in pxeforge dnsmasq kea; do
        echo "round $round: $server at $RATE DORA/s for ${SECS}s ($CLIENTS clients)..." >&2
        # Every round starts from an empty lease database.
        rm -rf "$WORK/pxeforge" "$WORK/dnsmasq.leases" "$WORK"/kea-leases4.csv*
        mkdir -p "$WORK/pxeforge"
        "start_$server"
        measure "$server" >>"$WORK/$server.rounds"
        stop_server
    done
done
for server in pxeforge dnsmasq kea; do
    RESULT[$server]=$(sort -n "$WORK/$server.rounds" | awk '{ row[NR] = $0 } END { print row[int((NR + 1) / 2)] }')
    echo "$server rounds (DORA/s lost% offer_ms ack_ms discovers acks):" >&2
    sed 's/^/    /' "$WORK/$server.rounds" >&2
done

printf '\nDHCPv4 DORA under perfdhcp -r %s -R %s -p %s, median of %s rounds (%s)\n' "$RATE" "$CLIENTS" "$SECS" "$ROUNDS" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-10s %12s %10s %14s %14s %10s %10s\n' server "DORA/s" "lost %" "offer avg ms" "ack avg ms" discovers acks
for server in pxeforge dnsmasq kea; do
    read -r eps pct davg ravg sent recv <<<"${RESULT[$server]}"
    printf '%-10s %12s %10s %14s %14s %10s %10s\n' "$server" "$eps" "$pct" "$davg" "$ravg" "$sent" "$recv"
done
read -r p_eps _ p_d p_r _ _ <<<"${RESULT[pxeforge]}"
for peer in dnsmasq kea; do
    read -r eps _ d r _ _ <<<"${RESULT[$peer]}"
    awk -v a="$p_eps" -v b="$eps" -v la="$p_r" -v lb="$r" -v peer="$peer" 'BEGIN {
        printf "pxeforge / %-8s throughput x%.3g, ack latency x%.3g\n", peer, (b > 0 ? a / b : 0), (lb > 0 ? la / lb : 0) }'
done
