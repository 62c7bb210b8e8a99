#!/usr/bin/env bash
# Site load and SIGHUP reload time at 1,000 and 10,000 hosts (Cobbler's sync took minutes past
# ~1,000 systems). A load validates everything and renders every script and kickstart of every
# host, so this is the whole cost of an edit. Usage: bench/reload/run.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
cargo build --release --bin pxeforge >/dev/null 2>&1
bin="$top/target/release/pxeforge"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
printf '| hosts | pxeforge check (s) | SIGHUP reload (ms, from the log) |\n|---:|---:|---:|\n'
for n in 1000 10000; do
  site="$work/site-$n"
  mkdir -p "$site"
  cp -r pxeforge.toml profiles templates kickstarts "$site/"
  mkdir -p "$site/hosts" "$site/images"
  python3 - "$site/hosts/generated.toml" "$n" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
profiles = ["qemu-bios", "qemu-uefi", "dell-r650", "hpe-dl380"]
with open(path, "w") as f:
    for i in range(n):
        mac = "02:%02x:%02x:%02x:%02x:%02x" % (i >> 32 & 255, i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255)
        f.write(f'[[host]]\nname = "node{i:05d}"\nmac = "{mac}"\nprofile = "{profiles[i % 4]}"\n')
        if i % 2:
            f.write(f'[host.network]\nmode = "static"\naddress = "10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255 or 1}/16"\ngateway = "10.0.0.1"\n')
        f.write("\n")
PY
  t0=$(date +%s.%N); "$bin" check --site "$site" >/dev/null; t1=$(date +%s.%N)
  log="$work/serve-$n.log"
  "$bin" serve --site "$site" --http 127.0.0.1:0 --no-tftp --state "$work/state-$n" >"$work/out-$n" 2>"$log" &
  pid=$!
  for _ in $(seq 600); do grep -q "pxeforge: ready" "$work/out-$n" 2>/dev/null && break; sleep 0.1; done
  kill -HUP "$pid"
  for _ in $(seq 300); do grep -q "site reloaded" "$log" && break; sleep 0.1; done
  ms=$(grep "site reloaded" "$log" | sed -E 's/.*ms=([0-9]+).*/\1/' | tail -1)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '| %d | %.2f | %s |\n' "$n" "$(python3 -c "print($t1 - $t0)")" "$ms"
done
