//! The server in-process on loopback, fetched from by real clients: tftp-hpa, curl and atftp.

mod common;

use std::path::Path;

use common::*;
use pxeforge_tftp::Ended;

async fn curl_get(port: u16, name: &str, dir: &Path, extra: &[&str]) -> (bool, String) {
    let url = format!("tftp://127.0.0.1:{port}/{name}");
    let mut args = vec!["-sS", "-o", "out", "--max-time", "60"];
    args.extend_from_slice(extra);
    args.push(&url);
    run_client("curl", &args, dir).await
}

async fn hpa_get(port: u16, name: &str, mode: &str, dir: &Path) -> (bool, String) {
    let port = port.to_string();
    let args = [
        "-4",
        "127.0.0.1",
        &port,
        "-m",
        mode,
        "-c",
        "get",
        name,
        "out",
    ];
    let (ok, text) = run_client("tftp", &args, dir).await;
    // tftp-hpa exits 0 even when the server refuses; its message tells.
    let failed = text.contains("Error code") || text.contains("Transfer timed out");
    (ok && !failed, format!("tftp get {name}: {text}"))
}

async fn atftp_get(port: u16, name: &str, options: &[&str], dir: &Path) -> (bool, String) {
    let port = port.to_string();
    let mut args: Vec<&str> = Vec::new();
    for o in options {
        args.extend_from_slice(&["--option", o]);
    }
    args.extend_from_slice(&["-g", "-r", name, "-l", "out", "127.0.0.1", &port]);
    run_client("atftp", &args, dir).await
}

