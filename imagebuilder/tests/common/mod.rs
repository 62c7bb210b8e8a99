//! Shared helpers of the image builder tests: a throwaway site, the test assets, QEMU runs.
#![allow(dead_code)]

use pxeforge_imagebuilder as ib;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Debian kernel + busybox-static from scripts/fetch-test-assets.sh, or None (with a SKIP
/// message) when they cannot be fetched here.
pub fn assets() -> Option<PathBuf> {
    let root = repo_root();
    let dir = root.join(".cache/test-assets");
    let ok = Command::new(root.join("scripts/fetch-test-assets.sh"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok || !dir.join("vmlinuz").is_file() || !dir.join("busybox").is_file() {
        pxeforge_tests::skip(format_args!(
            "scripts/fetch-test-assets.sh could not provide the test kernel and busybox"
        ));
        return None;
    }
    Some(dir)
}

pub fn kver(assets: &Path) -> String {
    std::fs::read_to_string(assets.join("kver"))
        .unwrap()
        .trim()
        .to_string()
}

pub struct Site {
    pub tmp: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        let tmp = tempfile::Builder::new()
            .prefix("pxf-img-")
            .tempdir()
            .unwrap();
        for d in ["images", "profiles", ".cache"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        std::os::unix::fs::symlink(
            repo_root().join(".cache/test-assets"),
            tmp.path().join(".cache/test-assets"),
        )
        .unwrap();
        Site { tmp }
    }
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let p = self.dir().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }
    pub fn profile(&self, name: &str, text: &str) -> ib::ProfileLayer {
        self.write(&format!("profiles/{name}.toml"), text);
        let profile = pxeforge_site::parse_profile_text(name, text).unwrap();
        ib::ProfileLayer::from(&profile)
    }
    pub fn recipe(&self, name: &str) -> ib::Recipe {
        let (recipes, diags) = ib::load_recipes(self.dir());
        assert!(diags.is_empty(), "{diags:?}");
        recipes.into_iter().find(|r| r.name == name).unwrap()
    }
    pub fn build(
        &self,
        recipe: &str,
        profile: &ib::ProfileLayer,
        force: bool,
    ) -> Result<ib::BuildOutcome, ib::BuildError> {
        let r = self.recipe(recipe);
        let diags = ib::check_recipes(
            self.dir(),
            std::slice::from_ref(&r),
            std::slice::from_ref(profile),
        );
        assert!(diags.is_empty(), "{diags:?}");
        let state = self.state();
        ib::build(ib::BuildRequest {
            site_dir: self.dir(),
            state_dir: &state,
            recipe: &r,
            profile,
            force,
            progress: &ib::NoProgress,
        })
    }
}

/// A busybox root whose /init runs `script` (busybox sh) and powers off.
pub fn busybox_recipe(profile: &str, outputs: &str, script: &str, extra: &str) -> String {
    format!(
        r##"profiles = ["{profile}"]
outputs = [{outputs}]
kernel_args = ["panic=-1"]
source_date_epoch = 1700000000

[base]
scratch = true

[kernel]
file = ".cache/test-assets/vmlinuz"

[[file]]
path = "/bin/busybox"
source = ".cache/test-assets/busybox"
mode = 0o755

[[file]]
path = "/init"
mode = 0o755
contents = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /mnt
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
{script}
poweroff -f
"""

[[device]]
path = "/dev/console"
kind = "c"
major = 5
minor = 1

{extra}
"##
    )
}

/// Runs QEMU until `marker` shows on the serial console (true) or the VM stops / times out (false).
pub fn qemu_until(args: &[&str], marker: &str, timeout: Duration) -> (bool, String) {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
            "-monitor",
            "none",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            buf.clear();
        }
    });
    let deadline = Instant::now() + timeout;
    let mut log = String::new();
    let mut found = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                if line.contains(marker) {
                    found = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (found, log)
}

/// Every file under a directory with its content hash (a snapshot to compare the store against).
pub fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if !dir.exists() {
        return v;
    }
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let what = if e.path_is_symlink() {
            format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if e.file_type().is_file() {
            ib::hashing::hash_file(e.path()).unwrap().1
        } else {
            "dir".into()
        };
        v.push((rel, what));
    }
    v
}

pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
