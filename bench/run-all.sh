#!/usr/bin/env bash
# Runs every benchmark under bench/ in turn (each builds what it needs), keeps going when one
# fails, and prints which ones passed. Usage: bench/run-all.sh [NAME...]  (default: all)
# Root is needed for the DHCP benchmark and for the DHCP stage of the fleet simulation.
set -uo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
if [ $# -gt 0 ]; then names=("$@"); else names=(http tftp dhcp imagebuild reload fleet abuse); fi
declare -a summary
for name in "${names[@]}"; do
    script=$BENCH/$name/run.sh
    if [ ! -x "$script" ]; then
        summary+=("$name: no $script")
        continue
    fi
    echo "################ bench/$name ################"
    start=$(date +%s)
    if "$script"; then status=ok; else status="FAILED (exit $?)"; fi
    summary+=("$name: $status in $(( $(date +%s) - start )) s")
done
echo "################ summary ################"
printf '%s\n' "${summary[@]}"
printf '%s\n' "${summary[@]}" | grep -qv ': ok in' && exit 1
exit 0
