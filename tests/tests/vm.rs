//! Real network boots of QEMU VMs (TCG), each in a namespace of its own, through
//! `pxeforge vm-test` against the VM test site (tests/sites/vm): the matrix of issue 6.
//!
//! They need root (namespaces, taps, ports 67/69) and QEMU; without them each test prints a SKIP
//! line and returns. The kernel and busybox come from scripts/fetch-test-assets.sh (run here when
//! missing); the test installer and the liveimg payload are built once by `pxeforge build`.

use pxeforge_tests::{have, is_root, pxeforge_bin, repo_root};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};

/// What every case shares: the site and the built images (state dir).
struct Prepared {
    site: PathBuf,
    state: PathBuf,
    work: PathBuf,
}

/// The VM test site as this run uses it: tests/sites/vm with its state directory pointed at this
/// run's (the site's files are linked, pxeforge.toml is rewritten), so that the repository's copy
/// stays clean and every part of the service agrees on where images are.
fn run_site(work: &Path, state: &Path) -> PathBuf {
    run_site_named(work, "site", state, None)
}

/// [`run_site`] in `work/<name>`, with the release's `upstream` replaced when given.
fn run_site_named(work: &Path, name: &str, state: &Path, upstream: Option<&str>) -> PathBuf {
    let src = repo_root().join("tests/sites/vm");
    let dst = work.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name();
        if name == "pxeforge.toml" {
            continue;
        }
        let real = std::fs::canonicalize(e.path()).unwrap();
        std::os::unix::fs::symlink(real, dst.join(&name)).unwrap();
    }
    let toml = std::fs::read_to_string(src.join("pxeforge.toml")).unwrap();
    let state_line = format!("state_dir = {:?}", state.display().to_string());
    let toml = toml.replace("state_dir = \"state\"", &state_line);
    assert!(
        toml.contains(&state.display().to_string()),
        "pxeforge.toml of the VM site has no state_dir line"
    );
    let toml = match upstream {
        Some(u) => {
            let old = "upstream = \"{base_url}/assets/installer\"";
            assert!(
                toml.contains(old),
                "pxeforge.toml of the VM site has no {old}"
            );
            toml.replace(old, &format!("upstream = {u:?}"))
        }
        None => toml,
    };
    std::fs::write(dst.join("pxeforge.toml"), toml).unwrap();
    dst
}

/// True when VMs can boot here; otherwise says why (SKIP) and the test returns.
fn can_boot(needs_dnsmasq: bool) -> bool {
    if !is_root() {
        pxeforge_tests::skip(format_args!(
            "VM boot tests need root (network namespaces, taps, ports 67/69)"
        ));
        return false;
    }
    if !have("qemu-system-x86_64") {
        pxeforge_tests::skip(format_args!(
            "VM boot tests need qemu-system-x86_64 (apt-get install qemu-system-x86)"
        ));
        return false;
    }
    if needs_dnsmasq && !have("dnsmasq") {
        pxeforge_tests::skip(format_args!(
            "this VM boot test needs dnsmasq (apt-get install dnsmasq-base)"
        ));
        return false;
    }
    true
}

/// Builds the test installer and the payload image once per test binary. `vm-test --installer`
/// serves the installer as the boot tree of the site's release (`/assets/installer`).
fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| {
        let root = repo_root();
        let assets_ok = root.join(".cache/test-assets/vmlinuz").exists()
            && root.join(".cache/test-assets/virtio-modules").is_dir();
        if !assets_ok {
            let st = Command::new("bash")
                .arg(root.join("scripts/fetch-test-assets.sh"))
                .status()
                .expect("run fetch-test-assets.sh");
            assert!(st.success(), "scripts/fetch-test-assets.sh failed");
            ensure_virtio_modules(&root.join(".cache/test-assets"));
        }
        // One folder per test process: nextest runs every case in a process of its own.
        let all = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm-tests");
        remove_stale(&all);
        let work = all.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&work);
        let state = work.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let site = run_site(&work, &state);
        for (recipe, profile) in [("test-installer", Some("qemu-bios")), ("payload", None)] {
            let mut cmd = Command::new(pxeforge_bin());
            cmd.args(["build", recipe, "--site"])
                .arg(&site)
                .arg("--state")
                .arg(&state);
            if let Some(p) = profile {
                cmd.args(["--profile", p]);
            }
            let out = cmd.output().expect("run pxeforge build");
            assert!(
                out.status.success(),
                "pxeforge build {recipe} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Prepared { site, state, work }
    })
}

