//! The systemd unit in `dist/` (issue 17): it verifies, and `serve` tells systemd when it is
//! ready (`Type=notify`).

use pxeforge_tests::{copy_example_site, pxeforge_bin, repo_root, ServeChild};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !pxeforge_tests::have("systemd-analyze") {
        pxeforge_tests::skip("dist: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(repo_root().join("dist/pxeforge.service")).expect("unit");
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = pxeforge_bin();
    let unit = unit.replace("/usr/local/bin/pxeforge", bin.to_str().expect("utf-8"));
    let path = dir.path().join("pxeforge.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("pxeforge.service:"),
        "{text}"
    );
}

#[test]
fn serve_notifies_systemd_when_it_is_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    copy_example_site(&site);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut cmd = Command::new(pxeforge_bin());
    cmd.args([
        "serve",
        "--no-tftp",
        "--http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ])
    .arg("--site")
    .arg(&site)
    .arg("--state")
    .arg(dir.path().join("state"))
    .env("NOTIFY_SOCKET", &sock_path)
    .stderr(Stdio::null());
    let mut serve = ServeChild::start(cmd, Duration::from_secs(60)).expect("serve ready");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    serve.stop(Duration::from_secs(5));
    let n = sock.recv(&mut buf).expect("a notification at stop");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}
