//! The QEMU command line of a network-booting test VM.

use super::Firmware;
use std::path::{Path, PathBuf};

pub struct VmSpec<'a> {
    pub firmware: Firmware,
    pub mac: &'a str,
    pub tap: &'a str,
    pub memory_mib: u64,
    pub disk: &'a Path,
    /// SeaBIOS: the NIC's iPXE option ROM.
    pub bios_rom: &'a Path,
    /// OVMF: code (read-only) and this VM's own copy of the variable store.
    pub ovmf: Option<(PathBuf, PathBuf)>,
    /// Let a guest reboot restart the VM (network first, then the disk) instead of ending QEMU.
    pub reboot: bool,
}

/// Arguments after `qemu-system-x86_64`. The serial console goes to stdout, which the caller
/// reads line by line; `-nographic` also makes SeaBIOS mirror its screen (and iPXE's) there.
/// The NIC is the first boot device. Without `reboot`, a guest reboot ends QEMU
/// (`-no-reboot`); with it the VM starts again and boots from the network again, then from its
/// disk (`bootindex=2`), as a machine with "network, then disk" in its boot order does.
pub fn args(vm: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg", // KVM opens but hangs on these machines.
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !vm.reboot {
        a.push("-no-reboot".into());
    }
    a.push("-m".into());
    a.push(vm.memory_mib.to_string());
    a.push("-netdev".into());
    a.push(format!(
        "tap,id=n0,ifname={},script=no,downscript=no",
        vm.tap
    ));
    let nic = match vm.firmware {
        // Debian's pxe-virtio.rom declares the modern virtio-net device id (1af4:1041):
        // SeaBIOS only runs it for a modern-only device.
        Firmware::Bios => format!(
            "virtio-net-pci,netdev=n0,mac={},disable-legacy=on,romfile={},bootindex=1",
            vm.mac,
            vm.bios_rom.display()
        ),
        // No option ROM: the firmware's own PXE client does the first stage.
        Firmware::Uefi => format!(
            "virtio-net-pci,netdev=n0,mac={},romfile=,bootindex=1",
            vm.mac
        ),
    };
    if let (Firmware::Uefi, Some((code, vars))) = (vm.firmware, &vm.ovmf) {
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ));
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    a.push("-device".into());
    a.push(nic);
    if vm.reboot {
        a.push("-drive".into());
        a.push(format!(
            "file={},format=raw,if=none,id=d0",
            vm.disk.display()
        ));
        a.push("-device".into());
        a.push("virtio-blk-pci,drive=d0,bootindex=2".into());
    } else {
        a.push("-drive".into());
        a.push(format!("file={},format=raw,if=virtio", vm.disk.display()));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bios_uses_the_ipxe_rom_and_uefi_the_firmware_pxe() {
        let disk = PathBuf::from("/tmp/d.raw");
        let rom = PathBuf::from("/usr/lib/ipxe/qemu/pxe-virtio.rom");
        let mut vm = VmSpec {
            firmware: Firmware::Bios,
            mac: "52:54:00:00:10:01",
            tap: "tap0",
            memory_mib: 1024,
            disk: &disk,
            bios_rom: &rom,
            ovmf: None,
            reboot: false,
        };
        let a = args(&vm).join(" ");
        assert!(a.contains("-accel tcg"));
        assert!(a.contains("-no-reboot"));
        assert!(a.contains("file=/tmp/d.raw,format=raw,if=virtio"));
        assert!(a.contains(
            "mac=52:54:00:00:10:01,disable-legacy=on,romfile=/usr/lib/ipxe/qemu/pxe-virtio.rom"
        ));
        assert!(!a.contains("pflash"));
        vm.firmware = Firmware::Uefi;
        vm.ovmf = Some(("/c.fd".into(), "/v.fd".into()));
        let a = args(&vm).join(" ");
        assert!(a.contains("romfile=,"));
        assert!(a.contains("readonly=on,file=/c.fd"));
        assert!(a.contains("if=pflash,format=raw,file=/v.fd"));
    }

    #[test]
    fn a_rebooting_vm_boots_the_network_then_its_disk() {
        let disk = PathBuf::from("/tmp/d.raw");
        let rom = PathBuf::from("/usr/lib/ipxe/qemu/pxe-virtio.rom");
        let vm = VmSpec {
            firmware: Firmware::Bios,
            mac: "52:54:00:00:10:01",
            tap: "tap0",
            memory_mib: 1024,
            disk: &disk,
            bios_rom: &rom,
            ovmf: None,
            reboot: true,
        };
        let a = args(&vm);
        assert!(!a.iter().any(|x| x == "-no-reboot"), "{a:?}");
        let a = a.join(" ");
        assert!(a.contains("bootindex=1"), "{a}");
        assert!(
            a.contains("file=/tmp/d.raw,format=raw,if=none,id=d0"),
            "{a}"
        );
        assert!(a.contains("virtio-blk-pci,drive=d0,bootindex=2"), "{a}");
    }
}
