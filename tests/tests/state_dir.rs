//! `serve --state X` and `render --state X`: the store that is checked at load is the store that
//! is served, and `render` reads the same state as the handlers.

use pxeforge_tests::{copy_example_site, pxeforge, sha256_hex, Server};
use std::path::Path;

const BIOS_MAC: &str = "52:54:00:00:10:01";

/// The example site with `qemu-bios` installing a built image (`tarimage`, a tar output).
fn image_site(site: &Path) {
    copy_example_site(site);
    std::fs::write(
        site.join("images/tarimage.toml"),
        "profiles = [\"qemu-bios\"]\noutputs = [\"tar\"]\n[base]\nscratch = true\n",
    )
    .expect("recipe");
    let p = site.join("profiles/qemu-bios.toml");
    let text = std::fs::read_to_string(&p).expect("profile");
    let text = text.replace(
        "boot = \"install\"",
        "boot = \"image\"\nimage = \"tarimage\"",
    );
    std::fs::write(&p, text).expect("profile");
}

/// A published build of `tarimage` for `qemu-bios` in `state`, laid out as the builder does.
fn publish(state: &Path, tar: &[u8]) {
    let dir = state.join("images/tarimage/qemu-bios");
    let build = dir.join("build-1");
    std::fs::create_dir_all(&build).expect("build dir");
    std::fs::write(build.join("root.tar"), tar).expect("tar");
    std::fs::write(
        build.join("SHA256SUMS"),
        format!("{}  root.tar\n", sha256_hex(tar)),
    )
    .expect("sums");
    std::os::unix::fs::symlink("build-1", dir.join("current")).expect("current");
}

#[test]
fn serve_with_state_checks_and_serves_that_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    image_site(&site);
    let state = dir.path().join("elsewhere");
    let tar = vec![7u8; 10240];
    publish(&state, &tar);
    pxeforge_tests::arm(&site, &state, &["vm-bios-01"]);
    let server = Server::start(&site, &["--no-tftp", "--state", state.to_str().unwrap()]);
    let log = server.log_text();
    let stdout = server.stdout.join("\n");
    // The site's own state directory has no build; the one named by --state does.
    for text in [&log, &stdout] {
        assert!(
            !text.contains("no published build"),
            "the store in --state was not the one checked:\n{text}"
        );
    }
    let c = reqwest::blocking::Client::new();
    let script = c
        .get(server.url(&format!("/ipxe?mac={BIOS_MAC}")))
        .send()
        .expect("GET /ipxe")
        .text()
        .expect("body");
    let ks_url = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inst.ks="))
        .unwrap_or_else(|| panic!("no inst.ks= in {script}"));
    let ks = c.get(ks_url).send().expect("GET /ks").text().expect("body");
    assert!(
        ks.contains(&format!("--checksum={}", sha256_hex(&tar))),
        "{ks}"
    );
    let url = "/images/tarimage/qemu-bios/build-1/root.tar";
    assert!(ks.contains(url), "{ks}");
    let got = c.get(server.url(url)).send().expect("GET image");
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().expect("bytes").as_ref(), tar.as_slice());
}

/// `pxeforge render kickstart` for a machine an operator approved prints what its installer is
/// served (with `TOKEN` where the build's token goes): both go through the same selection,
/// which reads the approval from the state store.
#[test]
fn render_kickstart_of_an_approved_machine_is_what_its_installer_gets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    copy_example_site(&site);
    let state = dir.path().join("state");
    let base = "http://pxe.example:8080";
    let server = Server::start(
        &site,
        &[
            "--no-tftp",
            "--state",
            state.to_str().unwrap(),
            "--base-url",
            base,
        ],
    );
    let mac = "b8:ca:3a:99:00:01";
    let c = reqwest::blocking::Client::new();
    let ask = || {
        c.get(server.url(&format!(
            "/ipxe?mac={mac}&manufacturer=Dell%20Inc.&product=PowerEdge%20R650"
        )))
        .send()
        .expect("GET /ipxe")
        .text()
        .expect("script")
    };
    let before = ask();
    assert!(!before.contains("vmlinuz"), "not approved yet: {before}");
    let (code, body) = server.admin_post(
        &format!("/api/discovered/{mac}/approve"),
        &serde_json::json!({"name": "r650-spare"}),
    );
    assert_eq!(code, 200, "{body}");
    let script = ask();
    let ks = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inst.ks="))
        .unwrap_or_else(|| panic!("approved: an install script: {script}"))
        .to_string();
    let token = ks.split("token=").nth(1).expect("token").to_string();
    let ks_path = ks.strip_prefix(base).expect("base URL");
    let served = c.get(server.url(ks_path)).send().expect("GET /ks");
    assert_eq!(served.status(), 200);
    let served = served.text().expect("kickstart");
    let (code, rendered, err) = pxeforge(&[
        "render",
        "kickstart",
        "--mac",
        mac,
        "--site",
        site.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--base-url",
        base,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rendered.replace("TOKEN", &token), served);
}

/// Two servers on one state directory would hand out the same pool addresses from one lease
/// file and race on every store: the second refuses to start, naming the directory and the
/// running server's pid, and the first keeps serving.
#[test]
fn a_second_serve_on_the_same_state_directory_is_refused() {
    let t = pxeforge_tests::TempSite::new();
    let first = t.serve();
    let state_arg = t.state.to_str().expect("utf-8 path");
    let site_arg = t.site.to_str().expect("utf-8 path");
    let mut second = std::process::Command::new(pxeforge_tests::pxeforge_bin())
        .args([
            "serve",
            "--site",
            site_arg,
            "--state",
            state_arg,
            "--no-tftp",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the second serve");
    // A refused start exits at once; one that is still running after this started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    if status.is_none() {
        let _ = second.kill();
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    assert!(
        status.is_some(),
        "a second serve on one state directory started and was still running after 30 s:\n{err}"
    );
    assert_ne!(
        code, 0,
        "a second serve on one state directory started:\n{err}"
    );
    assert!(
        err.contains(state_arg) && err.contains("another pxeforge serve"),
        "the error does not name the state directory and why:\n{err}"
    );
    assert!(
        err.contains(&format!("pid {}", first.child.id())),
        "the error does not name the running server's pid:\n{err}"
    );
    let got = reqwest::blocking::get(first.url("/healthz")).expect("GET /healthz");
    assert_eq!(got.status(), 200, "the first server stopped serving");
}
