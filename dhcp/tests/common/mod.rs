//! Test helpers: the captured client packets and surgery on their options.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command};

use pxeforge_dhcp::{BootFiles, DhcpSite, HostEntry, Mac, Pool};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// Vectors extracted from ../shared/captures (see tests/vectors/README.md).
pub fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(format!("{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub const ALL_VECTORS: &[&str] = &[
    "bios-ipxe-discover",
    "bios-ipxe-request",
    "uefi-ipxe-discover",
    "uefi-ipxe-request",
    "ovmf-pxe-discover",
    "ovmf-pxe-request",
    "ovmf-http-discover",
];

/// (offset of code byte, length) of each top-level option.
fn option_spans(p: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut i = 240;
    while i < p.len() {
        match p[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = p[i + 1] as usize;
                out.push((i, code, len));
                i += 2 + len;
            }
        }
    }
    out
}

pub fn remove_option(p: &mut Vec<u8>, code: u8) {
    for (at, c, len) in option_spans(p).into_iter().rev() {
        if c == code {
            p.drain(at..at + 2 + len);
        }
    }
}

/// Replaces (or adds, before the end option) one option.
pub fn set_option(p: &mut Vec<u8>, code: u8, value: &[u8]) {
    remove_option(p, code);
    let end = option_spans(p)
        .last()
        .map(|&(at, _, len)| at + 2 + len)
        .unwrap_or(240);
    assert_eq!(p[end], 255, "options must end right after the last option");
    let mut opt = vec![code, value.len() as u8];
    opt.extend_from_slice(value);
    p.splice(end..end, opt);
}

pub fn with_arch(mut p: Vec<u8>, arch: u16, class: &str) -> Vec<u8> {
    set_option(&mut p, 93, &arch.to_be_bytes());
    set_option(
        &mut p,
        60,
        format!("{class}:Arch:{arch:05}:UNDI:003000").as_bytes(),
    );
    p
}

pub fn set_ip(p: &mut [u8], field_offset: usize, ip: Ipv4Addr) {
    p[field_offset..field_offset + 4].copy_from_slice(&ip.octets());
}
pub const CIADDR: usize = 12;
pub const GIADDR: usize = 24;

pub fn set_msg_type(p: &mut Vec<u8>, t: u8) {
    set_option(p, 53, &[t]);
}

pub fn set_mac(p: &mut [u8], mac: Mac) {
    p[28..34].copy_from_slice(&mac.0);
}

/// A plain (non-PXE) DHCP client's packet, as an OS would send it.
pub fn plain_client(mac: Mac, msg: u8) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    p[28..34].copy_from_slice(&mac.0);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, msg, 55, 3, 1, 3, 6, 255]);
    p
}

pub fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

pub fn host(name: &str, install: bool, address: Option<Ipv4Addr>) -> HostEntry {
    HostEntry {
        name: name.into(),
        install,
        address,
        prefix: 24,
        gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)],
        domain: Some("lab.example".into()),
    }
}

pub fn site(pool: bool) -> DhcpSite {
    let mut hosts = HashMap::new();
    // The captured clients: 52:54:00:aa:00:01 (SeaBIOS iPXE), :02 (OVMF iPXE), :03 (OVMF PXE).
    hosts.insert(
        mac("52:54:00:aa:00:01"),
        host("node01", true, Some(Ipv4Addr::new(10, 0, 0, 11))),
    );
    hosts.insert(
        mac("52:54:00:aa:00:02"),
        host("node02", true, Some(Ipv4Addr::new(10, 0, 0, 12))),
    );
    hosts.insert(
        mac("52:54:00:aa:00:03"),
        host("node03", false, Some(Ipv4Addr::new(10, 0, 0, 13))),
    );
    DhcpSite {
        hosts,
        boot_files: BootFiles::default(),
        base_url: None,
        http_port: 8080,
        pools: pool
            .then(|| Pool {
                start: Ipv4Addr::new(10, 0, 0, 100),
                end: Ipv4Addr::new(10, 0, 0, 103),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dns: vec![Ipv4Addr::new(10, 0, 0, 1)],
                domain: None,
            })
            .into_iter()
            .collect(),
        lease_time_secs: 3600,
        // Short probes: the namespace tests wait for offers that follow them.
        ping_timeout_ms: 300,
        ..DhcpSite::default()
    }
}

/// A network namespace of a test's own, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
    /// Runs `f` on a thread inside this namespace.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `program`; panics with its stderr unless it succeeds.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process killed (by its own pid) when dropped.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
