#!/usr/bin/env bash
# pxeforge vs nginx (sendfile on) on loopback, side by side in one run:
#   large file: a 256 MiB file at 1, 16 and 256 concurrent downloads (+ 16 concurrent Range GETs):
#               total throughput and the peak RSS (VmHWM) of each server during that case;
#   small:      wrk against /ipxe?mac=... (a site of 10,000 hosts, a different MAC per request;
#               rendered at each host's first request, then served from the script cache) vs nginx serving a static file of the same size.
# Writes bench/http/RESULTS.md. Usage: bench/http/run.sh
# Env: PXEFORGE_BIN (skip the build), SIZE_MB (default 256), CONCURRENCY ("1 16 256"),
#      WRK_SECONDS (10), WRK_CONNECTIONS (64), HOSTS (10000), REPEAT (3: best of, for
#      cases under 100 downloads and for wrk), RESULTS (output file).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SIZE_MB=${SIZE_MB:-256}
CONCURRENCY=${CONCURRENCY:-"1 16 256"}
WRK_SECONDS=${WRK_SECONDS:-10}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
HOSTS=${HOSTS:-10000}
REPEAT=${REPEAT:-3}
RESULTS=${RESULTS:-$ROOT/bench/http/RESULTS.md}

for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench/http: $tool is required (apt-get install $tool)" >&2; exit 2; }
done

CMDLINE="${PXEFORGE_BIN:+PXEFORGE_BIN=$PXEFORGE_BIN }bench/http/run.sh"
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
# The load generator is one client on loopback: exempt it from the per-client caps. Builds
# older than [limits] refuse the unknown table, so it is added only for builds that know it
# (those that have `pxeforge reinstall`).
if "$PXEFORGE_BIN" reinstall --help >/dev/null 2>&1; then
    printf '\n[limits]\nexempt = ["127.0.0.0/8"]\n' >> "$SITE/pxeforge.toml"
fi
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
# CPU seconds (user+sys) used so far by a server's processes: a measure that survives a busy machine.
cpu_secs() {
    local t=0 v
    for p in $(server_pids "$1"); do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0); t=$((t + ${v:-0}))
    done
    awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

# Downloads: N concurrent curls of the whole file (or of N distinct ranges). Prints "MiB/s peakMiB".
download_once() { # server n mode → "MiB/s peakMiB cpu-s/GiB"
    local server=$1 n=$2 mode=$3 port url t0 t1 got want c0 c1
    port=$(port_of "$server"); url="http://127.0.0.1:$port/assets/big.bin"
    curl -s -o /dev/null "$url" -r 0-0   # connection warm-up; the file is in the page cache already
    reset_peak "$server"
    c0=$(cpu_secs "$server")
    t0=$(now)
    if [ "$mode" = full ]; then
        got=$(seq 1 "$n" | xargs -P "$n" -I{} curl -s -o /dev/null -w '%{size_download}\n' "$url" | awk '{s+=$1} END {printf "%.0f\n", s}')
        want=$((n * SIZE_MB * 1024 * 1024))
    else
        local slice=$((SIZE_MB * 1024 * 1024 / n))
        got=$(seq 0 $((n - 1)) | xargs -P "$n" -I{} sh -c "curl -s -o /dev/null -w '%{size_download}\n' -r \$(({} * $slice))-\$(({} * $slice + $slice - 1)) $url" | awk '{s+=$1} END {printf "%.0f\n", s}')
        want=$((n * slice))
    fi
    t1=$(now)
    c1=$(cpu_secs "$server")
    if [ "$got" != "$want" ]; then echo "FAIL($got/$want) $(peak_mib "$server") -"; return; fi
    awk -v b="$got" -v a="$t0" -v z="$t1" -v c0="$c0" -v c1="$c1" -v p="$(peak_mib "$server")" \
        'BEGIN { printf "%.0f %s %.2f\n", b / 1048576 / (z - a), p, (c1 - c0) / (b / 1073741824) }'
}
# Best throughput of REPEAT runs (other work on the machine only ever slows a run down), the
# highest peak RSS and the lowest CPU per GiB. The two servers alternate run by run, so that a
# burst of other work on the machine hits both alike; cases of 100+ downloads run once, and the
# single download (about a tenth of a second) runs three times as often.
merge_best() { # previous-best new-run → best
    printf '%s\n%s\n' "$1" "$2" | awk 'NF == 3 {
        if ($1 ~ /FAIL/) { fail = $0; next }
        if ($1 > t) t = $1; if ($2 > m) m = $2; if (c == "" || $3 < c) c = $3 }
        END { if (fail != "") print fail; else printf "%s %s %s\n", t, m, c }'
}
download_pair() { # n mode → two lines: pxeforge best, nginx best
    local reps=$REPEAT pbest="" nbest="" r
    [ "$1" -ge 100 ] && reps=1
    [ "$1" -eq 1 ] && reps=$((REPEAT * 3))
    for r in $(seq 1 "$reps"); do
        pbest=$(merge_best "$pbest" "$(download_once pxeforge "$1" "$2")")
        nbest=$(merge_best "$nbest" "$(download_once nginx "$1" "$2")")
    done
    echo "$pbest"
    echo "$nbest"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
cat /dev/null > "$TMP/rows.large"
cat "$WWW/big.bin" > /dev/null
for n in $CONCURRENCY; do
    echo "== $n concurrent downloads of ${SIZE_MB} MiB" >&2
    { read -r pt pm pc; read -r nt nm nc; } <<< "$(download_pair "$n" full)"
    echo "| $n × full GET | $pt | $nt | $(ratio "$pt" "$nt") | $pm | $nm | $pc | $nc |" >> "$TMP/rows.large"
done
echo "== 16 concurrent Range GETs" >&2
{ read -r pt pm pc; read -r nt nm nc; } <<< "$(download_pair 16 range)"
echo "| 16 × Range GET (1/16 each) | $pt | $nt | $(ratio "$pt" "$nt") | $pm | $nm | $pc | $nc |" >> "$TMP/rows.large"

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

wrk_case() { # server url [lua] → "req/s p99ms server-CPU-µs-per-request"
    local out c0 c1
    c0=$(cpu_secs "$1")
    out=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"${WRK_SECONDS}s" --latency ${3:+-s "$3"} "$2")
    c1=$(cpu_secs "$1")
    echo "$out" >> "$TMP/wrk.log"
    echo "$out" | grep -q 'Non-2xx' && { echo "FAIL FAIL FAIL"; return; }
    local rps p99 reqs
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    p99=$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) sub(/ms$/,"",v); else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.2f", v}')
    echo "$rps $p99 $(awk -v a="$c0" -v b="$c1" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / n; else print "-" }')"
}
echo "== wrk: rendered /ipxe?mac= vs static" >&2
# Rounds alternate the three targets; each keeps its best round (req/s, with that round's p99).
best_of() { printf '%s\n%s\n' "$1" "$2" | awk 'NF == 3 { if ($1 == "FAIL") { f = 1 } else if ($1 + 0 > b) { b = $1; p = $2; c = $3 } } END { if (f) print "FAIL FAIL FAIL"; else print b, p, c }'; }
r_best=""; s_best=""; n_best=""
: > "$TMP/rows.rounds"
for round in $(seq 1 "$REPEAT"); do
    r=$(wrk_case pxeforge "http://127.0.0.1:$PXF_PORT/ipxe" "$TMP/macs.lua")
    s=$(wrk_case pxeforge "http://127.0.0.1:$PXF_PORT/assets/script.ipxe")
    n=$(wrk_case nginx "http://127.0.0.1:$NGX_PORT/assets/script.ipxe")
    r_best=$(best_of "$r_best" "$r"); s_best=$(best_of "$s_best" "$s"); n_best=$(best_of "$n_best" "$n")
    # Each round's own ratios too: the three cases of one round ran within 30 s of each other.
    read -r rr _ rc <<< "$r"; read -r sr _ sc <<< "$s"; read -r nr _ nc <<< "$n"
    echo "| $round | $rr | $sr | $nr | $(ratio "$rr" "$nr") | $(ratio "$sr" "$nr") | $rc | $sc | $nc |" >> "$TMP/rows.rounds"