/// Removes the folders of earlier test processes that are gone.
fn remove_stale(all: &Path) {
    for e in std::fs::read_dir(all).into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The virtio chain the test installer loads, copied out of the kernel's module tree to a
/// version-independent place (`.cache/test-assets/virtio-modules/`) that the recipe names.
fn ensure_virtio_modules(assets: &Path) {
    const CHAIN: &[&str] = &[
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_blk",
    ];
    let dst = assets.join("virtio-modules");
    std::fs::create_dir_all(&dst).unwrap();
    fn find(dir: &Path, name: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = find(&p, name) {
                    return Some(f);
                }
            } else if p.file_name().is_some_and(|f| f == name) {
                return Some(p);
            }
        }
        None
    }
    for m in CHAIN {
        let name = format!("{m}.ko");
        let src = find(&assets.join("lib/modules"), &name)
            .unwrap_or_else(|| panic!("{name} not in the test kernel"));
        std::fs::copy(&src, dst.join(&name)).unwrap();
    }
}

/// At most two VMs at once: TCG keeps a core busy per VM, and this machine has two.
fn vm_slot() -> SlotGuard {
    static SLOTS: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();
    let (m, cv) = SLOTS.get_or_init(|| (Mutex::new(2), Condvar::new()));
    let mut free = m.lock().unwrap();
    while *free == 0 {
        free = cv.wait(free).unwrap();
    }
    *free -= 1;
    SlotGuard(m, cv)
}

struct SlotGuard(&'static Mutex<usize>, &'static Condvar);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.lock().unwrap() += 1;
        self.1.notify_one();
    }
}

struct Run {
    code: i32,
    stdout: String,
    report: serde_json::Value,
    out: PathBuf,
}

