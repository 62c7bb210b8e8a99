//! What a VM boot needs on this machine, and the Debian package that provides each missing piece.

use std::path::{Path, PathBuf};

use super::Firmware;

/// One missing prerequisite and how to get it (`apt-get install PKG`, or what else to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    pub package: String,
}

/// What was found on the machine; gathered by [`probe`], judged by [`missing`].
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub root: bool,
    pub ip: bool,
    pub qemu: bool,
    pub tun: bool,
    pub dnsmasq: bool,
    pub bios_rom: Option<PathBuf>,
    pub ovmf: Option<(PathBuf, PathBuf)>,
}

pub const BIOS_ROM: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";
/// OVMF code and its variable store template, newest layout first.
pub const OVMF_PAIRS: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// Looks at the machine. No side effects.
pub fn probe() -> Facts {
    Facts {
        root: nix::unistd::geteuid().is_root(),
        ip: in_path("ip"),
        qemu: in_path("qemu-system-x86_64"),
        tun: Path::new("/dev/net/tun").exists(),
        dnsmasq: in_path("dnsmasq"),
        bios_rom: Some(PathBuf::from(BIOS_ROM)).filter(|p| p.is_file()),
        ovmf: OVMF_PAIRS
            .iter()
            .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
            .find(|(c, v)| c.is_file() && v.is_file()),
    }
}

/// Every missing piece for a boot with this firmware, with or without dnsmasq beside us.
pub fn missing(f: &Facts, firmware: Firmware, dnsmasq: bool) -> Vec<Missing> {
    let mut out = Vec::new();
    // `how`: a Debian package, or (after '!') what else to do.
    let mut need = |ok: bool, what: &str, how: &str| {
        if !ok {
            let package = match how.strip_prefix('!') {
                Some(other) => other.to_string(),
                None => format!("apt-get install {how}"),
            };
            out.push(Missing {
                what: what.to_string(),
                package,
            });
        }
    };
    need(
        f.root,
        "root (network namespaces, taps, ports 67/69)",
        "!run it as root",
    );
    need(f.ip, "the `ip` command", "iproute2");
    need(f.qemu, "qemu-system-x86_64", "qemu-system-x86");
    need(f.tun, "/dev/net/tun", "!load the tun module (modprobe tun)");
    match firmware {
        Firmware::Bios => need(f.bios_rom.is_some(), BIOS_ROM, "ipxe-qemu"),
        Firmware::Uefi => need(
            f.ovmf.is_some(),
            "/usr/share/OVMF/OVMF_CODE_4M.fd (or OVMF_CODE.fd) with its OVMF_VARS",
            "ovmf",
        ),
    }
    if dnsmasq {
        need(
            f.dnsmasq,
            "dnsmasq (the site's own DHCP server in proxy mode)",
            "dnsmasq-base",
        );
    }
    out
}

fn in_path(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .any(|d| d.join(cmd).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Facts {
        Facts {
            root: true,
            ip: true,
            qemu: true,
            tun: true,
            dnsmasq: true,
            bios_rom: Some(BIOS_ROM.into()),
            ovmf: Some(("c".into(), "v".into())),
        }
    }

    #[test]
    fn nothing_missing_when_all_there() {
        assert!(missing(&all(), Firmware::Bios, true).is_empty());
        assert!(missing(&all(), Firmware::Uefi, true).is_empty());
    }

    #[test]
    fn names_the_package_of_each_missing_piece() {
        let f = Facts {
            qemu: false,
            ovmf: None,
            dnsmasq: false,
            ..all()
        };
        let m = missing(&f, Firmware::Uefi, true);
        let pkgs: Vec<_> = m.iter().map(|m| m.package.as_str()).collect();
        assert_eq!(
            pkgs,
            [
                "apt-get install qemu-system-x86",
                "apt-get install ovmf",
                "apt-get install dnsmasq-base"
            ]
        );
        let nonroot = missing(
            &Facts {
                root: false,
                ..all()
            },
            Firmware::Bios,
            false,
        );
        assert_eq!(nonroot[0].package, "run it as root");
        // BIOS boots do not need OVMF; reservation mode does not need dnsmasq.
        assert_eq!(missing(&f, Firmware::Bios, false).len(), 1);
    }
}
