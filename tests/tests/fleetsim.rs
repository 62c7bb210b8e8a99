//! `pxeforge fleet-sim` at small N: 20 generated hosts, armed through the admin API,
//! boot through every stage against the real server (DHCP in the simulation's private network
//! namespace when root), with no failure; each is installed once (kickstart and events with its
//! build token) and gets the local-boot script when it boots again (`--reboot`), by the report,
//! by the admin API's journal (fleet-sim checks it) and by the server's own build-state store. No timing is asserted; the numbers belong to
//! bench/fleet.

use pxeforge_tests::{is_root, pxeforge, repo_root};

const STAGES: &[&str] = &[
    "tftp ipxe binary",
    "GET /boot.ipxe",
    "GET /ipxe?mac=",
    "kernel (http)",
    "initrd (http)",
    "GET /ks/HOST?token",
    "POST /events x2",
    "second boot: local",
];
const DHCP_STAGES: &[&str] = &["dhcp (firmware)", "dhcp (ipxe)"];

/// The count column of a stage's row in the report.
fn stage_count(report: &str, stage: &str) -> Option<usize> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(stage))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

const HOSTS: usize = 20;

fn simulate(dhcp: &str) -> String {
    let root = repo_root();
    let work = tempfile::tempdir().unwrap();
    let (code, out, err) = pxeforge(&[
        "fleet-sim",
        "--site",
        root.to_str().unwrap(),
        "--hosts",
        "20",
        "--concurrency",
        "8",
        "--kernel-size",
        "1M",
        "--initrd-size",
        "3M",
        "--dhcp",
        dhcp,
        "--reboot",
        "--workdir",
        work.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "fleet-sim failed\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("hosts: 20, booted: 20, failures: 0"), "{out}");
    assert!(err.contains("fleet-sim: armed 20 hosts"), "{err}");
    assert!(out.contains("build state: 20 armed, 20 installed"), "{out}");
    assert!(
        out.contains("second boot: 20 of 20 installed hosts got the local-boot script"),
        "{out}"
    );
    for stage in STAGES {
        assert_eq!(
            stage_count(&out, stage),
            Some(20),
            "stage {stage:?} in:\n{out}"
        );
    }
    if is_root() {
        for stage in DHCP_STAGES {
            assert_eq!(
                stage_count(&out, stage),
                Some(20),
                "stage {stage:?} in:\n{out}"
            );
        }
    } else {
        pxeforge_tests::skip(
            "the DHCP stages of the fleet simulation need root (private network namespace)",
        );
        assert!(err.contains("SKIP: DHCP stage"), "{err}");
    }
    installed_once(&work.path().join("state/buildstate.db"));
    out
}

/// The server's own record: every simulated host ends installed, having gone armed →
/// installing → installed exactly once (one kickstart fetch, one `finished`), and holds no token.
fn installed_once(db: &std::path::Path) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    let rows: Vec<(String, String, bool, i64, i64)> = conn
        .prepare(
            "SELECT h.host, h.state, h.token IS NOT NULL,
                    (SELECT COUNT(*) FROM transitions t WHERE t.host = h.host
                        AND t.to_state = 'installing'),
                    (SELECT COUNT(*) FROM transitions t WHERE t.host = h.host
                        AND t.from_state = 'installing' AND t.to_state = 'installed')
             FROM hosts h WHERE h.host LIKE 'sim-%' ORDER BY h.host",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), HOSTS, "{rows:?}");
    for (host, state, has_token, installing, installed) in &rows {
        assert_eq!(
            (state.as_str(), *has_token, *installing, *installed),
            ("installed", false, 1, 1),
            "{host}: state, token held, installs started, installs finished; all: {rows:?}"
        );
    }
}

#[test]
fn twenty_hosts_boot_with_proxy_dhcp() {
    simulate("proxy");
}

#[test]
fn twenty_hosts_boot_with_reservation_dhcp() {
    simulate("reservation");
}

#[test]
fn a_server_that_never_starts_is_an_error_not_a_result() {
    let root = repo_root();
    // `/bin/true serve ...` exits at once.
    let (code, out, err) = pxeforge(&[
        "fleet-sim",
        "--site",
        root.to_str().unwrap(),
        "--hosts",
        "2",
        "--server-bin",
        "/bin/true",
    ]);
    assert_ne!(code, 0, "stdout:\n{out}");
    assert!(err.contains("did not become ready"), "{err}");
    assert!(!err.contains("fleet-sim: armed"), "{err}");
    assert!(!out.contains("failures: 0"), "{out}");
}

#[test]
fn a_server_without_the_admin_api_is_an_error_not_a_result() {
    let root = repo_root();
    // It says it is ready, but names no admin listener: nothing can be armed or checked.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("pxeforge-no-admin");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'pxeforge: http listening on 127.0.0.1:9'\necho 'pxeforge: ready'\nexec sleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, out, err) = pxeforge(&[
        "fleet-sim",
        "--site",
        root.to_str().unwrap(),
        "--hosts",
        "2",
        "--no-netns",
        "--server-bin",
        bin.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "stdout:\n{out}");
    assert!(err.contains("no `admin listening on` line"), "{err}");
    assert!(!out.contains("failures: 0"), "{out}");
}

/// The install cap holds with the whole fleet armed at once: 20 hosts booting together against
/// `--max-installing 5` all install, but never more than five at a time (by the simulated
/// hosts' count, which fleet-sim turns into a failing exit, and by the server's
/// `GET /api/status`), and some of them really were held back with the wait script. A server
/// that ignored the cap sends no wait script (waits 0) and lets all 20 install at once.
#[test]
fn the_install_cap_holds_with_twenty_hosts_armed() {
    const CAP: usize = 5;
    let root = repo_root();
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("report.json");
    let (code, out, err) = pxeforge(&[
        "fleet-sim",
        "--site",
        root.to_str().unwrap(),
        "--hosts",
        "20",
        "--concurrency",
        "20",
        "--max-installing",
        "5",
        // Each install holds its slot for half a second, so all 20 hosts ask for their script
        // while the first five are still installing: the cap must hold the others back.
        "--install-ms",
        "500",
        "--no-netns",
        "--kernel-size",
        "256K",
        "--initrd-size",
        "1M",
        "--stage-timeout",
        "120",
        "--workdir",
        work.path().join("sim").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "fleet-sim failed\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("hosts: 20, booted: 20, failures: 0"), "{out}");
    assert!(out.contains("build state: 20 armed, 20 installed"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let at_once = &report["installs_at_once"];
    assert_eq!(at_once["cap"].as_u64(), Some(CAP as u64), "{report:#}");
    let max = at_once["max"].as_u64().unwrap_or(u64::MAX);
    assert!(
        (1..=CAP as u64).contains(&max),
        "installs at once {max}, cap {CAP}: {report:#}"
    );
    assert!(
        out.contains(&format!("installs at once: max {max} (cap {CAP})")),
        "{out}"
    );
    // The server's own count was read during the run, and it held the same cap.
    assert!(at_once["server_polls"].as_u64() > Some(0), "{report:#}");
    assert_eq!(
        at_once["server_cap"].as_u64(),
        Some(CAP as u64),
        "{report:#}"
    );
    assert!(
        at_once["server_max"].as_u64() <= Some(CAP as u64),
        "{report:#}"
    );
    // 20 hosts asking at once against 5 slots: unless the cap held some back, it did nothing.
    let waits = report["waits"].as_u64().unwrap_or(0);
    assert!(waits > 0, "no host waited for a slot: {report:#}");
    assert!(
        out.contains(&format!("waits for an install slot: {waits} (")),
        "{out}"
    );
    installed_once(&work.path().join("sim/state/buildstate.db"));
}
