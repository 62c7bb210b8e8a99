//! `pxeforge releases sync|list|verify|gc` against a fixture install tree: real files, a
//! `.treeinfo` written by productmd (tests/fixtures/releases/make_tree.py), served on loopback
//! by a small Python server that answers Range requests and logs every request
//! (tests/fixtures/releases/serve_tree.py), so that each test can count what a sync downloaded.

use pxeforge_tests::{arm, copy_example_site, have, pxeforge, repo_root, script, skip, Server};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RELEASE: &str = "stream9-x86_64";
const BIOS_HOST: &str = "vm-bios-01";
const BIOS_MAC: &str = "52:54:00:00:10:01";

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/releases").join(name)
}

/// The tools the fixture needs; a test that lacks them says so and returns.
fn tools() -> bool {
    let productmd = Command::new("python3")
        .args(["-c", "import productmd.treeinfo"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !productmd || !have("mkfs.vfat") || !have("mcopy") {
        skip("releases tests need python3 with productmd, mkfs.vfat and mtools (scripts/install-deps.sh)");
        return false;
    }
    true
}

/// Writes (or rewrites, for a new compose) the fixture tree; returns its compose id.
fn make_tree(dir: &Path, seed: &str, arch: &str, install_size: usize) -> String {
    let out = Command::new("python3")
        .arg(fixture("make_tree.py"))
        .arg(dir)
        .args(["--seed", seed, "--arch", arch])
        .args(["--install-size", &install_size.to_string()])
        .output()
        .expect("run make_tree.py");
    assert!(
        out.status.success(),
        "make_tree.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        id.len(),
        64,
        "make_tree.py prints the sha256 of .treeinfo: {id}"
    );
    id
}

/// The fixture's HTTP server; killed on drop.
struct Upstream {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Upstream {
    fn start(root: &Path, log: &Path) -> Upstream {
        let mut child = Command::new("python3")
            .arg(fixture("serve_tree.py"))
            .arg(root)
            .arg(log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start serve_tree.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("serve_tree.py said {line:?}"));
        Upstream {
            child,
            port,
            log: log.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests logged since the last call, as `GET /path range=...` lines.
    fn take_requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::write(&self.log, "");
        text.lines().map(str::to_string).collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An example site whose `stream9-x86_64` release comes from the fixture tree, with its state
/// in the site's own `state/` (where `check` looks).
struct Fixture {
    _dir: tempfile::TempDir,
    site: PathBuf,
    state: PathBuf,
    tree: PathBuf,
    upstream: Upstream,
}

fn fixture_site(seed: &str, install_size: usize) -> Option<(Fixture, String)> {
    if !tools() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    copy_example_site(&site);
    let tree = dir.path().join("tree");
    let id = make_tree(&tree, seed, "x86_64", install_size);
    let upstream = Upstream::start(&tree, &dir.path().join("requests.log"));
    let toml = site.join("pxeforge.toml");
    let t = std::fs::read_to_string(&toml).expect("pxeforge.toml");
    let from = "upstream = \"https://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os\"";
    assert!(
        t.contains(from),
        "the example site's stream9-x86_64 upstream moved"
    );
    std::fs::write(
        &toml,
        t.replace(from, &format!("upstream = \"{}\"", upstream.url())),
    )
    .expect("write pxeforge.toml");
    let state = site.join("state");
    Some((
        Fixture {
            site,
            state,
            tree,
            upstream,
            _dir: dir,
        },
        id,
    ))
}

impl Fixture {
    fn releases(&self, args: &[&str]) -> (i32, String, String) {
        let mut a = vec!["releases"];
        a.extend_from_slice(args);
        let (site, state) = (self.site.to_string_lossy(), self.state.to_string_lossy());
        a.extend(["--site", &site, "--state", &state]);
        pxeforge(&a)
    }

    fn sync(&self, args: &[&str]) -> (i32, String, String) {
        let mut a = vec!["sync"];
        a.extend_from_slice(args);
        self.releases(&a)
    }

    fn release_dir(&self) -> PathBuf {
        self.state.join("releases").join(RELEASE)
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.release_dir().join("current"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// Adds lines to `[install.releases.stream9-x86_64]`.
    fn release_settings(&self, lines: &str) {
        let toml = self.site.join("pxeforge.toml");
        let t = std::fs::read_to_string(&toml).expect("pxeforge.toml");
        let h = format!("[install.releases.{RELEASE}]\n");
        assert!(t.contains(&h));
        std::fs::write(&toml, t.replace(&h, &format!("{h}{lines}\n"))).expect("write");
    }

    fn append_settings(&self, text: &str) {
        let toml = self.site.join("pxeforge.toml");
        let t = std::fs::read_to_string(&toml).expect("pxeforge.toml");
        // A table header ends the table before it, so the end of the file will do.
        std::fs::write(&toml, format!("{t}\n{text}\n")).expect("write");
    }
}

/// Every entry under `dir` with its size (directories 0) and symlink target: what "the store
/// as it was" means.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(base)
                .expect("under base")
                .display()
                .to_string();
            let md = std::fs::symlink_metadata(&p).expect("metadata");
            if md.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).expect("link").display()
                ));
            } else if md.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(format!("{rel} {}", md.len()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn sha256_file(p: &Path) -> String {
    pxeforge_tests::sha256_hex(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

#[test]
fn a_sync_verifies_and_publishes_and_a_second_sync_downloads_nothing() {
    let Some((f, id)) = fixture_site("one", 256 * 1024) else {
        return;
    };
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("published compose {id}")), "{out}");
    let item = f.release_dir().join(&id);
    assert_eq!(f.current().as_deref(), Some(id.as_str()));
    // The tree's own layout, byte for byte, and its .treeinfo (whose sha256 is the compose id).
    for rel in [
        ".treeinfo",
        "images/pxeboot/vmlinuz",
        "images/pxeboot/initrd.img",
        "images/install.img",
        "images/efiboot.img",
    ] {
        assert_eq!(
            sha256_file(&item.join(rel)),
            sha256_file(&f.tree.join(rel)),
            "{rel}"
        );
    }
    assert_eq!(sha256_file(&item.join(".treeinfo")), id);
    // Shim, GRUB and MokManager taken out of efiboot.img: the fixture's own files.
    for efi in ["BOOTX64.EFI", "grubx64.efi", "mmx64.efi"] {
        let got = std::fs::read(item.join("EFI/BOOT").join(efi)).expect(efi);
        assert_eq!(got.len(), 4096, "{efi}");
        assert_eq!(&got[..2], b"MZ", "{efi}");
    }
    // SHA256SUMS is what sha256sum checks, and lists every file.
    let check = Command::new("sha256sum")
        .args(["-c", "--strict", "--quiet", "SHA256SUMS"])
        .current_dir(&item)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{check:?}");
    let sums = std::fs::read_to_string(item.join("SHA256SUMS")).expect("SHA256SUMS");
    assert_eq!(sums.lines().count(), 8, "{sums}");
    let (code, out, _) = f.releases(&["verify"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = f.releases(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.starts_with(&format!("* {RELEASE}"))
            && l.contains(&id)
            && l.contains("x86_64")
            && l.contains("pinned by 0 host(s)")),
        "{out}"
    );
    let first = f.upstream.take_requests();
    assert_eq!(first.len(), 5, "{first:?}");

    // Unchanged tree: only .treeinfo is asked for.
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("compose {id} unchanged")), "{out}");
    let second = f.upstream.take_requests();
    assert_eq!(second, vec!["GET /.treeinfo range=-".to_string()]);

    // A published file damaged on disk: verify names it, and the next sync repairs it.
    let vmlinuz = item.join("images/pxeboot/vmlinuz");
    let mut bytes = std::fs::read(&vmlinuz).expect("vmlinuz");
    bytes[100] ^= 1;
    std::fs::write(&vmlinuz, &bytes).expect("damage");
    let (code, out, _) = f.releases(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISMATCH") && out.contains("images/pxeboot/vmlinuz"),
        "{out}"
    );
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("repaired compose {id}")), "{out}");
    let (code, out, _) = f.releases(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_flipped_byte_fails_the_sync_naming_the_file_and_publishes_nothing() {
    let Some((f, _)) = fixture_site("flip", 256 * 1024) else {
        return;
    };
    let p = f.tree.join("images/install.img");
    let expected = sha256_file(&p);
    let mut bytes = std::fs::read(&p).expect("install.img");
    bytes[12345] ^= 0x20;
    std::fs::write(&p, &bytes).expect("flip");
    let actual = sha256_file(&p);
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "images/install.img",
        &format!("release {RELEASE}"),
        &f.upstream.url(),
        &expected,
        &actual,
        "nothing published",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert!(!f.release_dir().exists() || snapshot(&f.release_dir()).is_empty());
    assert_eq!(f.current(), None);
    let (code, out, _) = f.releases(&["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("no synced releases"), "{out}");
}

/// A file larger than `--max-file-mib` is a hostile or wrong upstream: the download stops at the
/// cap (the disk is not filled before the checksum could fail), names the file, publishes
/// nothing and keeps no partial file.
#[test]
fn a_file_over_the_size_cap_stops_the_sync_at_the_cap() {
    let Some((f, _)) = fixture_site("large", 3 * 1024 * 1024) else {
        return;
    };
    let (code, out, err) = f.sync(&[RELEASE, "--max-file-mib", "1"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "images/install.img",
        "larger than 1048576 bytes",
        "nothing published",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert_eq!(f.current(), None);
    let partial = f.state.join("releases/.partial").join(RELEASE);
    let left: Vec<u64> = std::fs::read_dir(&partial)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| *n <= 1024 * 1024),
        "partials over the cap: {left:?}"
    );
    // Under the default cap the same tree syncs.
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
}

#[test]
fn a_killed_sync_leaves_the_store_as_it_was_and_the_next_one_resumes() {
    let Some((f, old)) = fixture_site("before", 64 * 1024) else {
        return;
    };
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let before = snapshot(&f.state.join("releases"));

    // A new compose with a large install.img, sent slowly.
    const SIZE: usize = 16 * 1024 * 1024;
    let new = make_tree(&f.tree, "after", "x86_64", SIZE);
    let install_sha = sha256_file(&f.tree.join("images/install.img"));
    std::fs::write(f.tree.join(".throttle"), b"").expect("throttle");
    f.upstream.take_requests();
    let mut child = Command::new(pxeforge_tests::pxeforge_bin())
        .args(["releases", "sync", RELEASE, "--site"])
        .arg(&f.site)
        .arg("--state")
        .arg(&f.state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sync");
    let partial = f
        .state
        .join("releases/.partial")
        .join(RELEASE)
        .join(&install_sha);
    // Killed once part of install.img is on disk (the deadline only guards a hung test).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have >= 512 * 1024 {
            break;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the sync ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "install.img never started downloading"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let kept = std::fs::metadata(&partial).expect("partial kept").len();
    assert!(kept > 0 && kept < SIZE as u64, "{kept}");

    // The store is as it was: the old compose, current, nothing half-published.
    let after: Vec<String> = snapshot(&f.state.join("releases"))
        .into_iter()
        .filter(|e| !e.starts_with(".partial"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|e| !e.starts_with(".partial"))
        .collect();
    assert_eq!(after, before);
    assert_eq!(f.current().as_deref(), Some(old.as_str()));
    let (code, out, _) = f.releases(&["verify"]);
    assert_eq!(code, 0, "{out}");

    // The next sync resumes install.img where the killed one stopped, and completes.
    std::fs::remove_file(f.tree.join(".throttle")).expect("unthrottle");
    f.upstream.take_requests();
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let reqs = f.upstream.take_requests();
    let resumed = reqs
        .iter()
        .find(|l| l.starts_with("GET /images/install.img range=bytes="))
        .unwrap_or_else(|| panic!("no Range request for install.img: {reqs:?}"));
    let from: u64 = resumed
        .trim_start_matches("GET /images/install.img range=bytes=")
        .trim_end_matches('-')
        .parse()
        .expect("range start");
    assert!(
        from >= kept.min(512 * 1024) && from < SIZE as u64,
        "{resumed}"
    );
    assert!(err.contains(&format!("resuming at byte {from}")), "{err}");
    assert_eq!(f.current().as_deref(), Some(new.as_str()));
    assert_eq!(
        sha256_file(&f.release_dir().join(&new).join("images/install.img")),
        install_sha
    );
    assert!(f.release_dir().join(&old).is_dir(), "the old compose stays");
    assert!(
        !partial.exists(),
        "the partial download is gone once published"
    );
    let (code, out, _) = f.releases(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

/// The kernel URL of an install script.
fn kernel_url(script: &str) -> String {
    script
        .lines()
        .find_map(|l| l.trim().strip_prefix("kernel "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no kernel line: {script}"))
        .to_string()
}

#[test]
fn a_new_compose_is_published_beside_the_old_and_an_armed_host_keeps_the_old() {
    let Some((f, a)) = fixture_site("compose-a", 64 * 1024) else {
        return;
    };
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    arm(&f.site, &f.state, &[BIOS_HOST]);
    let srv = Server::start(
        &f.site,
        &["--no-tftp", "--state", f.state.to_str().expect("utf-8")],
    );
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let q = format!("mac={BIOS_MAC}&platform=pcbios");
    let sc = script(&c, &srv, &q);
    let k = kernel_url(&sc);
    assert!(
        k.ends_with(&format!("/releases/{RELEASE}/{a}/images/pxeboot/vmlinuz")),
        "{sc}"
    );
    assert!(
        sc.contains(&format!(
            "inst.stage2={}/releases/{RELEASE}/{a} ",
            srv.url("")
        )),
        "{sc}"
    );
    // The server hands out the synced kernel itself.
    let body = c.get(&k).send().expect("GET kernel").bytes().expect("body");
    assert_eq!(
        pxeforge_tests::sha256_hex(&body),
        sha256_file(&f.release_dir().join(&a).join("images/pxeboot/vmlinuz"))
    );
    // and the tree's .treeinfo, which anaconda reads first from inst.stage2.
    let ti = c
        .get(srv.url(&format!("/releases/{RELEASE}/{a}/.treeinfo")))
        .send()
        .expect("GET .treeinfo")
        .bytes()
        .expect("body");
    assert_eq!(pxeforge_tests::sha256_hex(&ti), a);

    // A new compose upstream: published beside the old one and made current...
    let b = make_tree(&f.tree, "compose-b", "x86_64", 64 * 1024);
    assert_ne!(a, b);
    let (code, out, err) = f.sync(&[RELEASE, "--keep", "1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(f.current().as_deref(), Some(b.as_str()));
    assert!(
        f.release_dir().join(&a).is_dir(),
        "--keep 1 removed a pinned compose"
    );
    let (_, list, _) = f.releases(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&a) && l.contains("pinned by 1 host(s)") && !l.starts_with('*')),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with('*') && l.contains(&b) && l.contains("pinned by 0 host(s)")),
        "{list}"
    );
    // ...while the armed host keeps booting the compose it was armed with.
    let again = script(&c, &srv, &q);
    assert_eq!(kernel_url(&again), k, "{again}");
    let (code, out, _) = f.releases(&["gc", "--keep", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        f.release_dir().join(&a).is_dir(),
        "gc removed a pinned compose: {out}"
    );

    // Armed again: the new build takes the current compose, and the old one may go.
    arm(&f.site, &f.state, &[BIOS_HOST]);
    let rearmed = script(&c, &srv, &q);
    assert!(
        kernel_url(&rearmed).ends_with(&format!("/releases/{RELEASE}/{b}/images/pxeboot/vmlinuz")),
        "{rearmed}"
    );
    let (code, out, _) = f.releases(&["gc", "--keep", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&a), "{out}");
    assert!(!f.release_dir().join(&a).exists());
    assert!(f.release_dir().join(&b).is_dir());
}

#[test]
fn a_treeinfo_that_is_not_the_pinned_one_fails() {
    let Some((f, id)) = fixture_site("pinned", 64 * 1024) else {
        return;
    };
    let wrong = "ab".repeat(32);
    f.release_settings(&format!("treeinfo_sha256 = \"{wrong}\""));
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "treeinfo_sha256",
        &wrong,
        &id,
        "/.treeinfo",
        "nothing published",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert_eq!(
        f.upstream.take_requests(),
        vec!["GET /.treeinfo range=-".to_string()],
        "nothing but .treeinfo may be fetched"
    );
    assert_eq!(f.current(), None);
    // The right pin passes.
    let toml = f.site.join("pxeforge.toml");
    let t = std::fs::read_to_string(&toml).expect("read");
    std::fs::write(&toml, t.replace(&wrong, &id.to_uppercase())).expect("write");
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(f.current().as_deref(), Some(id.as_str()));
}

#[test]
fn an_aarch64_release_pointed_at_an_x86_64_tree_fails_sync() {
    let Some((f, _)) = fixture_site("arch", 64 * 1024) else {
        return;
    };
    f.append_settings(&format!(
        "[install.releases.stream9-aarch64]\nversion = 9\narch = \"aarch64\"\nupstream = \"{}\"\n",
        f.upstream.url()
    ));
    let (code, out, err) = f.sync(&["stream9-aarch64"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("release stream9-aarch64")
            && err.contains("the tree is x86_64, but the release is aarch64"),
        "{err}"
    );
    assert!(!f
        .state
        .join("releases/stream9-aarch64")
        .join("current")
        .exists());
}

#[test]
fn check_warns_about_unsynced_releases_and_fails_on_a_synced_tree_of_another_arch() {
    let Some((f, _)) = fixture_site("check", 64 * 1024) else {
        return;
    };
    let site = f.site.to_string_lossy().into_owned();
    let (code, out, err) = pxeforge(&["check", "--site", &site]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("warning: release {RELEASE} was never synced")),
        "{out}"
    );
    let (code, out, err) = f.sync(&[RELEASE]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let (code, out, _) = pxeforge(&["check", "--site", &site]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains(&format!("release {RELEASE} was never synced")),
        "{out}"
    );
    // stream10 is used by profiles and never synced: under require_synced that is an error.
    let toml = f.site.join("pxeforge.toml");
    let t = std::fs::read_to_string(&toml).expect("read");
    std::fs::write(
        &toml,
        t.replace(
            "[install.releases.stream10-x86_64]\n",
            "[install.releases.stream10-x86_64]\nrequire_synced = true\n",
        ),
    )
    .expect("write");
    let (code, out, _) = pxeforge(&["check", "--site", &site]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error: release stream10-x86_64 has require_synced = true but was never synced"
        ),
        "{out}"
    );
    std::fs::write(&toml, &t).expect("write");
    // A release synced from an x86_64 tree and then declared aarch64 (no profile uses it, so
    // only the tree can disagree).
    f.append_settings(&format!(
        "[install.releases.spare]\nversion = 9\narch = \"x86_64\"\nupstream = \"{}\"\n",
        f.upstream.url()
    ));
    let (code, out, err) = f.sync(&["spare"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let t = std::fs::read_to_string(&toml).expect("read");
    std::fs::write(
        &toml,
        t.replace(
            "[install.releases.spare]\nversion = 9\narch = \"x86_64\"",
            "[install.releases.spare]\nversion = 9\narch = \"aarch64\"",
        ),
    )
    .expect("write");
    let (code, out, _) = pxeforge(&["check", "--site", &site]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("pxeforge.toml:")
            && l.contains("error: release spare is aarch64, but its synced tree")
            && l.contains("is x86_64")),
        "{out}"
    );
}
