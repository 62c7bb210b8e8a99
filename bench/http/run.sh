#!/usr/bin/env bash
# pxeforge vs nginx (sendfile on) on loopback, side by side in one run:
#   large file: a 256 MiB file at 1, 16 and 256 concurrent downloads (+ 16 concurrent Range GETs):
#               total throughput and the peak RSS (VmHWM) of each server during that case;
#   small:      wrk against /ipxe?mac=... (rendered per request, a site of 10,000 hosts, a
#               different MAC per request) vs nginx serving a static file of the same size.
# Writes bench/http/RESULTS.md. Usage: bench/http/run.sh
# Env: PXEFORGE_BIN (skip the build), SIZE_MB (default 256), CONCURRENCY ("1 16 256"),
#      WRK_SECONDS (10), WRK_CONNECTIONS (64), HOSTS (10000), RESULTS (output file).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SIZE_MB=${SIZE_MB:-256}
CONCURRENCY=${CONCURRENCY:-"1 16 256"}
WRK_SECONDS=${WRK_SECONDS:-10}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
HOSTS=${HOSTS:-10000}
RESULTS=${RESULTS:-$ROOT/bench/http/RESULTS.md}

for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench/http: $tool is required (apt-get install $tool)" >&2; exit 2; }
done

if [ -z "${PXEFORGE_BIN:-}" ]; then
    echo "== building pxeforge (release)" >&2
    (cd "$ROOT" && cargo build --release -p pxeforge-server >&2)
    PXEFORGE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pxeforge
fi

TMP=$(mktemp -d /tmp/pxeforge-bench-http.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    sleep 0.2
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- content: one directory served by both servers
WWW=$TMP/www
mkdir -p "$WWW"
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$WWW/big.bin"
chmod -R a+rX "$WWW"

# --- a copy of the example site with a generated inventory of $HOSTS hosts
SITE=$TMP/site
mkdir -p "$SITE/hosts"
cp "$ROOT/pxeforge.toml" "$SITE/"
for d in profiles templates kickstarts images; do [ -d "$ROOT/$d" ] && cp -r "$ROOT/$d" "$SITE/"; done
# Recipes name inputs relative to the site (the test assets cache).
[ -e "$ROOT/.cache" ] && ln -s "$ROOT/.cache" "$SITE/.cache"
python3 - "$SITE/hosts/fleet.toml" "$HOSTS" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    for i in range(n):
        b = i.to_bytes(3, "big")
        f.write(f'[[host]]\nname = "bench-{i:05d}"\nmac = "02:50:46:{b[0]:02x}:{b[1]:02x}:{b[2]:02x}"\n'
                f'profile = "{"qemu-bios" if i % 2 == 0 else "qemu-uefi"}"\n\n')
PY

# --- pxeforge
PXF_PORT=$(free_port)
PXEFORGE_LOG=warn "$PXEFORGE_BIN" serve --site "$SITE" --http "127.0.0.1:$PXF_PORT" --no-tftp \
    --assets "$WWW" --state "$TMP/state" > "$TMP/pxeforge.out" 2> "$TMP/pxeforge.log" &
PXF_PID=$!
PIDS+=("$PXF_PID")
for _ in $(seq 1 600); do grep -q '^pxeforge: ready' "$TMP/pxeforge.out" && break; sleep 0.1; done
grep -q '^pxeforge: ready' "$TMP/pxeforge.out" || { echo "pxeforge did not start:" >&2; cat "$TMP/pxeforge.log" >&2; exit 1; }

# --- nginx, its own config, sendfile on, no access log (pxeforge runs at log level warn)
NGX_PORT=$(free_port)
mkdir -p "$TMP/nginx/logs"
cat > "$TMP/nginx.conf" <<NGX
worker_processes auto;
pid $TMP/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGX_PORT;
        location /assets/ { alias $WWW/; }
    }
}
NGX
nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -g 'daemon on;'
for _ in $(seq 1 50); do [ -s "$TMP/nginx.pid" ] && break; sleep 0.1; done
NGX_MASTER=$(cat "$TMP/nginx.pid")

nginx_pids() { echo "$NGX_MASTER"; pgrep -P "$NGX_MASTER" || true; }
server_pids() { if [ "$1" = pxeforge ]; then echo "$PXF_PID"; else nginx_pids; fi; }
port_of() { if [ "$1" = pxeforge ]; then echo "$PXF_PORT"; else echo "$NGX_PORT"; fi; }
# Peak RSS of a case: reset the high-water marks (clear_refs 5), read VmHWM after, sum the processes.
reset_peak() { for p in $(server_pids "$1"); do echo 5 > "/proc/$p/clear_refs" 2>/dev/null || true; done; }
peak_mib() {
    local kib=0 v
    for p in $(server_pids "$1"); do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0); kib=$((kib + ${v:-0}))
    done
    awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }'
}
now() { date +%s.%N; }

