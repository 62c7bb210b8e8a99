//! TFTP through the real `pxeforge serve`: real clients (curl, tftp-hpa, atftp) fetch files and
//! compare bytes; escapes and write requests are refused with an error packet and a log line;
//! the transfers show up in /metrics.

use pxeforge_tests::{copy_example_site, have, sha256_hex, Server};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Fixture {
    dir: tempfile::TempDir,
    site: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    copy_example_site(&site);
    let root = dir.path().join("tftproot");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("ipxe.efi"), pattern(1_048_576, 1)).unwrap();
    std::fs::write(root.join("undionly.kpxe"), pattern(70_001, 2)).unwrap();
    std::fs::write(dir.path().join("secret"), b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
    let state = dir.path().join("state");
    Fixture {
        site,
        root,
        state,
        dir,
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

fn start(f: &Fixture) -> Server {
    Server::start(
        &f.site,
        &[
            "--tftp",
            "127.0.0.1:0",
            "--tftp-root",
            f.root.to_str().unwrap(),
            "--state",
            f.state.to_str().unwrap(),
        ],
    )
}

/// Runs a client in `dir`; returns (exit success, stdout + stderr).
fn run(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn fetched(dir: &Path) -> String {
    sha256_hex(&std::fs::read(dir.join("out")).unwrap_or_default())
}

/// Whether the server logged a refusal naming `name` and a loopback client (polls up to 10 s).
fn refusal_logged(server: &Server, name: &str) -> bool {
    // Names are logged with control characters and backslashes escaped.
    let name = name.escape_debug().to_string();
    for _ in 0..100 {
        let log = server.log_text();
        if log.lines().any(|l| {
            l.contains("refused") && l.contains(&format!("{name} ")) && l.contains("127.0.0.1:")
        }) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

fn sha_of(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn tftp_serves_the_root_to_real_clients() {
    for tool in ["curl", "tftp", "atftp"] {
        if !have(tool) {
            pxeforge_tests::skip(format_args!(
                "`{tool}` is not installed (apt-get install curl tftp-hpa atftp)"
            ));
            return;
        }
    }
    let f = fixture();
    let server = start(&f);
    let tftp = server.tftp.expect("a `tftp listening on` line");
    let port = tftp.port().to_string();
    let work = f.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // curl at the blksize OVMF asks for, and with no options at all.
    for extra in [&["--tftp-blksize", "1468"][..], &["--tftp-no-options"][..]] {
        let url = format!("tftp://{tftp}/ipxe.efi");
        let mut args = vec!["-sS", "--max-time", "60", "-o", "out"];
        args.extend_from_slice(extra);
        args.push(&url);
        let (ok, log) = run("curl", &args, &work);
        assert!(ok, "curl {extra:?}: {log}");
        assert_eq!(
            fetched(&work),
            sha_of(&f.root.join("ipxe.efi")),
            "curl {extra:?}"
        );
    }

    // tftp-hpa, octet.
    let (ok, log) = run(
        "tftp",
        &[
            "-4",
            "127.0.0.1",
            &port,
            "-m",
            "binary",
            "-c",
            "get",
            "undionly.kpxe",
            "out",
        ],
        &work,
    );
    assert!(ok && !log.contains("Error"), "tftp-hpa: {log}");
    assert_eq!(fetched(&work), sha_of(&f.root.join("undionly.kpxe")));

    // atftp with a window, as OVMF's PXE client does.
    let (ok, log) = run(
        "atftp",
        &[
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 4",
            "-g",
            "-r",
            "ipxe.efi",
            "-l",
            "out",
            "127.0.0.1",
            &port,
        ],
        &work,
    );
    assert!(ok, "atftp: {log}");
    assert_eq!(fetched(&work), sha_of(&f.root.join("ipxe.efi")));

    // Escapes and a write request: refused with TFTP error 2, never served.
    for name in ["../secret", "escape", "%2e%2e/secret", "..\\secret"] {
        let _ = std::fs::remove_file(work.join("out"));
        let (_, log) = run(
            "tftp",
            &[
                "-4",
                "127.0.0.1",
                &port,
                "-m",
                "binary",
                "-c",
                "get",
                name,
                "out",
            ],
            &work,
        );
        assert!(log.contains("Error code 2"), "{name}: {log}");
        let got = std::fs::read(work.join("out")).unwrap_or_default();
        assert!(!got.starts_with(b"TOP SECRET"), "{name} leaked the secret");
        assert!(
            refusal_logged(&server, name),
            "no log line naming the client and {name}:\n{}",
            server.log_text()
        );
    }
    std::fs::write(work.join("upload"), b"payload").unwrap();
    let (_, log) = run(
        "tftp",
        &[
            "-4",
            "127.0.0.1",
            &port,
            "-m",
            "binary",
            "-c",
            "put",
            "upload",
            "upload",
        ],
        &work,
    );
    assert!(log.contains("Error code 2"), "WRQ: {log}");
    assert!(!f.root.join("upload").exists());

    // The transfers are counted in /metrics (on the admin listener).
    let metrics = server.metrics();
    let value = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} missing from /metrics:\n{metrics}"))
    };
    assert_eq!(
        value("pxeforge_tftp_transfers_total{outcome=\"complete\"}"),
        4
    );
    assert_eq!(
        value("pxeforge_tftp_transfers_total{outcome=\"refused\"}"),
        4
    );
    assert_eq!(
        value("pxeforge_tftp_transfers_total{outcome=\"write_refused\"}"),
        1
    );
    assert_eq!(
        value("pxeforge_tftp_bytes_sent_total"),
        3 * 1_048_576 + 70_001
    );
    assert_eq!(value("pxeforge_tftp_active_transfers"), 0);
}