impl Run {
    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_default()
    }

    fn stages(&self) -> Vec<String> {
        self.report["stages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["stage"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn explain(&self) -> String {
        format!(
            "exit {}\n{}\n--- serial.log (tail) ---\n{}",
            self.code,
            self.stdout,
            tail(&self.file("serial.log"), 40)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `pxeforge vm-test` with the shared site and a state directory of the case's own, its report
/// folder named after the case.
fn vm_test(case: &str, args: &[&str]) -> Run {
    vm_test_in(case, &own_state(case), args)
}

/// A state directory of the case's own, holding the shared built images: its build state and
/// events are its own, and its `serve` may run beside another case's (one serve per state
/// directory; under `cargo test` the cases of one process share `prepared()`).
fn own_state(case: &str) -> PathBuf {
    let p = prepared();
    let state = p.work.join(format!("{case}-state"));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(p.state.join("images"), state.join("images")).unwrap();
    state
}

/// `pxeforge vm-test` with the shared site and the state directory `state`.
fn vm_test_in(case: &str, state: &Path, args: &[&str]) -> Run {
    vm_test_on(case, &prepared().site, state, args)
}

/// `pxeforge vm-test` with the site `site` and the state directory `state`.
fn vm_test_on(case: &str, site: &Path, state: &Path, args: &[&str]) -> Run {
    let p = prepared();
    let out = p.work.join(case);
    let _slot = vm_slot();
    let o = Command::new(pxeforge_bin())
        .arg("vm-test")
        .arg("--site")
        .arg(site)
        .arg("--state")
        .arg(state)
        .args(["--installer", "test-installer"])
        .arg("--out")
        .arg(&out)
        .args(if args.contains(&"--timeout") {
            &[][..]
        } else {
            &["--timeout", "240"][..]
        })
        .args(args)
        .output()
        .expect("run pxeforge vm-test");
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report = std::fs::read(out.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout,
        report,
        out,
    }
}

fn assert_full_boot(r: &Run) {
    assert_eq!(r.code, 0, "{}", r.explain());
    assert_eq!(r.report["outcome"], "finished", "{}", r.explain());
    // A new build-state store holds every host as installed: vm-test armed this one first
    // (through the admin API), and the API holds it as installed at the end.
    assert_eq!(r.report["armed"], "installed -> armed", "{}", r.explain());
    assert_eq!(r.report["state_after"], "installed", "{}", r.explain());
    let host = r.report["host"].as_str().unwrap_or("?");
    assert!(
        r.stdout.contains(&format!(
            "pxeforge vm-test: armed {host} (installed -> armed"
        )),
        "{}",
        r.explain()
    );
    assert_eq!(r.report["kernel_fetches"], 1, "{}", r.explain());
    let stages = r.stages();
    for s in [
        "dhcp",
        "script",
        "host_script",
        "kernel",
        "initrd",
        "kernel_running",
        "kickstart",
    ] {
        assert!(
            stages.iter().any(|x| x == s),
            "stage {s} missing from {stages:?}\n{}",
            r.explain()
        );
    }
    let events = r.report["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().any(|e| e["status"] == "finished"),
        "no finished event in the report\n{}",
        r.explain()
    );
}

/// The address the installer got, as it printed it (`pxeforge-installer: address A/P`).
fn installer_address(r: &Run) -> Option<String> {
    r.file("serial.log").lines().find_map(|l| {
        l.split("pxeforge-installer: address ")
            .nth(1)
            .map(|a| a.trim().to_string())
    })
}

#[test]
fn case1_bios_proxy_beside_dnsmasq() {
    if !can_boot(true) {
        return;
    }
    let r = vm_test(
        "case1-bios-proxy",
        &["--host", "vm-bios", "--dhcp", "proxy"],
    );
    assert_full_boot(&r);
    // The address came from dnsmasq (its range .100-.150); pxeforge only added the boot file.
    assert!(
        r.file("dnsmasq.log").contains("DHCPACK("),
        "{}",
        r.explain()
    );
    let addr = installer_address(&r).expect("installer printed its address");
    let last: u8 = addr
        .trim_end_matches("/24")
        .rsplit('.')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap();
    assert!(
        (100..=150).contains(&last),
        "address {addr} is not from dnsmasq's range"
    );
    assert!(
        r.file("serial.log")
            .contains("Filename: http://10.77.0.1:8080/boot.ipxe"),
        "{}",
        r.explain()
    );
}

#[test]
fn case2_uefi_native_pxe_via_proxydhcp() {
    if !can_boot(true) {
        return;
    }
    let r = vm_test(
        "case2-uefi-proxy",
        &["--host", "vm-uefi", "--dhcp", "proxy"],
    );
    assert_full_boot(&r);
    let serial = r.file("serial.log");
    // OVMF's own PXE client fetched iPXE over TFTP, then iPXE went on over HTTP.
    assert!(serial.contains("Start PXE over IPv4"), "{}", r.explain());
    assert!(
        serial.contains("NBP file downloaded successfully"),
        "{}",
        r.explain()
    );
    assert!(r.stages().iter().any(|s| s == "tftp"), "{}", r.explain());
    assert!(serial.contains("iPXE"), "{}", r.explain());
}

#[test]
fn case3_reservation_without_dnsmasq() {
    if !can_boot(false) {
        return;
    }
    let r = vm_test(
        "case3-reservation",
        &["--host", "vm-reserved", "--dhcp", "reservation"],
    );
    assert_full_boot(&r);
    assert_eq!(r.report["dhcp"], "reservation");
    assert!(
        r.file("dnsmasq.log").is_empty(),
        "dnsmasq ran in reservation mode"
    );
    // pxeforge handed out the host's reserved address, to iPXE and to the installer alike.
    assert_eq!(
        installer_address(&r).as_deref(),
        Some("10.77.0.23/24"),
        "{}",
        r.explain()
    );
}

#[test]
fn case4_image_install_checked_from_outside() {
    if !can_boot(true) {
        return;
    }
    let r = vm_test("case4-image", &["--host", "vm-image"]);
    assert_full_boot(&r);
    // The published root.tar and its checksum, as the store holds them ...
    let build = prepared().state.join("images/payload/qemu-image/current");
    let sums = std::fs::read_to_string(build.join("SHA256SUMS")).unwrap();
    let want = sums
        .lines()
        .find(|l| l.ends_with("root.tar"))
        .and_then(|l| l.split_whitespace().next())
        .expect("root.tar in SHA256SUMS")
        .to_string();
    let size = std::fs::metadata(build.join("root.tar")).unwrap().len();
    // ... and what the VM's disk holds now.
    let mut disk = std::fs::File::open(r.out.join("disk.raw")).unwrap();
    let mut head = vec![0u8; size as usize];
    disk.read_exact(&mut head).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&head)),
        want,
        "the disk does not hold the image"
    );
    assert!(
        r.file("serial.log").contains("liveimg checksum ok"),
        "{}",
        r.explain()
    );
}

