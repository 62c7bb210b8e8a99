//! Raw GPT disk: partition 1 an EFI system partition (FAT) holding the EFI stub kernel, the
//! initramfs and a `startup.nsh` that starts the kernel with the image's command line; partition 2
//! the ext4 root. `sgdisk` writes the partition table (fixed GUIDs), `mkfs.vfat`/`mcopy` the ESP
//! (fixed volume id, timestamps from SOURCE_DATE_EPOCH); the disk itself is assembled here so it is
//! hashed as it is written, and stays sparse.

use crate::error::BuildError;
use crate::ext4::uuid_from;
use crate::hashing::HashingWriter;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
/// FAT cannot store times before 1980; mtools gets at least this.
const FAT_EPOCH_MIN: u64 = 315_532_800 + 86_400;

pub struct DiskParts<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub root_ext4: &'a Path,
    pub kernel_args: &'a [String],
    pub esp_mib: u64,
    pub size_mib: u64,
}

/// The `startup.nsh` the UEFI shell runs: the kernel as an EFI application with its command line.
pub fn startup_nsh(kernel_args: &[String], root_partuuid: &str) -> String {
    let mut line = String::from("\\vmlinuz.efi");
    for a in kernel_args {
        line.push(' ');
        line.push_str(a);
    }
    line.push_str(&format!(
        " root=PARTUUID={root_partuuid} initrd=\\initramfs.img"
    ));
    format!("@echo -off\r\nfs0:\r\n{line}\r\n")
}

pub fn root_partuuid(id: &str) -> String {
    uuid_from(id, "root-partition")
}

/// Builds the raw disk into `out`; returns (size, sha256).
pub fn build(
    parts: &DiskParts,
    id: &str,
    mtime: u64,
    work: &Path,
    out: &Path,
) -> Result<(u64, String), BuildError> {
    let len = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(BuildError::io(p))
    };
    let kernel_len = len(parts.kernel)?;
    let initrd_len = len(parts.initramfs)?;
    let root_len = len(parts.root_ext4)?;
    // FAT32 (what the UEFI specification asks of an ESP) needs at least 65525 clusters: 64 MiB minimum.
    let esp_mib = if parts.esp_mib > 0 {
        parts.esp_mib
    } else {
        (kernel_len + initrd_len).div_ceil(MIB) + 16
    }
    .max(64);
    let root_mib = root_len.div_ceil(MIB);
    let min_mib = 1 + esp_mib + root_mib + 1;
    let total_mib = parts.size_mib.max(min_mib);

    // ESP
    let esp = work.join("esp.img");
    let _ = std::fs::remove_file(&esp);
    let fat_time = mtime.max(FAT_EPOCH_MIN).to_string();
    let vol_id = &uuid_from(id, "esp-volume-id").replace('-', "")[..8];
    crate::tools::run(
        crate::tools::cmd("mkfs.vfat")
            .args(["-C", "--invariant", "-F", "32", "-n", "ESP", "-i", vol_id])
            .arg(&esp)
            .arg((esp_mib * 1024).to_string())
            .env("SOURCE_DATE_EPOCH", &fat_time),
    )?;
    let nsh = work.join("startup.nsh");
    let partuuid = root_partuuid(id);
    std::fs::write(&nsh, startup_nsh(parts.kernel_args, &partuuid))
        .map_err(BuildError::io(&nsh))?;
    let files: [(&Path, &str); 3] = [
        (parts.kernel, "::/vmlinuz.efi"),
        (parts.initramfs, "::/initramfs.img"),
        (&nsh, "::/startup.nsh"),
    ];
    for (src, dst) in files {
        crate::tools::run(
            crate::tools::cmd("mcopy")
                .arg("-i")
                .arg(&esp)
                .arg(src)
                .arg(dst)
                .env("SOURCE_DATE_EPOCH", &fat_time)
                .env("MTOOLS_SKIP_CHECK", "1"),
        )?;
    }

    // Partition table on a sparse file of the final size.
    let gpt = work.join("gpt.img");
    let f = File::create(&gpt).map_err(BuildError::io(&gpt))?;
    f.set_len(total_mib * MIB).map_err(BuildError::io(&gpt))?;
    drop(f);
    let esp_start = 2048u64; // sectors
    let root_start = esp_start + esp_mib * 2048;
    crate::tools::run(
        crate::tools::cmd("sgdisk")
            .arg(format!("--disk-guid={}", uuid_from(id, "disk-guid")))
            .arg(format!("--new=1:{esp_start}:+{esp_mib}M"))
            .arg("--typecode=1:ef00")
            .arg("--change-name=1:ESP")
            .arg(format!(
                "--partition-guid=1:{}",
                uuid_from(id, "esp-partition")
            ))
            .arg(format!("--new=2:{root_start}:+{root_mib}M"))
            .arg("--typecode=2:8304")
            .arg("--change-name=2:root")
            .arg(format!("--partition-guid=2:{partuuid}"))
            .arg(&gpt),
    )?;

    // Assemble: table regions from gpt.img, partitions from their images.
    let regions: Vec<(u64, u64, PathBuf)> = vec![
        (esp_start * 512, esp_mib * MIB, esp.clone()),
        (
            root_start * 512,
            root_mib * MIB,
            parts.root_ext4.to_path_buf(),
        ),
    ];
    let file = File::create(out).map_err(BuildError::io(out))?;
    let mut w = HashingWriter::new(SparseWriter { f: file, pos: 0 });
    let mut gpt_f = File::open(&gpt).map_err(BuildError::io(&gpt))?;
    let mut pos = 0u64;
    for (start, size, src) in &regions {
        copy_range(&mut gpt_f, pos, start - pos, &mut w).map_err(BuildError::io(&gpt))?;
        let mut s = File::open(src).map_err(BuildError::io(src))?;
        let n = copy_range(&mut s, 0, *size, &mut w).map_err(BuildError::io(src))?;
        debug_assert_eq!(n, *size);
        pos = start + size;
    }
    copy_range(&mut gpt_f, pos, total_mib * MIB - pos, &mut w).map_err(BuildError::io(&gpt))?;
    let (sw, n, sha) = w.finish();
    sw.finish().map_err(BuildError::io(out))?;
    Ok((n, sha))
}

/// Copies `len` bytes from `offset` of `src` (zero-filled past its end).
fn copy_range(src: &mut File, offset: u64, len: u64, w: &mut dyn Write) -> std::io::Result<u64> {
    src.seek(SeekFrom::Start(offset))?;
    let mut got = std::io::copy(&mut Read::by_ref(src).take(len), w)?;
    let zeros = vec![0u8; MIB as usize];
    while got < len {
        let k = (len - got).min(MIB) as usize;
        w.write_all(&zeros[..k])?;
        got += k as u64;
    }
    Ok(got)
}

/// Skips over all-zero blocks (holes) instead of writing them.
struct SparseWriter {
    f: File,
    pos: u64,
}

impl SparseWriter {
    fn finish(self) -> std::io::Result<()> {
        self.f.set_len(self.pos)?;
        self.f.sync_all()
    }
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.iter().all(|&b| b == 0) {
            self.f.seek(SeekFrom::Current(buf.len() as i64))?;
        } else {
            self.f.write_all(buf)?;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.f.flush()
    }
}
