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
}

/// Arguments after `qemu-system-x86_64`. The serial console goes to stdout, which the caller
/// reads line by line; `-nographic` also makes SeaBIOS mirror its screen (and iPXE's) there.
pub fn args(vm: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg", // KVM opens but hangs on these machines.
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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
    a.push("-drive".into());
    a.push(format!("file={},format=raw,if=virtio", vm.disk.display()));
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
        };
        let a = args(&vm).join(" ");
        assert!(a.contains("-accel tcg"));
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
}
