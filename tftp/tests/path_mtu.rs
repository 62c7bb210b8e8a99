//! blksize is clamped to what the path carries: in a private network namespace whose loopback
//! has a 1500-byte MTU, a client asking for 65464 gets 1468 and a whole file in 1468-byte blocks.

mod common;

use std::process::Command;

use common::*;

struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        if !nix::unistd::Uid::effective().is_root() {
            pxeforge_tests::skip(format_args!("path MTU test needs root (network namespace)"));
            return None;
        }
        let name = format!("pxf-tftp-mtu-{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().map(|s| s.success());
            assert!(matches!(ok, Ok(true)), "ip {args:?} failed");
        };
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&[
            "netns", "exec", &ns.0, "ip", "link", "set", "lo", "mtu", "1500", "up",
        ]);
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn blksize_is_clamped_to_the_path_mtu() {
    let Some(ns) = Netns::create() else { return };
    let path = format!("/run/netns/{}", ns.0);
    // The namespace is entered by one fresh thread, which runs its own runtime: every socket
    // of the server and of the client is created inside it.
    let result = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let t = tree();
            let data = pattern(100_000, 11);
            std::fs::write(t.root.join("f"), &data).unwrap();
            let server = start("127.0.0.1:0", &t.root, |_| {}).await;
            let sock = client().await;
            sock.send_to(&rrq(b"f", &[("blksize", "65464")]), server.addr)
                .await
                .unwrap();
            let (oack, tid) = recv(&sock).await;
            let abort = pxeforge_tftp::packet::encode_error(
                pxeforge_tftp::packet::ErrorCode::OptionRefused,
                "probe",
            );
            sock.send_to(&abort, tid).await.unwrap();
            let sock = client().await;
            let fetched = fetch_raw(&sock, server.addr, &rrq(b"f", &[("blksize", "65464")])).await;
            server.stop().await;
            (oack, fetched == Fetch::Data(data))
        })
    })
    .join()
    .unwrap();
    assert_eq!(result.0, b"\x00\x06blksize\x001468\x00");
    assert!(result.1, "the clamped transfer delivered the file");
}
