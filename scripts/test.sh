#!/usr/bin/env bash
# The test command: installs what the tests need (Debian and PyPI packages, the test kernel and
# busybox), builds pxeforge, and runs every test. Run as root: the DHCP and VM tests create network
# namespaces (as another user they print SKIP and the rest still runs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  scripts/install-deps.sh
else
  echo "test.sh: not root: not installing packages; root-only tests will be skipped" >&2
fi
# A clean build with its test binaries takes about 2 GiB under target/ (see the profiles in
# Cargo.toml), the test assets and images a few hundred MiB more: say so up front rather than
# fail deep inside a linker with "No space left on device".
avail_mib=$(df -Pm . | awk 'NR == 2 { print $4 }')
if [ "${avail_mib:-0}" -lt 3072 ]; then
  echo "test.sh: warning: only ${avail_mib} MiB free under $PWD; a clean build and the tests need about 3 GiB" >&2
fi
scripts/fetch-test-assets.sh
cargo build --workspace --bins --examples
# Tests that cannot run here (not root, a tool missing) record why in this file; the harness
# hides a passing test's output, so the list is printed at the end instead.
export PXEFORGE_SKIP_LOG="$PWD/target/skipped-tests.log"
rm -f "$PXEFORGE_SKIP_LOG"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi
if [ -s "$PXEFORGE_SKIP_LOG" ]; then
  echo
  echo "Skipped (could not run here; they did not pass):"
  sort -u "$PXEFORGE_SKIP_LOG" | sed 's/^/  /'
fi
exit "$status"