#[test]
fn case5a_unknown_mac_with_local_policy_gets_no_kernel() {
    if !can_boot(true) {
        return;
    }
    let r = vm_test(
        "case5a-unknown",
        &[
            "--mac",
            "52:54:00:77:00:99",
            "--firmware",
            "bios",
            "--timeout",
            "180",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.explain());
    assert_eq!(r.report["outcome"], "local-boot", "{}", r.explain());
    // An unknown machine has no build state to arm.
    assert!(r.report["armed"].is_null(), "{}", r.explain());
    assert!(
        !r.stdout.contains("pxeforge vm-test: armed"),
        "{}",
        r.explain()
    );
    assert_eq!(r.report["kernel_fetches"], 0, "{}", r.explain());
    let stages = r.stages();
    for s in ["kernel", "initrd", "kickstart", "kernel_running"] {
        assert!(
            !stages.iter().any(|x| x == s),
            "an unknown machine reached {s}\n{}",
            r.explain()
        );
    }
    let serve = r.file("serve.log");
    assert!(
        !serve.contains("vmlinuz") && !serve.contains("initrd"),
        "kernel or initrd served:\n{serve}"
    );
}

#[test]
fn case5b_failing_post_reports_failed_and_exits_1() {
    if !can_boot(true) {
        return;
    }
    let r = vm_test("case5b-postfail", &["--host", "vm-postfail"]);
    assert_eq!(r.code, 1, "{}", r.explain());
    assert_eq!(r.report["outcome"], "failed", "{}", r.explain());
    let reason = r.report["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("exit code 3") && reason.contains("/etc/pxeforge-ready is missing"),
        "reason {reason:?}\n{}",
        r.explain()
    );
    assert!(
        r.stdout.contains("/etc/pxeforge-ready is missing"),
        "vm-test did not print the reason"
    );
    // The kickstart's %onerror report ended the build; the installer's own, more precise report
    // after it is refused (the reason above is from its console line).
    assert!(
        r.file("serve.log").contains("status=failed"),
        "{}",
        r.explain()
    );
    assert!(
        r.file("serial.log")
            .contains("pxeforge-installer: powering off"),
        "{}",
        r.explain()
    );
}

/// The serve log's `host script` lines for `host`: the scripts it was sent, in order.
fn scripts_sent(serve_log: &str, host: &str) -> Vec<String> {
    let key = format!(" host={host} ");
    serve_log
        .lines()
        .filter(|l| l.contains("host script ") && l.contains(&key))
        .filter_map(|l| l.split(" script=\"").nth(1))
        .filter_map(|v| v.split('"').next().map(str::to_string))
        .collect()
}

#[test]
fn case6_install_once_then_local_boot() {
    if !can_boot(true) {
        return;
    }
    // vm-bios again (case 1 boots it too, maybe now): a build state of its own.
    let state = own_state("case6-once");
    let r = vm_test_in(
        "case6-once",
        &state,
        &["--host", "vm-bios", "--expect-local-reboot"],
    );
    assert_full_boot(&r);
    // Installed, rebooted (network first, then disk), and the second boot got the local script.
    let stages = r.stages();
    assert!(
        stages.iter().any(|s| s == "local_reboot"),
        "no local reboot stage in {stages:?}\n{}",
        r.explain()
    );
    let at = |stage: &str| {
        r.report["stages"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["stage"] == stage))
            .and_then(|m| m["at_secs"].as_f64())
    };
    assert!(
        at("local_reboot") > at("event_finished"),
        "the local boot came before finished\n{}",
        r.explain()
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("local reboot") && l.contains("script=\"local\"")),
        "the report does not show the local boot stage\n{}",
        r.explain()
    );
    assert!(r.stdout.contains("kernel fetches: 1"), "{}", r.explain());
    let serve = r.file("serve.log");
    let kernels = serve
        .lines()
        .filter(|l| l.contains("method=GET") && l.contains("vmlinuz") && l.contains("status=200"))
        .count();
    assert_eq!(kernels, 1, "kernel fetches in serve.log\n{serve}");
    assert_eq!(
        scripts_sent(&serve, "vm-bios"),
        ["install", "local"],
        "{}",
        r.explain()
    );
    assert!(
        r.file("serial.log")
            .contains("pxeforge-installer: rebooting"),
        "{}",
        r.explain()
    );
}

