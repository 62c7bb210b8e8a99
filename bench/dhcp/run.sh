#!/usr/bin/env bash
# DHCP reservation-mode benchmark: pxeforge vs dnsmasq vs Kea, each driven by Kea's perfdhcp
# (DORA exchanges from many simulated clients) over a veth pair between two network namespaces
# that this script creates and removes. Needs root, perfdhcp (kea-admin), dnsmasq, kea-dhcp4.
#
#   bench/dhcp/run.sh [RATE] [SECONDS] [CLIENTS] [ROUNDS]     defaults: 2000 10 50000 3
#
# The servers take turns, ROUNDS times, so that load from elsewhere on the machine hits all of them
# alike; each server's row is its median round by exchanges/s. Prints one table (exchanges/s,
# lost exchanges, latency, datagrams the server's socket dropped for a full receive queue) and the
# ratios of pxeforge to each peer.
#
# Then the rising-rate round: each server in turn at RISE_RATES (DORA/s asked, for RISE_SECS
# each, from an empty lease database) until an exchange is lost; reports the highest rate each
# held with no loss. Environment:
#   SERVERS="pxeforge dnsmasq kea"   which servers (and their order)
#   RISE_RATES="1000 2000 ... 10000" the rising round's steps; empty: no rising round
#   RISE_SECS=5                      seconds per step
#   PXF_ARGS=""                      extra dhcpd flags (e.g. --group-commit-max 1 --recv-buffer 0)
set -euo pipefail

RATE=${1:-2000}
SECS=${2:-10}
CLIENTS=${3:-50000}
ROUNDS=${4:-3}
SERVERS=${SERVERS:-pxeforge dnsmasq kea}
RISE_RATES=${RISE_RATES-1000 2000 3000 4000 5000 6000 7000 8000 10000 12000}
RISE_SECS=${RISE_SECS:-5}
PXF_ARGS=${PXF_ARGS:-}
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
        $PXF_ARGS >"$WORK/pxeforge.log" 2>&1 &
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

# UDP datagrams dropped in the server namespace because a socket's receive queue was full.
rcvbuf_errors() {
    ip netns exec "$SRV" cat /proc/net/snmp | awk '
        $1 == "Udp:" && !hdr { for (i = 2; i <= NF; i++) col[$i] = i; hdr = 1; next }
        $1 == "Udp:" && hdr { print $col["RcvbufErrors"]; exit }'
}

# perfdhcp's final report → "exchanges/s lost% offer_avg_ms ack_avg_ms discovers acks rcvbuf_drops"
# measure NAME RATE SECONDS
measure() {
    local name=$1 rate=$2 secs=$3 out="$WORK/$1.perfdhcp" drops_before
    sleep 1
    drops_before=$(rcvbuf_errors)
    ip netns exec "$CLI" perfdhcp -4 -l eth0 -r "$rate" -R "$CLIENTS" -p "$secs" -W 1000000 \
        >"$out" 2>&1 || true
    # The report has one block per exchange (DISCOVER-OFFER, REQUEST-ACK).
    awk -v drops=$(( $(rcvbuf_errors) - drops_before )) '
        /^Rate:/ { rate = $2 }
        /^\*\*\*Statistics for: DISCOVER-OFFER/ { blk = "do" }
        /^\*\*\*Statistics for: REQUEST-ACK/ { blk = "ra" }
        /^sent packets:/ { sent[blk] = $3 }
        /^received packets:/ { recv[blk] = $3 }
        /^avg delay:/ { avg[blk] = $3 }
        END {
            lost = sent["do"] - recv["ra"]
            pct = sent["do"] > 0 ? 100.0 * lost / sent["do"] : 100
            printf "%.0f %.2f %s %s %d %d %d\n", rate, pct, avg["do"], avg["ra"], sent["do"], recv["ra"], drops
        }' "$out"
}

fresh_state() {
    rm -rf "$WORK/pxeforge" "$WORK/dnsmasq.leases" "$WORK"/kea-leases4.csv*
    mkdir -p "$WORK/pxeforge"
}

