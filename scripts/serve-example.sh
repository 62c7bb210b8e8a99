#!/usr/bin/env bash
# Serves the example site (the repository root) on loopback: the README's "run" command.
# As root on a machine without Debian's ipxe package it installs it, so that TFTP has the iPXE
# binaries to hand out; as an ordinary user it just serves (`check` then reports the missing boot
# files, and TFTP serves an empty loaders store until `pxeforge loaders sync`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/lib/ipxe/undionly.kpxe ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ipxe >/dev/null
fi
cargo build --release --bin pxeforge
# A site that does not load stops serve itself; missing boot files only stop check.
./target/release/pxeforge check --site . || echo "serve-example: check reported the errors above; serving anyway" >&2
exec ./target/release/pxeforge serve --site . "$@"
