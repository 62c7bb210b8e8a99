//! The open-file limit is shared between the services: one client holding every HTTP
//! connection it can must not leave TFTP without descriptors (issue 15).

use pxeforge_tests::{copy_example_site, pxeforge_bin, ServeChild};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One RRQ without options; the opcode of the first answer, or `None` for silence.
fn first_answer(tftp: SocketAddr, file: &str) -> Option<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(file.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0");
    for _ in 0..3 {
        s.send_to(&rrq, tftp).expect("send");
        let mut buf = [0u8; 1024];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if n >= 2 {
                return Some(u16::from_be_bytes([buf[0], buf[1]]));
            }
        }
    }
    None
}

#[test]
fn http_connections_cannot_take_the_descriptors_tftp_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    copy_example_site(&site);
    let p = site.join("pxeforge.toml");
    let mut text = std::fs::read_to_string(&p).expect("settings");
    // No per-client cap: the budget between the services is what is tested here.
    text.push_str("\n[limits]\nhttp_connections_per_addr = 0\n");
    std::fs::write(&p, text).expect("settings");
    let root = dir.path().join("tftp");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("undionly.kpxe"), vec![7u8; 70_000]).expect("file");
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=320:320")
        .arg(pxeforge_bin())
        .args(["serve", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--tftp", "127.0.0.1:0", "--tftp-root"])
        .arg(&root)
        .arg("--site")
        .arg(&site)
        .arg("--state")
        .arg(dir.path().join("state"))
        .stderr(Stdio::null());
    let mut serve = ServeChild::start(cmd, Duration::from_secs(60)).expect("serve ready");
    let ready = serve.listening().clone();
    let (http, tftp) = (
        ready.http.expect("http address"),
        ready.tftp.expect("tftp address"),
    );
    assert_eq!(
        first_answer(tftp, "undionly.kpxe"),
        Some(3),
        "DATA before the flood"
    );
    // More connections than the process has descriptors; those the server does not accept
    // wait in its listen queue (or time out), which is what the budget is for.
    let mut held = Vec::new();
    for _ in 0..500 {
        match TcpStream::connect_timeout(&http, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        first_answer(tftp, "undionly.kpxe"),
        Some(3),
        "TFTP must still serve while HTTP holds {} connections",
        held.len()
    );
    drop(held);
    serve.stop(Duration::from_secs(5));
}
