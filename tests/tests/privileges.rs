//! Least privilege (issue 17): `serve` started as root in a network namespace binds ports 67 and
//! 69, then runs as `server.user` with no capability at all.

use pxeforge_tests::{copy_example_site, pxeforge_bin, ServeChild};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A line of /proc/PID/status, split after its key.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn serve_started_as_root_binds_67_and_69_then_runs_unprivileged() {
    if !pxeforge_tests::is_root() {
        pxeforge_tests::skip(
            "privileges: needs root (a network namespace, ports 67 and 69, setuid)",
        );
        return;
    }
    let ns = Netns(format!("pxf-priv-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .expect("ip")
        .success());
    assert!(Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status()
        .expect("ip")
        .success());
    let dir = tempfile::tempdir().expect("tempdir");
    // The unprivileged user reads the site at every reload.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    copy_example_site(&site);
    let p = site.join("pxeforge.toml");
    let t = std::fs::read_to_string(&p).expect("settings");
    assert!(t.contains("\n[server]\n"));
    std::fs::write(
        &p,
        t.replace("\n[server]\n", "\n[server]\nuser = \"nobody\"\n"),
    )
    .expect("settings");
    let tftp_root = dir.path().join("tftp");
    std::fs::create_dir_all(&tftp_root).expect("tftp root");
    std::fs::write(tftp_root.join("undionly.kpxe"), b"not really iPXE").expect("file");
    let state = dir.path().join("state");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(pxeforge_bin())
        .args([
            "serve",
            "--http",
            "127.0.0.1:8080",
            "--admin",
            "127.0.0.1:8081",
        ])
        .args(["--tftp", "0.0.0.0:69", "--tftp-root"])
        .arg(&tftp_root)
        .args(["--dhcp", "proxy", "--dhcp-interface", "lo", "--site"])
        .arg(&site)
        .arg("--state")
        .arg(&state)
        .stderr(Stdio::null());
    let mut serve = ServeChild::start(cmd, Duration::from_secs(60)).expect("serve ready");
    let ready = serve.listening().clone();
    assert_eq!(ready.tftp.map(|a| a.port()), Some(69));
    assert!(ready.dhcp.iter().any(|d| d.addr.port() == 67), "{ready:?}");
    // `ip netns exec` execs pxeforge in place: the child is the server.
    let pid = serve.pid();
    let uid = status_field(pid, "Uid");
    assert!(
        uid.iter().all(|u| u == "65534"),
        "real, effective, saved, fs uid: {uid:?}"
    );
    let gid = status_field(pid, "Gid");
    assert!(gid.iter().all(|g| g == "65534"), "{gid:?}");
    for caps in ["CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(status_field(pid, caps), ["0000000000000000"], "{caps}");
    }
    // Every thread, not only the main one.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = task
            .expect("task")
            .file_name()
            .to_string_lossy()
            .to_string();
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("status");
        assert!(
            text.contains("CapEff:\t0000000000000000"),
            "thread {tid}:\n{text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("\t0\t")),
            "thread {tid}"
        );
    }
    // And it still serves, writing its state as the new user.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "curl",
            "-s",
            "http://127.0.0.1:8080/ipxe?mac=02:00:00:00:17:09",
        ])
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("#!ipxe"),
        "{out:?}"
    );
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(state.join("events.db")).expect("events.db"),
    );
    assert_eq!(owner, 65534);
    serve.stop(Duration::from_secs(5));
}
