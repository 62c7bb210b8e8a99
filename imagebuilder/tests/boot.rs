//! Real images booted in QEMU (TCG): the initramfs by direct kernel boot, the disk under OVMF.
//! The two boots are serialized: the machine is shared.

mod common;
use common::*;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

static QEMU: Mutex<()> = Mutex::new(());

const PROFILE: &str =
    "arch = \"x86_64\"\nfirmware = \"both\"\nconsole = \"ttyS0\"\nkernel_args = [\"loglevel=4\"]\ndisk = \"/dev/vda\"\n";

#[test]
fn initramfs_boots_by_direct_kernel_boot() {
    let Some(_assets) = assets() else { return };
    let site = Site::new();
    let profile = site.profile("vm", PROFILE);
    // The marker is computed at run time so it cannot appear in the kernel's own log by accident.
    let script = "echo PXF-INITRAMFS-$((6*7)) $(stat -c %t:%T /dev/console)";
    site.write(
        "images/live.toml",
        busybox_recipe(
            "vm",
            "\"kernel\", \"initramfs\"",
            script,
            "[initramfs]\ncompression = \"zstd\"\n",
        ),
    );
    let out = site.build("live", &profile, false).unwrap();
    let _g = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let k = out.dir.join("vmlinuz");
    let i = out.dir.join("initramfs.img");
    let (ok, log) = qemu_until(
        &[
            "-kernel",
            k.to_str().unwrap(),
            "-initrd",
            i.to_str().unwrap(),
            "-append",
            "console=ttyS0 panic=-1",
        ],
        "PXF-INITRAMFS-42 5:1",
        Duration::from_secs(120),
    );
    assert!(ok, "no marker on the serial console:\n{log}");
}

fn ovmf() -> Option<(&'static str, &'static str)> {
    [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ]
    .into_iter()
    .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
}

#[test]
fn disk_boots_under_ovmf_and_mounts_its_ext4_root() {
    let Some(assets) = assets() else { return };
    let Some((code, vars)) = ovmf() else {
        pxeforge_tests::skip(format_args!("no OVMF firmware (Debian package ovmf)"));
        return;
    };
    let site = Site::new();
    let profile = site.profile("vm", PROFILE);
    let kver = kver(&assets);
    // virtio-blk and ext4 are modules in Debian's kernel: load them in dependency order, mount
    // the disk's root partition and print what the ext4 image says about a file owned by 1000:1000.
    let mods = [
        "drivers/virtio/virtio_ring",
        "drivers/virtio/virtio",
        "drivers/virtio/virtio_pci_modern_dev",
        "drivers/virtio/virtio_pci_legacy_dev",
        "drivers/virtio/virtio_pci",
        "drivers/block/virtio_blk",
        "lib/crc16",
        "fs/mbcache",
        "fs/jbd2/jbd2",
        "crypto/crc32c_generic",
        "fs/ext4/ext4",
    ];
    let mut extra = String::new();
    let mut script = String::new();
    for m in mods {
        let name = m.rsplit('/').next().unwrap();
        extra.push_str(&format!(
            "[[file]]\npath = \"/m/{name}.ko\"\nsource = \".cache/test-assets/lib/modules/{kver}/kernel/{m}.ko\"\n\n"
        ));
        script.push_str(&format!("insmod /m/{name}.ko\n"));
    }
    extra.push_str(
        "[[file]]\npath = \"/etc/owned\"\ncontents = \"x\"\nmode = 0o640\nuid = 1000\ngid = 1000\n",
    );
    script.push_str(
        "for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda2 ] && break; sleep 1; done\n\
         mount -t ext4 -o ro /dev/vda2 /mnt && echo PXF-DISK-$((6*7)) $(stat -c %u:%g:%a /mnt/etc/owned) $(stat -c %t:%T /mnt/dev/console)",
    );
    site.write(
        "images/disk.toml",
        busybox_recipe("vm", "\"qcow2\"", &script, &extra),
    );
    let out = site.build("disk", &profile, false).unwrap();
    assert_eq!(
        out.outputs
            .iter()
            .map(|o| o.file.as_str())
            .collect::<Vec<_>>(),
        ["disk.qcow2"]
    );

    let vars_copy = site.dir().join("vars.fd");
    std::fs::copy(vars, &vars_copy).unwrap();
    let _g = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let code_arg = format!("if=pflash,format=raw,readonly=on,file={code}");
    let vars_arg = format!("if=pflash,format=raw,file={}", vars_copy.display());
    let disk_arg = format!(
        "file={},format=qcow2,if=virtio,snapshot=on",
        out.dir.join("disk.qcow2").display()
    );
    let (ok, log) = qemu_until(
        &[
            "-drive", &code_arg, "-drive", &vars_arg, "-drive", &disk_arg,
        ],
        "PXF-DISK-42 1000:1000:640 5:1",
        Duration::from_secs(240),
    );
    assert!(ok, "no marker on the serial console:\n{log}");
}