done
read -r r_rps r_p99 _ <<< "$r_best"
read -r s_rps s_p99 _ <<< "$s_best"
read -r n_rps n_p99 _ <<< "$n_best"

{
    echo "# HTTP benchmark: pxeforge vs nginx (sendfile on), loopback"
    echo
    echo "Generated by \`$CMDLINE\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), Linux $(uname -r), $(nginx -v 2>&1 | sed 's/nginx version: //'), pxeforge $("$PXEFORGE_BIN" --version | awk "{print \$2}") ($PXEFORGE_BIN)."
    echo "Clients (curl, wrk) run on the same machine and compete with the server for the CPUs;"
    echo "load average at the end of the run: $(cut -d' ' -f1-3 /proc/loadavg). Throughput is the best of $REPEAT runs"
    echo "(one run for 100+ downloads, $((REPEAT * 3)) for the single download), the two servers alternating run by run; CPU s/GiB (user+sys of the server's processes per GiB sent) is"
    echo "the figure least disturbed by other work on the machine."
    echo
    echo "## Large file (${SIZE_MB} MiB, page cache warm)"
    echo
    echo "| case | pxeforge MiB/s | nginx MiB/s | pxeforge/nginx | pxeforge peak RSS MiB | nginx peak RSS MiB (master+workers) | pxeforge CPU s/GiB | nginx CPU s/GiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    cat "$TMP/rows.large"
    echo
    echo "## Small responses (wrk -t2 -c$WRK_CONNECTIONS -d${WRK_SECONDS}s --latency; ${SCRIPT_BYTES}-byte body)"
    echo
    echo "| server / endpoint | req/s | p99 ms | vs nginx static |"
    echo "|---|---:|---:|---:|"
    echo "| pxeforge \`/ipxe?mac=…\`, $HOSTS hosts (installed: local-boot script), a different MAC each request; rendered at a host's first request, then kept in memory (server/src/script_cache.rs) | $r_rps | $r_p99 | $(ratio "$r_rps" "$n_rps") |"
    echo "| pxeforge \`/assets/script.ipxe\` (static, same bytes) | $s_rps | $s_p99 | $(ratio "$s_rps" "$n_rps") |"
    echo "| nginx \`/assets/script.ipxe\` (static) | $n_rps | $n_p99 | 1.00 |"
    echo
    echo "Round by round (req/s, and each server's CPU time (user+sys) per request in µs; each round"
    echo "runs the three cases back to back; the CPU per request moves least with the machine's speed):"
    echo
    echo "| round | rendered | pxeforge static | nginx static | rendered / nginx | static / nginx | rendered µs/req | pxeforge static µs/req | nginx static µs/req |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    cat "$TMP/rows.rounds"
} > "$RESULTS"
cat "$RESULTS"
