//! `pxeforge fleet-sim` at small N: 20 generated hosts boot through every stage against the
//! real server (DHCP in the simulation's private network namespace when root), with no failure.
//! No timing is asserted; the numbers belong to bench/fleet.

use pxeforge_tests::{is_root, pxeforge, repo_root};

const STAGES: &[&str] = &[
    "tftp ipxe binary",
    "GET /boot.ipxe",
    "GET /ipxe?mac=",
    "kernel (http)",
    "initrd (http)",
    "GET /ks/MAC",
    "POST /events x2",
];
const DHCP_STAGES: &[&str] = &["dhcp (firmware)", "dhcp (ipxe)"];

/// The count column of a stage's row in the report.
fn stage_count(report: &str, stage: &str) -> Option<usize> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(stage))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn simulate(dhcp: &str) -> String {
    let root = repo_root();
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
    ]);
    assert_eq!(code, 0, "fleet-sim failed\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("hosts: 20, booted: 20, failures: 0"), "{out}");
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
    out
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
    assert!(!out.contains("failures: 0"), "{out}");
}
