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