echo "load average at start: $(cat /proc/loadavg)" >&2
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A RESULT
for round in $(seq "$ROUNDS"); do
    for server in $SERVERS; do
        echo "round $round: $server at $RATE DORA/s for ${SECS}s ($CLIENTS clients)..." >&2
        # Every round starts from an empty lease database.
        fresh_state
        "start_$server"
        measure "$server" "$RATE" "$SECS" >>"$WORK/$server.rounds"
        stop_server
    done
done
for server in $SERVERS; do
    [ -f "$WORK/$server.rounds" ] || continue
    RESULT[$server]=$(sort -n "$WORK/$server.rounds" | awk '{ row[NR] = $0 } END { print row[int((NR + 1) / 2)] }')
    echo "$server rounds (DORA/s lost% offer_ms ack_ms discovers acks rcvbuf_drops):" >&2
    sed 's/^/    /' "$WORK/$server.rounds" >&2
done

# The rising-rate round: one server at a time, rate after rate, until an exchange is lost.
declare -A HELD
if [ -n "$RISE_RATES" ]; then
    for server in $SERVERS; do
        HELD[$server]="none"
        for rate in $RISE_RATES; do
            echo "rising: $server at $rate DORA/s for ${RISE_SECS}s..." >&2
            fresh_state
            "start_$server"
            row=$(measure "$server" "$rate" "$RISE_SECS")
            stop_server
            echo "$rate $row" >>"$WORK/$server.rise"
            read -r eps pct _ _ sent recv drops <<<"$row"
            if [ "$sent" -gt 0 ] && [ "$sent" = "$recv" ]; then
                HELD[$server]="$rate $eps"
            else
                break
            fi
        done
    done
fi

if [ "$ROUNDS" -gt 0 ]; then
printf '\nDHCPv4 DORA under perfdhcp -r %s -R %s -p %s, median of %s rounds (%s)\n' "$RATE" "$CLIENTS" "$SECS" "$ROUNDS" "$(date -u +%Y-%m-%dT%H:%MZ)"
echo "load average: $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end; $(nproc) cores"
printf '%-10s %12s %10s %14s %14s %10s %10s %13s\n' server "DORA/s" "lost %" "offer avg ms" "ack avg ms" discovers acks "rcvbuf drops"
for server in $SERVERS; do
    read -r eps pct davg ravg sent recv drops <<<"${RESULT[$server]}"
    printf '%-10s %12s %10s %14s %14s %10s %10s %13s\n' "$server" "$eps" "$pct" "$davg" "$ravg" "$sent" "$recv" "$drops"
done
for server in $SERVERS; do
    printf '%-10s lost %% per round: %s\n' "$server" "$(awk '{ printf "%s%s", sep, $2; sep = ", " }' "$WORK/$server.rounds")"
done
if [[ " $SERVERS " == *" pxeforge "* ]]; then
    read -r p_eps _ p_d p_r _ _ _ <<<"${RESULT[pxeforge]}"
    for peer in $SERVERS; do
        [ "$peer" = pxeforge ] && continue
        read -r eps _ d r _ _ _ <<<"${RESULT[$peer]}"
        awk -v a="$p_eps" -v b="$eps" -v la="$p_r" -v lb="$r" -v peer="$peer" 'BEGIN {
            printf "pxeforge / %-8s throughput x%.3g, ack latency x%.3g\n", peer, (b > 0 ? a / b : 0), (lb > 0 ? la / lb : 0) }'
    done
fi
fi
if [ -n "$RISE_RATES" ]; then
    printf '\nRising rate (%ss a step, %s clients, from an empty lease database): highest rate held with no loss\n' "$RISE_SECS" "$CLIENTS"
    printf '%-10s %14s %14s   %s\n' server "held (asked)" "DORA/s there" "steps (asked: DORA/s lost% rcvbuf_drops)"
    for server in $SERVERS; do
        read -r held eps <<<"${HELD[$server]}"
        steps=$(awk '{ printf "%s%s: %s %s%% %s", sep, $1, $2, $3, $8; sep = "; " }' "$WORK/$server.rise")
        printf '%-10s %14s %14s   %s\n' "$server" "$held" "${eps:--}" "$steps"
    done
fi