# Downloads: N concurrent curls of the whole file (or of N distinct ranges). Prints "MiB/s peakMiB".
download_case() { # server n mode
    local server=$1 n=$2 mode=$3 port url t0 t1 got want
    port=$(port_of "$server"); url="http://127.0.0.1:$port/assets/big.bin"
    curl -s -o /dev/null "$url" -r 0-0   # connection warm-up; the file is in the page cache already
    reset_peak "$server"
    t0=$(now)
    if [ "$mode" = full ]; then
        got=$(seq 1 "$n" | xargs -P "$n" -I{} curl -s -o /dev/null -w '%{size_download}\n' "$url" | awk '{s+=$1} END {print s}')
        want=$((n * SIZE_MB * 1024 * 1024))
    else
        local slice=$((SIZE_MB * 1024 * 1024 / n))
        got=$(seq 0 $((n - 1)) | xargs -P "$n" -I{} sh -c "curl -s -o /dev/null -w '%{size_download}\n' -r \$(({} * $slice))-\$(({} * $slice + $slice - 1)) $url" | awk '{s+=$1} END {print s}')
        want=$((n * slice))
    fi
    t1=$(now)
    if [ "$got" != "$want" ]; then echo "FAIL($got/$want) $(peak_mib "$server")"; return; fi
    awk -v b="$got" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / 1048576 / (z - a) }'
    echo " $(peak_mib "$server")"
}

cat /dev/null > "$TMP/rows.large"
cat "$WWW/big.bin" > /dev/null
for n in $CONCURRENCY; do
    echo "== $n concurrent downloads of ${SIZE_MB} MiB" >&2
    read -r pt pm <<< "$(download_case pxeforge "$n" full)"
    read -r nt nm <<< "$(download_case nginx "$n" full)"
    echo "| $n × full GET | $pt | $nt | $(awk -v a="$pt" -v b="$nt" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }') | $pm | $nm |" >> "$TMP/rows.large"
done
echo "== 16 concurrent Range GETs" >&2
read -r pt pm <<< "$(download_case pxeforge 16 range)"
read -r nt nm <<< "$(download_case nginx 16 range)"
echo "| 16 × Range GET (1/16 each) | $pt | $nt | $(awk -v a="$pt" -v b="$nt" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }') | $pm | $nm |" >> "$TMP/rows.large"

# --- small responses
cat > "$TMP/macs.lua" <<LUA
local i = 0
request = function()
    i = (i * 7919 + 1) % $HOSTS
    return wrk.format("GET", string.format("/ipxe?mac=02:50:46:%02x:%02x:%02x&platform=pcbios&arch=i386",
        math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256))
end
LUA
curl -sf "http://127.0.0.1:$PXF_PORT/ipxe?mac=02:50:46:00:00:01&platform=pcbios&arch=i386" > "$WWW/script.ipxe"
chmod a+r "$WWW/script.ipxe"
SCRIPT_BYTES=$(stat -c %s "$WWW/script.ipxe")
grep -q bench-00001 "$WWW/script.ipxe" || { echo "pxeforge did not render host bench-00001's script" >&2; exit 1; }

wrk_case() { # url [lua] → "req/s p99ms"
    local out
    out=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"${WRK_SECONDS}s" --latency ${2:+-s "$2"} "$1")
    echo "$out" >> "$TMP/wrk.log"
    echo "$out" | grep -q 'Non-2xx' && { echo "FAIL FAIL"; return; }
    local rps p99
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) sub(/ms$/,"",v); else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.2f", v}')
    echo "$rps $p99"
}
echo "== wrk: rendered /ipxe?mac= vs static" >&2
read -r r_rps r_p99 <<< "$(wrk_case "http://127.0.0.1:$PXF_PORT/ipxe" "$TMP/macs.lua")"
read -r s_rps s_p99 <<< "$(wrk_case "http://127.0.0.1:$PXF_PORT/assets/script.ipxe")"
read -r n_rps n_p99 <<< "$(wrk_case "http://127.0.0.1:$NGX_PORT/assets/script.ipxe")"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
{
    echo "# HTTP benchmark: pxeforge vs nginx (sendfile on), loopback"
    echo
    echo "Generated by \`bench/http/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), Linux $(uname -r), $(nginx -v 2>&1 | sed 's/nginx version: //'), pxeforge $("$PXEFORGE_BIN" --version | awk "{print \$2}") ($PXEFORGE_BIN)."
    echo "Clients (curl, wrk) run on the same machine and compete with the server for the CPUs."
    echo
    echo "## Large file (${SIZE_MB} MiB, page cache warm)"
    echo
    echo "| case | pxeforge MiB/s | nginx MiB/s | pxeforge/nginx | pxeforge peak RSS MiB | nginx peak RSS MiB (master+workers) |"
    echo "|---|---:|---:|---:|---:|---:|"
    cat "$TMP/rows.large"
    echo
    echo "## Small responses (wrk -t2 -c$WRK_CONNECTIONS -d${WRK_SECONDS}s --latency; ${SCRIPT_BYTES}-byte body)"
    echo
    echo "| server / endpoint | req/s | p99 ms | vs nginx static |"
    echo "|---|---:|---:|---:|"
    echo "| pxeforge \`/ipxe?mac=…\` rendered per request, $HOSTS hosts, a different MAC each request | $r_rps | $r_p99 | $(ratio "$r_rps" "$n_rps") |"
    echo "| pxeforge \`/assets/script.ipxe\` (static, same bytes) | $s_rps | $s_p99 | $(ratio "$s_rps" "$n_rps") |"
    echo "| nginx \`/assets/script.ipxe\` (static) | $n_rps | $n_p99 | 1.00 |"
} > "$RESULTS"
cat "$RESULTS"
