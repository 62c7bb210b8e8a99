#!/usr/bin/env bash
# Image builder benchmark: our native parts against the standard tools, on the same input.
#   1. hashing: `bench hash FILE` (sha2 crate, 1 MiB reads) vs `sha256sum FILE`
#   2. initramfs: `bench initramfs DIR OUT` (native cpio newc + gzip) vs `find . | cpio -o -H newc | gzip`
# Best of N runs each (page cache warm). Writes bench/imagebuild/RESULTS.md.
# Usage: bench/imagebuild/run.sh [runs]   (default 3; HASH_MIB=512 sets the hashed file size)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-3}
hash_mib=${HASH_MIB:-512}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target}
"$top/scripts/fetch-test-assets.sh"
(cd "$top" && cargo build -q --release -p pxeforge-imagebuilder --example bench --example build)
bench="$CARGO_TARGET_DIR/release/examples/bench"
builder="$CARGO_TARGET_DIR/release/examples/build"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# best-of-N wall time in milliseconds of a shell command
best_ms() {
  local best=999999999 i t0 t1 ms
  for ((i = 0; i < runs; i++)); do
    t0=$(date +%s%N)
    bash -c "$1" >/dev/null 2>&1
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    ((ms < best)) && best=$ms
  done
  echo "$best"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
mibs() { awk -v b="$1" -v ms="$2" 'BEGIN { if (ms == 0) print "n/a"; else printf "%.0f", b / 1048576 / (ms / 1000) }'; }

# 1. hashing
head -c $((hash_mib << 20)) /dev/urandom >"$work/blob"
cat "$work/blob" >/dev/null
ours_h=$(best_ms "'$bench' hash '$work/blob'")
ref_h=$(best_ms "sha256sum '$work/blob'")
[ "$("$bench" hash "$work/blob" | cut -d' ' -f1)" = "$(sha256sum "$work/blob" | cut -d' ' -f1)" ] || { echo "hash mismatch" >&2; exit 1; }

# 2. initramfs of a real tree: busybox + the Debian kernel's fs and net driver modules
kver=$(cat "$top/.cache/test-assets/kver")
tree="$work/tree"
mkdir -p "$tree/bin" "$tree/lib/modules/$kver/kernel/drivers"
cp "$top/.cache/test-assets/busybox" "$tree/bin/"
cp -a "$top/.cache/test-assets/lib/modules/$kver/kernel/fs" "$tree/lib/modules/$kver/kernel/"
cp -a "$top/.cache/test-assets/lib/modules/$kver/kernel/drivers/net" "$tree/lib/modules/$kver/kernel/drivers/"
tree_bytes=$(du -sb "$tree" | cut -f1)
tree_files=$(find "$tree" | wc -l)
ours_i=$(best_ms "'$bench' initramfs '$tree' '$work/ours.img' gzip")
ref_i=$(best_ms "cd '$tree' && find . | cpio -o -H newc 2>/dev/null | gzip > '$work/ref.img'")
ours_z=$(best_ms "'$bench' initramfs '$tree' '$work/ours.zst' zstd")
ours_size=$(stat -c %s "$work/ours.img")
ref_size=$(stat -c %s "$work/ref.img")
zst_size=$(stat -c %s "$work/ours.zst")
# both archives hold the same files (the reference also lists ".")
diff <(gzip -dc "$work/ours.img" | cpio -it 2>/dev/null | sort) <(gzip -dc "$work/ref.img" | cpio -it 2>/dev/null | sort) >/dev/null ||
  { echo "initramfs listings differ" >&2; exit 1; }

# 3. an unchanged build is skipped: the rescue recipe of the example site (kernel + initramfs)
"$builder" "$top" "$work/state" rescue qemu-uefi >/dev/null
skip_ms=$(best_ms "'$builder' '$top' '$work/state' rescue qemu-uefi")
"$builder" "$top" "$work/state" rescue qemu-uefi | grep -q '^skipped ' || { echo "second build not skipped" >&2; exit 1; }
full_ms=$(best_ms "'$builder' '$top' '$work/state' rescue qemu-uefi --force")

table=$(cat <<EOT
| task | ours | reference | ours / reference |
|---|---|---|---|
| sha256 of ${hash_mib} MiB (ms) | ${ours_h} ($(mibs $((hash_mib << 20)) "$ours_h") MiB/s) | ${ref_h} (\`sha256sum\`, $(mibs $((hash_mib << 20)) "$ref_h") MiB/s) | $(ratio "$ours_h" "$ref_h") |
| initramfs gzip of $((tree_bytes >> 20)) MiB / ${tree_files} entries (ms) | ${ours_i} | ${ref_i} (\`find . \| cpio -o -H newc \| gzip\`) | $(ratio "$ours_i" "$ref_i") |
| initramfs size (bytes) | ${ours_size} | ${ref_size} | $(ratio "$ours_size" "$ref_size") |
| initramfs zstd -9 (ours only): ms / bytes | ${ours_z} / ${zst_size} | | |
| \`images/rescue.toml\` unchanged, skipped (ms) | ${skip_ms} | ${full_ms} (forced rebuild) | $(ratio "$skip_ms" "$full_ms") |
EOT
)
echo "$table"
cat >"$top/bench/imagebuild/RESULTS.md" <<EOT
# Image builder benchmark

Command: \`bench/imagebuild/run.sh $runs\` (HASH_MIB=$hash_mib), best of $runs runs, page cache warm.
Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(nproc) cores, $(uname -r), shared with other jobs.
Ratios below 1 mean ours is faster (time) or smaller (size).

$table

Our initramfs is deterministic (sorted entries, fixed mtime, owners from the sources); the
reference archive carries the build host's owners, inode numbers and mtimes. Both use gzip level 6.
EOT
echo "wrote bench/imagebuild/RESULTS.md"