/// Case 7 (issue 19): the host boots synced media. The test installer is the `pxeboot` pair of a
/// fixture install tree whose `.treeinfo` productmd wrote (tests/fixtures/releases/make_tree.py);
/// `pxeforge releases sync` verifies and publishes it from a loopback server, and the VM's kernel
/// and initrd then come from this server's releases store, the compose pinned when vm-test armed
/// the host, with `inst.stage2=` naming that tree.
#[test]
fn case7_boots_synced_media() {
    if !can_boot(false) {
        return;
    }
    let productmd = Command::new("python3")
        .args(["-c", "import productmd.treeinfo"])
        .status()
        .is_ok_and(|s| s.success());
    if !productmd || !have("mcopy") || !have("mkfs.vfat") {
        pxeforge_tests::skip(format_args!(
            "case 7 needs python3 with productmd, mtools and dosfstools (scripts/install-deps.sh)"
        ));
        return;
    }
    let p = prepared();
    let case = "case7-synced";
    let state = own_state(case);
    let fixtures = repo_root().join("tests/fixtures/releases");
    let installer = p.state.join("images/test-installer/qemu-bios/current");
    let tree = p.work.join(format!("{case}-tree"));
    let _ = std::fs::remove_dir_all(&tree);
    let made = Command::new("python3")
        .arg(fixtures.join("make_tree.py"))
        .arg(&tree)
        .args(["--seed", "vm-case7"])
        .arg("--kernel")
        .arg(installer.join("vmlinuz"))
        .arg("--initrd")
        .arg(installer.join("initramfs.img"))
        .output()
        .expect("run make_tree.py");
    assert!(
        made.status.success(),
        "make_tree.py: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let compose = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let mut upstream = Command::new("python3")
        .arg(fixtures.join("serve_tree.py"))
        .arg(&tree)
        .arg(p.work.join(format!("{case}-upstream.log")))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start serve_tree.py");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(upstream.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("port line");
    let port = line.trim().trim_start_matches("port ").to_string();
    let site = run_site_named(
        &p.work,
        &format!("{case}-site"),
        &state,
        Some(&format!("http://127.0.0.1:{port}")),
    );
    let sync = Command::new(pxeforge_bin())
        .args(["releases", "sync", "stream9-x86_64", "--site"])
        .arg(&site)
        .arg("--state")
        .arg(&state)
        .output()
        .expect("run pxeforge releases sync");
    let _ = upstream.kill();
    let _ = upstream.wait();
    assert!(
        sync.status.success(),
        "releases sync failed:\n{}{}",
        String::from_utf8_lossy(&sync.stdout),
        String::from_utf8_lossy(&sync.stderr)
    );
    let r = vm_test_on(
        case,
        &site,
        &state,
        &["--host", "vm-reserved", "--dhcp", "reservation"],
    );
    assert_full_boot(&r);
    let tree_url = format!("/releases/stream9-x86_64/{compose}");
    let serve = r.file("serve.log");
    for f in ["images/pxeboot/vmlinuz", "images/pxeboot/initrd.img"] {
        assert!(
            serve
                .lines()
                .any(|l| l.contains(&format!("path={tree_url}/{f} ")) && l.contains("status=200")),
            "{f} was not served from the synced compose {compose}\n{}",
            r.explain()
        );
    }
    assert!(
        !serve.contains("path=/assets/installer/images/pxeboot/"),
        "the upstream tree was used\n{serve}"
    );
    assert!(
        r.file("serial.log")
            .contains(&format!("inst.stage2=http://10.77.0.1:8080{tree_url}")),
        "the kernel line names no inst.stage2 of the synced tree\n{}",
        r.explain()
    );
}
