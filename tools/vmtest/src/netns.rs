//! The private network of one VM boot: a namespace with a bridge, the VM's tap and the boot
//! server's address, and optionally a second namespace (the site's own DHCP server) joined to
//! the bridge by a veth pair. Everything is removed on drop.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

pub const BRIDGE: &str = "br0";
pub const TAP: &str = "tap0";
const VETH_BRIDGE_SIDE: &str = "vd0";
/// The interface dnsmasq serves on, in its own namespace.
pub const VETH_DHCP_SIDE: &str = "vd1";

/// The namespaces of one run. Drop kills whatever still runs inside them and deletes them.
pub struct Netns {
    pub name: String,
    pub dhcp_ns: Option<String>,
}

impl Netns {
    /// Creates `pxf-vm-<id>` with bridge + tap + `server/prefix` on the bridge; with
    /// `dhcp_server` also `pxf-vmd-<id>` holding the other end of a veth with that address.
    pub fn create(
        id: u32,
        server: Ipv4Addr,
        prefix: u8,
        dhcp_server: Option<Ipv4Addr>,
    ) -> Result<Netns> {
        let name = format!("pxf-vm-{id}");
        ip(&["netns", "add", &name])?;
        // From here on a failure still removes the namespace.
        let mut ns = Netns {
            name,
            dhcp_ns: None,
        };
        let n = ns.name.clone();
        let cidr = format!("{server}/{prefix}");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", BRIDGE, "type", "bridge"],
            // No STP delay: the firmware's first DHCP packets must pass at once.
            vec![
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "forward_delay",
                "0",
                "stp_state",
                "0",
            ],
            vec!["addr", "add", &cidr, "dev", BRIDGE],
            vec!["link", "set", BRIDGE, "up"],
            vec!["tuntap", "add", "dev", TAP, "mode", "tap"],
            vec!["link", "set", TAP, "master", BRIDGE],
            vec!["link", "set", TAP, "up"],
        ] {
            ip_in(&n, &args)?;
        }
        if let Some(addr) = dhcp_server {
            let d = format!("pxf-vmd-{id}");
            ip(&["netns", "add", &d])?;
            ns.dhcp_ns = Some(d.clone());
            ip_in(
                &n,
                &[
                    "link",
                    "add",
                    VETH_BRIDGE_SIDE,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    VETH_DHCP_SIDE,
                ],
            )?;
            ip_in(&n, &["link", "set", VETH_DHCP_SIDE, "netns", &d])?;
            ip_in(&n, &["link", "set", VETH_BRIDGE_SIDE, "master", BRIDGE])?;
            ip_in(&n, &["link", "set", VETH_BRIDGE_SIDE, "up"])?;
            let dcidr = format!("{addr}/{prefix}");
            ip_in(&d, &["link", "set", "lo", "up"])?;
            ip_in(&d, &["addr", "add", &dcidr, "dev", VETH_DHCP_SIDE])?;
            ip_in(&d, &["link", "set", VETH_DHCP_SIDE, "up"])?;
        }
        Ok(ns)
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.name).chain(self.dhcp_ns.iter()) {
            kill_all_in(ns);
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(netns = %ns, error = %e, "could not delete network namespace");
            }
        }
    }
}

/// Kills what is left in a namespace (the guards normally stopped it already).
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Runs `f` on a thread that has joined namespace `ns`, so that its sockets live there.
pub fn spawn_in<F>(ns: &str, f: F) -> Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let handle = std::thread::Builder::new()
        .name("vmtest-netns".into())
        .spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                tracing::error!(error = %e, "could not join the test namespace");
                return;
            }
            f()
        })?;
    Ok(handle)
}