fn read_out(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("out")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_fetches_octet_and_netascii() {
    if !have("tftp") {
        return;
    }
    let t = tree();
    let binary = pattern(1_000_000, 1);
    std::fs::write(t.root.join("undionly.kpxe"), &binary).unwrap();
    std::fs::create_dir(t.root.join("sub")).unwrap();
    let text = b"line one\nline two\r\nbare\rcr\n".repeat(100);
    std::fs::write(t.root.join("sub/boot.txt"), &text).unwrap();
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let port = server.addr.port();
    let work = tempfile::tempdir().unwrap();

    let (ok, log) = hpa_get(port, "undionly.kpxe", "binary", work.path()).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), binary);

    // tftp-hpa decodes netascii back to the local convention: the bytes must round-trip.
    let (ok, log) = hpa_get(port, "sub/boot.txt", "netascii", work.path()).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), text);
    wait_outcome(&server.metrics, Ended::Complete, 2).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_with_blksize_and_streams_large_files() {
    if !have("curl") {
        return;
    }
    let t = tree();
    let small = pattern(1_048_576, 2);
    let large = pattern(3_000_001, 3);
    write_aged(&t.root.join("ipxe.efi"), &small, 60);
    std::fs::write(t.root.join("large.img"), &large).unwrap();
    std::fs::write(t.root.join("empty"), b"").unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.cache.max_file_size = 2_000_000;
    })
    .await;
    let port = server.addr.port();
    let work = tempfile::tempdir().unwrap();

    for blksize in ["512", "1468", "8192", "65464"] {
        let (ok, log) = curl_get(port, "ipxe.efi", work.path(), &["--tftp-blksize", blksize]).await;
        assert!(ok, "blksize {blksize}: {log}");
        assert_eq!(read_out(work.path()), small, "blksize {blksize}");
    }
    // Bigger than the cache's per-file limit: streamed from disk.
    let (ok, log) = curl_get(port, "large.img", work.path(), &["--tftp-blksize", "1468"]).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), large);
    // No options at all (plain RFC 1350).
    let (ok, log) = curl_get(port, "ipxe.efi", work.path(), &["--tftp-no-options"]).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), small);
    // curl 7.88 fails on an empty file after an OACK (against tftpd-hpa too): ask plainly.
    let (ok, log) = curl_get(port, "empty", work.path(), &["--tftp-no-options"]).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), b"");

    wait_outcome(&server.metrics, Ended::Complete, 7).await;
    let mut text = String::new();
    server.metrics.write_prometheus(&mut text);
    assert!(
        text.contains("pxeforge_tftp_transfers_total{outcome=\"complete\"} 7\n"),
        "{text}"
    );
    assert!(
        text.contains("pxeforge_tftp_transfer_duration_seconds_count 7\n"),
        "{text}"
    );
    // One load into memory, then hits for the other fetches of ipxe.efi.
    assert!(
        text.contains("pxeforge_tftp_cache_hits_total 4\n"),
        "{text}"
    );
    let sent = (small.len() * 5 + large.len()) as u64;
    assert_eq!(server.metrics.bytes_sent(), sent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_roll_over_past_65535() {
    if !have("curl") {
        return;
    }
    let t = tree();
    // blksize 8 reaches the rollover with a small file: 65_601 blocks.
    let data = pattern(8 * 65_600 + 3, 4);
    std::fs::write(t.root.join("roll"), &data).unwrap();
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let (ok, log) = curl_get(
        server.addr.port(),
        "roll",
        work.path(),
        &["--tftp-blksize", "8"],
    )
    .await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), data);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_fetches_with_windowsize() {
    if !have("atftp") {
        return;
    }
    let t = tree();
    let data = pattern(2_500_000, 5);
    std::fs::write(t.root.join("snponly.efi"), &data).unwrap();
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let port = server.addr.port();
    let work = tempfile::tempdir().unwrap();
    for options in [
        &["blksize 1468", "windowsize 4"][..],
        &["blksize 1468", "windowsize 16", "tsize 0"][..],
        &["windowsize 64"][..],
        &[][..],
    ] {
        let _ = std::fs::remove_file(work.path().join("out"));
        let (ok, log) = atftp_get(port, "snponly.efi", options, work.path()).await;
        assert!(ok, "{options:?}: {log}");
        assert_eq!(read_out(work.path()), data, "{options:?}");
    }
    wait_outcome(&server.metrics, Ended::Complete, 4).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_served_fresh() {
    if !have("curl") {
        return;
    }
    let t = tree();
    let first = pattern(100_000, 8);
    write_aged(&t.root.join("ipxe.efi"), &first, 120);
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let port = server.addr.port();
    let work = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (ok, log) = curl_get(port, "ipxe.efi", work.path(), &[]).await;
        assert!(ok, "{log}");
        assert_eq!(read_out(work.path()), first);
    }
    let mut text = String::new();
    server.metrics.write_prometheus(&mut text);
    assert!(
        text.contains("pxeforge_tftp_cache_hits_total 1\n"),
        "{text}"
    );
    // Same size, new bytes, rewritten in place; then replaced by rename; then just written.
    let second = pattern(100_000, 9);
    write_aged(&t.root.join("ipxe.efi"), &second, 60);
    let (ok, log) = curl_get(port, "ipxe.efi", work.path(), &[]).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), second);
    let third = pattern(100_000, 10);
    write_aged(&t.root.join("new"), &third, 60);
    std::fs::rename(t.root.join("new"), t.root.join("ipxe.efi")).unwrap();
    let (ok, log) = curl_get(port, "ipxe.efi", work.path(), &[]).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), third);
    let fourth = pattern(100_000, 11);
    std::fs::write(t.root.join("ipxe.efi"), &fourth).unwrap();
    let (ok, log) = curl_get(port, "ipxe.efi", work.path(), &[]).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), fourth);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_are_refused_with_an_error_and_a_log_line() {
    if !have("tftp") || !have("curl") {
        return;
    }
    let t = tree();
    std::fs::write(t.root.join("ok"), b"fine").unwrap();
    std::fs::create_dir(t.root.join("dir")).unwrap();
    std::os::unix::fs::symlink(t.outside.join("secret"), t.root.join("link")).unwrap();
    std::os::unix::fs::symlink(&t.outside, t.root.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", t.root.join("zero")).unwrap();
    let is_root = nix::unistd::Uid::effective().is_root();
    if is_root {
        nix::sys::stat::mknod(
            &t.root.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::S_IRUSR,
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    } else {
        pxeforge_tests::skip(format_args!(
            "(part) creating a device node in the root needs root"
        ));
    }
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let port = server.addr.port();
    let secret_path = t.outside.join("secret");
    let work = tempfile::tempdir().unwrap();

    // Through tftp-hpa, which sends the name as typed.
    let mut names: Vec<String> = [
        "../outside/secret",
        "dir/../../outside/secret",
        "..\\outside\\secret",
        "%2e%2e/outside/secret",
        "..%2foutside%2fsecret",
        "link",
        "linkdir/secret",
        "zero",
        "dir",
        "ok%00../outside/secret",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push(secret_path.to_str().unwrap().to_string());
    if is_root {
        names.push("null".into());
    }
    let mut refused = 0;
    for name in &names {
        let _ = std::fs::remove_file(work.path().join("out"));
        let (ok, log) = hpa_get(port, name, "binary", work.path()).await;
        assert!(!ok, "{name} was served: {log}");
        assert!(log.contains("Error code 2"), "{name}: {log}");
        assert!(!read_out(work.path()).starts_with(b"TOP SECRET"), "{name}");
        refused += 1;
        wait_outcome(&server.metrics, Ended::Refused, refused).await;
        let logs = logs();
        assert!(
            logs.lines().any(|l| l.contains("refused")
                // Names are logged with backslashes and control characters escaped.
                && l.contains(&format!("path={}", name.escape_debug()))
                && l.contains("client=127.0.0.1:")),
            "no log line naming the client and {name}:\n{logs}"
        );
    }

    // Through curl: it URL-decodes the path before sending, so %2e%2e arrives as "..".
    for url_path in ["%2e%2e/outside/secret", "..%2Foutside%2Fsecret", "link"] {
        let (ok, log) = curl_get(port, url_path, work.path(), &[]).await;
        assert!(!ok, "{url_path} was served: {log}");
        refused += 1;
        wait_outcome(&server.metrics, Ended::Refused, refused).await;
    }

    // A NUL inside the name, raw: it ends the name and turns the rest into a bad mode.
    let sock = client().await;
    sock.send_to(b"\x00\x01ok\x00../outside/secret\x00octet\x00", server.addr)
        .await
        .unwrap();
    let (reply, _) = recv(&sock).await;
    assert_eq!(&reply[..4], b"\x00\x05\x00\x04", "ERROR 4: {reply:?}");
    wait_outcome(&server.metrics, Ended::BadRequest, 1).await;

    // Still serving normally after all that.
    let (ok, log) = hpa_get(port, "ok", "binary", work.path()).await;
    assert!(ok, "{log}");
    assert_eq!(read_out(work.path()), b"fine");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_requests_are_refused() {
    if !have("tftp") || !have("curl") {
        return;
    }
    let t = tree();
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let port = server.addr.port().to_string();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("upload"), b"payload").unwrap();

    let args = [
        "-4",
        "127.0.0.1",
        &port,
        "-m",
        "binary",
        "-c",
        "put",
        "upload",
        "upload",
    ];
    let (_, log) = run_client("tftp", &args, work.path()).await;
    assert!(log.contains("Error code 2"), "{log}");
    let url = format!("tftp://127.0.0.1:{port}/upload");
    let (ok, log) = run_client("curl", &["-sS", "-T", "upload", &url], work.path()).await;
    assert!(!ok, "curl upload succeeded: {log}");
    wait_outcome(&server.metrics, Ended::WriteRefused, 2).await;
    assert!(!t.root.join("upload").exists());
    assert!(logs().contains("write request refused"));
    server.stop().await;
}
