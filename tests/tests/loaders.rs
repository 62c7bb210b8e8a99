//! The loaders store (`STATE/loaders`): `serve` on a fresh state directory with the default
//! settings fills it from Debian's `ipxe` package and hands out the real binaries over HTTP and
//! TFTP (Debian's `ipxe.efi` is a symlink out of the folder, which the servers' confinement
//! refuses); `pxeforge loaders sync` publishes by content; `check` fails for a boot file a
//! profile needs and only warns for the others.

use pxeforge_tests::{copy_example_site, have, pxeforge, sha256_hex, Server};
use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_IPXE: &str = "/usr/lib/ipxe";

/// Debian's `ipxe` package is what the default settings copy from; every test machine has it
/// (scripts/install-deps.sh installs it).
fn require_debian_ipxe() {
    for f in ["ipxe.efi", "snponly.efi", "undionly.kpxe"] {
        let p = Path::new(DEBIAN_IPXE).join(f);
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.is_file()),
            "{} is missing: install Debian's ipxe package (scripts/install-deps.sh)",
            p.display()
        );
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    site: PathBuf,
    state: PathBuf,
}

impl Fixture {
    /// `serve` of the fixture site with TFTP on a free loopback port and its own state.
    fn serve(&self) -> Server {
        Server::start(
            &self.site,
            &[
                "--tftp",
                "127.0.0.1:0",
                "--state",
                self.state.to_str().unwrap(),
            ],
        )
    }

    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site");
        std::fs::create_dir_all(&site).unwrap();
        copy_example_site(&site);
        let state = dir.path().join("state");
        Fixture { dir, site, state }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Sets `[loaders] sources` in the site's pxeforge.toml.
    fn set_sources(&self, sources: &[&Path]) {
        let toml = self.site.join("pxeforge.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        let line = format!(
            "sources = [{}]",
            sources
                .iter()
                .map(|s| format!("{:?}", s.to_str().unwrap()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut out = Vec::new();
        let mut section = String::new();
        let mut done = false;
        for l in text.lines() {
            if l.trim_start().starts_with('[') {
                if section == "[loaders]" && !done {
                    out.push(line.clone());
                    done = true;
                }
                section = l.trim().to_string();
            }
            if section == "[loaders]" && l.trim_start().starts_with("sources") {
                if !done {
                    out.push(line.clone());
                    done = true;
                }
                continue;
            }
            out.push(l.to_string());
        }
        if !done {
            if section != "[loaders]" {
                out.push("[loaders]".into());
            }
            out.push(line);
        }
        std::fs::write(&toml, out.join("\n") + "\n").unwrap();
    }

    /// `pxeforge loaders ARGS --site SITE --state STATE`.
    fn loaders(&self, args: &[&str]) -> (i32, String, String) {
        let mut a = vec!["loaders"];
        a.extend_from_slice(args);
        a.extend([
            "--site",
            self.site.to_str().unwrap(),
            "--state",
            self.state.to_str().unwrap(),
        ]);
        pxeforge(&a)
    }

    fn item_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state.join("loaders"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    fn current(&self) -> String {
        std::fs::read_link(self.state.join("loaders/current"))
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }
}

fn http_get(url: &str) -> (u16, Vec<u8>) {
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let r = c
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// `curl tftp://ADDR/NAME` into `dir/out`; the fetched bytes, or curl's complaint.
fn tftp_get(addr: std::net::SocketAddr, name: &str, dir: &Path) -> Result<Vec<u8>, String> {
    let out = dir.join("out");
    let _ = std::fs::remove_file(&out);
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(&out)
        .arg(format!("tftp://{addr}/{name}"))
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(std::fs::read(&out).unwrap())
}

/// The done-means: default settings, fresh state, `serve` alone → GET /tftp/ipxe.efi and
/// TFTP ipxe.efi are the real binary (the file Debian's symlink points at), as are the BIOS and
/// EFI TFTP defaults.
#[test]
fn fresh_serve_hands_out_the_real_ipxe_binaries() {
    require_debian_ipxe();
    if !have("curl") {
        panic!("curl is required (scripts/install-deps.sh installs it)");
    }
    let f = Fixture::new();
    let server = f.serve();
    let tftp = server.tftp.expect("a `tftp listening on` line");
    let work = f.path("work");
    std::fs::create_dir_all(&work).unwrap();
    for name in ["ipxe.efi", "snponly.efi", "undionly.kpxe"] {
        // std::fs::read follows Debian's symlink: the bytes a client must get.
        let want = sha256_hex(&std::fs::read(Path::new(DEBIAN_IPXE).join(name)).unwrap());
        let (status, body) = http_get(&server.url(&format!("/tftp/{name}")));
        assert_eq!(status, 200, "GET /tftp/{name}: {}", server.log_text());
        assert_eq!(sha256_hex(&body), want, "GET /tftp/{name}");
        let got = tftp_get(tftp, name, &work).unwrap_or_else(|e| panic!("TFTP {name}: {e}"));
        assert_eq!(sha256_hex(&got), want, "TFTP {name}");
    }
    let log = server.log_text();
    assert!(log.contains("filled the empty loaders store"), "{log}");
    assert!(
        log.contains("ipxe.efi"),
        "the log names what was copied: {log}"
    );
    // The store holds real files: the symlink was resolved at copy time.
    let item = f.state.join("loaders").join(f.current());
    assert!(std::fs::symlink_metadata(item.join("ipxe.efi"))
        .unwrap()
        .is_file());
    drop(server);
    // A second start finds the store filled and leaves it as it is.
    let before = f.item_dirs();
    let server = f.serve();
    assert!(!server.log_text().contains("filled the empty loaders store"));
    assert_eq!(f.item_dirs(), before);
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Unchanged sources publish nothing new; a changed file publishes a new item and moves
/// `current`; the first source that has a name wins; verify and gc work on the store.
#[test]
fn sync_publishes_by_content() {
    let f = Fixture::new();
    let (a, b) = (f.path("src-a"), f.path("src-b"));
    write(&a.join("undionly.kpxe"), b"bios loader v1");
    write(&a.join("snponly.efi"), b"efi loader");
    write(&b.join("undionly.kpxe"), b"shadowed by src-a");
    write(&b.join("ipxe.efi"), b"http boot loader");
    f.set_sources(&[&a, &b]);

    let (code, out, err) = f.loaders(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("published, now current (3 file(s))"), "{out}");
    let first = f.current();
    let item = f.state.join("loaders").join(&first);
    assert_eq!(
        std::fs::read(item.join("undionly.kpxe")).unwrap(),
        b"bios loader v1"
    );
    assert_eq!(
        std::fs::read(item.join("ipxe.efi")).unwrap(),
        b"http boot loader"
    );
    // SHA256SUMS is what sha256sum checks.
    let sums = std::fs::read_to_string(item.join("SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!("{}  snponly.efi", sha256_hex(b"efi loader"))),
        "{sums}"
    );

    let (code, out, err) = f.loaders(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unchanged, now current"), "{out}");
    assert_eq!(f.item_dirs(), vec![first.clone()]);

    write(&a.join("undionly.kpxe"), b"bios loader v2");
    let (code, out, err) = f.loaders(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("published, now current"), "{out}");
    let second = f.current();
    assert_ne!(second, first);
    assert_eq!(f.item_dirs().len(), 2);
    let cur = f.state.join("loaders/current");
    assert_eq!(
        std::fs::read(cur.join("undionly.kpxe")).unwrap(),
        b"bios loader v2"
    );
    // The old item is untouched.
    assert_eq!(
        std::fs::read(item.join("undionly.kpxe")).unwrap(),
        b"bios loader v1"
    );

    let (code, out, _) = f.loaders(&["list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("* {second}")), "{out}");
    assert!(out.contains(&format!("  {first}")), "{out}");

    let (code, out, _) = f.loaders(&["verify"]);
    assert_eq!(code, 0, "{out}");
    // A flipped byte in a published file: verify exits 1 naming it.
    let victim = item.join("snponly.efi");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let (code, out, _) = f.loaders(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISMATCH") && out.contains(&format!("{first}/snponly.efi")),
        "{out}"
    );

    // gc keeps the current item whatever --keep says.
    let (code, out, err) = f.loaders(&["gc", "--keep", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(f.item_dirs(), vec![second]);
}

/// A symlink in a source is copied as the bytes it points at (wherever they are); what cannot be
/// copied (a dangling link, a FIFO, a folder) is passed over, the rest still published.
#[test]
fn symlinks_are_copied_as_their_files_and_the_rest_skipped() {
    let f = Fixture::new();
    let src = f.path("src");
    write(&f.path("elsewhere/real-ipxe.efi"), b"the real ipxe.efi");
    write(&src.join("undionly.kpxe"), b"bios");
    std::os::unix::fs::symlink(f.path("elsewhere/real-ipxe.efi"), src.join("ipxe.efi")).unwrap();
    std::os::unix::fs::symlink(f.path("nowhere"), src.join("dangling.efi")).unwrap();
    nix::unistd::mkfifo(&src.join("fifo.efi"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::create_dir_all(src.join("qemu")).unwrap();
    write(&src.join("qemu/efi-e1000.rom"), b"option rom");
    f.set_sources(&[&src]);

    let (code, out, err) = f.loaders(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("dangling.efi"), "a warning names it: {err}");
    assert!(
        err.contains("fifo.efi") && err.contains("not a regular file"),
        "{err}"
    );
    let cur = f.state.join("loaders/current");
    let m = std::fs::symlink_metadata(cur.join("ipxe.efi")).unwrap();
    assert!(m.is_file(), "a real file in the store, not a link");
    assert_eq!(
        std::fs::read(cur.join("ipxe.efi")).unwrap(),
        b"the real ipxe.efi"
    );
    for absent in ["dangling.efi", "fifo.efi", "qemu"] {
        assert!(!cur.join(absent).exists(), "{absent} copied");
    }
}

/// `check`: a boot file a profile boots through that no source has is an error naming the
/// class, the file and where it was looked for; files of classes no profile uses only warn (the
/// example site is all x86_64: ARM64 and 32-bit EFI are unused).
#[test]
fn check_fails_for_a_used_boot_file_and_warns_for_unused_ones() {
    let f = Fixture::new();
    let src = f.path("src");
    write(&src.join("snponly.efi"), b"efi");
    write(&src.join("ipxe.efi"), b"http");
    f.set_sources(&[&src]);
    let site = f.site.to_str().unwrap();

    let (code, out, err) = pxeforge(&["check", "--site", site]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("error") && l.contains("undionly.kpxe"))
        .unwrap_or_else(|| panic!("no error for the BIOS loader:\n{out}"));
    assert!(line.contains("dhcp.boot_files.bios"), "{line}");
    assert!(line.contains("qemu-bios"), "names the profile: {line}");
    assert!(
        line.contains(src.to_str().unwrap()),
        "names the folder: {line}"
    );

    write(&src.join("undionly.kpxe"), b"bios");
    let (code, out, err) = pxeforge(&["check", "--site", site]);
    assert_eq!(code, 0, "{out}{err}");
    for unused in ["ipxe-i386.efi", "ipxe-arm64.efi"] {
        assert!(
            out.lines()
                .any(|l| l.contains("warning") && l.contains(unused)),
            "{unused}: {out}"
        );
    }

    // Once synced, check looks in the store's current item instead: a file deleted from it
    // (by hand) is an error again.
    let (code, out, err) = f.loaders(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    let toml = f.site.join("pxeforge.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let text = text.replacen(
        "state_dir = \"state\"",
        &format!("state_dir = {:?}", f.state.to_str().unwrap()),
        1,
    );
    std::fs::write(&toml, text).unwrap();
    let item = f.state.join("loaders").join(f.current());
    let (code, out, _) = pxeforge(&["check", "--site", site]);
    assert_eq!(code, 0, "{out}");
    std::fs::remove_file(item.join("snponly.efi")).unwrap();
    let (code, out, _) = pxeforge(&["check", "--site", site]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.contains("error")
            && l.contains("snponly.efi")
            && l.contains("dhcp.boot_files.efi_x64")
            && l.contains("loaders/current")),
        "{out}"
    );
}

/// No source has anything: `serve` still starts (warning), `/tftp/` answers 404, and a later
/// `pxeforge loaders sync` is served over HTTP without a restart.
#[test]
fn serve_starts_with_empty_sources_and_serves_a_later_sync() {
    let f = Fixture::new();
    let src = f.path("src");
    std::fs::create_dir_all(&src).unwrap();
    f.set_sources(&[&src]);
    let server = f.serve();
    let log = server.log_text();
    assert!(
        log.contains("could not be filled") && log.contains("no loaders source has a file"),
        "{log}"
    );
    let (status, _) = http_get(&server.url("/tftp/ipxe.efi"));
    assert_eq!(status, 404);

    write(&src.join("ipxe.efi"), b"now there");
    let (code, out, err) = f.loaders(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = http_get(&server.url("/tftp/ipxe.efi"));
    assert_eq!((status, body.as_slice()), (200, &b"now there"[..]));
}

/// TFTP follows the store's `current` per request, as `/tftp/` does: after a sync it serves the
/// new item, and a gc of the item current at start does not break it.
#[test]
fn tftp_follows_current_after_a_sync() {
    let f = Fixture::new();
    let src = f.path("src");
    write(&src.join("ipxe.efi"), b"one");
    f.set_sources(&[&src]);
    let server = f.serve();
    let tftp = server.tftp.expect("tftp address");
    let work = f.path("work");
    std::fs::create_dir_all(&work).unwrap();
    assert_eq!(tftp_get(tftp, "ipxe.efi", &work).unwrap(), b"one");
    write(&src.join("ipxe.efi"), b"two");
    assert_eq!(f.loaders(&["sync"]).0, 0);
    assert_eq!(tftp_get(tftp, "ipxe.efi", &work).unwrap(), b"two");
    assert_eq!(f.loaders(&["gc", "--keep", "0"]).0, 0);
    assert_eq!(tftp_get(tftp, "ipxe.efi", &work).unwrap(), b"two");
}
