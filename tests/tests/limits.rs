//! Resource limits `serve` sets up for itself.

use pxeforge_tests::{copy_example_site, pxeforge_bin, ServeChild};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Soft and hard "Max open files" of a process, from /proc/PID/limits.
fn nofile(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_example_site(dir.path());
    // systemd's usual soft limit, under a higher hard limit.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=1024:4096")
        .arg(pxeforge_bin())
        .args(["serve", "--no-tftp", "--http", "127.0.0.1:0", "--site"])
        .arg(dir.path())
        .arg("--state")
        .arg(dir.path().join("state"))
        .stderr(Stdio::null());
    let serve = ServeChild::start(cmd, Duration::from_secs(60)).expect("serve ready");
    let (soft, hard) = nofile(serve.pid());
    assert_eq!(hard, "4096");
    assert_eq!(soft, "4096", "the soft limit was left at 1024");
}

fn site_with_limits(limits: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_example_site(dir.path());
    let p = dir.path().join("pxeforge.toml");
    let mut text = std::fs::read_to_string(&p).expect("settings");
    text.push_str(&format!("\n[limits]\n{limits}\n"));
    std::fs::write(&p, text).expect("settings");
    dir
}

/// Opens a connection and asks for /healthz on it; the status line's code.
fn status_of_new_connection(
    addr: std::net::SocketAddr,
    keep: &mut Vec<std::net::TcpStream>,
) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    keep.push(s);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

#[test]
fn one_client_holds_at_most_its_share_of_http_connections() {
    let dir = site_with_limits("http_connections_per_addr = 2");
    let srv = pxeforge_tests::Server::start(dir.path(), &["--no-tftp"]);
    let mut held = Vec::new();
    assert_eq!(status_of_new_connection(srv.http, &mut held), 200);
    assert_eq!(status_of_new_connection(srv.http, &mut held), 200);
    assert_eq!(status_of_new_connection(srv.http, &mut held), 503);
    drop(held);
    // The admin listener is not the boot listener: its caps do not apply there.
    let m = srv.metrics();
    assert!(
        m.contains("pxeforge_http_connections_refused_total{reason=\"per-address\"} 1"),
        "{m}"
    );
    // An exempt network (a rack behind NAT, a load balancer, a bench) is not capped.
    let dir = site_with_limits("http_connections_per_addr = 2\nexempt = [\"127.0.0.0/8\"]");
    let srv = pxeforge_tests::Server::start(dir.path(), &["--no-tftp"]);
    let mut held = Vec::new();
    for _ in 0..4 {
        assert_eq!(status_of_new_connection(srv.http, &mut held), 200);
    }
}

#[test]
fn a_malformed_exempt_network_is_named() {
    let dir = site_with_limits("exempt = [\"10.0.0.0/33\"]");
    let (code, out, _) =
        pxeforge_tests::pxeforge(&["check", "--site", dir.path().to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(
        out.contains("pxeforge.toml:") && out.contains("10.0.0.0/33"),
        "{out}"
    );
}

#[test]
fn a_tftp_file_name_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_example_site(dir.path());
    let root = dir.path().join("tftproot");
    std::fs::create_dir_all(&root).expect("root");
    let srv = pxeforge_tests::Server::start(
        dir.path(),
        &[
            "--tftp",
            "127.0.0.1:0",
            "--tftp-root",
            root.to_str().expect("utf-8"),
        ],
    );
    let tftp = srv.tftp.expect("tftp address");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.send_to(
        b"\x00\x01a\nFORGED tftp: serving all of /etc\x00octet\x00",
        tftp,
    )
    .expect("send");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).expect("an ERROR answer");
    assert_eq!(&buf[..2], b"\x00\x05", "{:?}", &buf[..n]);
    assert!(
        srv.wait_log("tftp: request refused", 1),
        "{}",
        srv.log_text()
    );
    let log = srv.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged log line:\n{log}"
    );
}
