#!/usr/bin/env bash
# Serves the example site (the repository root) on loopback: the README's "run" command.
# As root on a machine without Debian's ipxe package it installs it, so that TFTP has the iPXE
# binaries to hand out; as an ordinary user it just serves (TFTP then serves an empty root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/lib/ipxe/undionly.kpxe ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ipxe >/dev/null
fi
cargo build --release --bin pxeforge
./target/release/pxeforge check --site .
exec ./target/release/pxeforge serve --site . "$@"
