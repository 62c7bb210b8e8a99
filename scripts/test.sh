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
scripts/fetch-test-assets.sh
cargo build --workspace --bins --examples
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
