//! kill -9 under load: `pxeforge fleet-sim --kill-after` kills its server with SIGKILL while
//! hosts are mid-boot and starts it again on the same addresses, site and state. Every event
//! answered 201 must be in the store afterwards, no address may be ACKed to two MACs (reservation
//! DHCP, in the simulation's private network namespace: root only), and every host must finish.
//! fleet-sim makes the checks and fails the run; this test reads its report.

use pxeforge_tests::{is_root, pxeforge, repo_root};

const HOSTS: usize = 60;
/// A third of the fleet finishes before the kill; with 16 booting at once and installs of
/// 300 ms, about 16 hosts are between their first DHCP and their `finished` when it lands.
const KILL_AFTER: usize = 20;

#[test]
fn a_fleet_rides_through_kill_9_of_its_server() {
    let root = repo_root();
    let work = tempfile::tempdir().expect("tempdir");
    let json = work.path().join("report.json");
    let hosts = HOSTS.to_string();
    let kill_after = KILL_AFTER.to_string();
    let mut args = vec![
        "fleet-sim",
        "--site",
        root.to_str().expect("utf-8 repository path"),
        "--hosts",
        &hosts,
        "--concurrency",
        "16",
        "--kernel-size",
        "256K",
        "--initrd-size",
        "1M",
        // Installs overlap, so the kill finds hosts at every stage, `installing` ones among them.
        "--install-ms",
        "300",
        "--kill-after",
        &kill_after,
        "--down-ms",
        "1000",
        "--reboot",
        "--stage-timeout",
        "120",
    ];
    let sim = work.path().join("sim");
    let (sim, json_s) = (
        sim.to_str().expect("utf-8 temp path"),
        json.to_str().expect("utf-8 temp path"),
    );
    args.extend(["--workdir", sim, "--json", json_s]);
    if is_root() {
        args.extend(["--dhcp", "reservation"]);
    } else {
        // Without root there is no namespace for ports 67/68: the events and the hosts are
        // still checked, the leases are not.
        pxeforge_tests::skip(
            "kill -9: the lease check (no address ACKed to two MACs) needs root (reservation DHCP \
             in a private network namespace); running the rest with --no-netns",
        );
        args.push("--no-netns");
    }
    let (code, out, err) = pxeforge(&args);
    assert_eq!(code, 0, "fleet-sim failed\nstdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("FAILED"), "{out}");

    // Every host finishes, after the restart too.
    assert!(
        out.contains(&format!("hosts: {HOSTS}, booted: {HOSTS}, failures: 0")),
        "{out}"
    );
    assert!(
        out.contains(&format!("build state: {HOSTS} armed, {HOSTS} installed")),
        "{out}"
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let kill = &report["kill"];

    // The kill was sent mid-storm and the server came back.
    assert_eq!(kill["sent"], true, "{kill:#}");
    assert_eq!(kill["error"], serde_json::Value::Null, "{kill:#}");
    let at_kill = kill["finished_at_kill"].as_u64().unwrap_or(0) as usize;
    assert!(
        (KILL_AFTER..HOSTS).contains(&at_kill),
        "finished at the kill: {kill:#}"
    );
    assert!(
        kill["in_flight"].as_u64() > Some(0),
        "nobody was booting at the kill: {kill:#}"
    );
    let (old, new) = (kill["old_pid"].as_u64(), kill["new_pid"].as_u64());
    assert!(new.is_some() && new != old, "{kill:#}");
    assert!(
        out.contains(&format!(
            "kill -9: after {at_kill} hosts finished ({} booting), pid {} killed, down 1.0 s, pid {} ready",
            kill["in_flight"], kill["old_pid"], kill["new_pid"]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "hosts finished after the restart: {}",
            HOSTS - at_kill
        )),
        "{out}"
    );
    // The outage was felt: some hosts repeated requests that failed at the connection.
    assert!(kill["retries"].as_u64() > Some(0), "{kill:#}");

    // Every event answered 201 is in the store: two per host, some before the kill.
    let answered = kill["events_answered"].as_u64().unwrap_or(0);
    assert_eq!(answered, 2 * HOSTS as u64, "{kill:#}");
    assert!(
        kill["events_answered_before_kill"].as_u64() > Some(0),
        "{kill:#}"
    );
    assert_eq!(kill["events_missing"], serde_json::json!([]), "{kill:#}");
    assert_eq!(kill["unreadable_ids"], 0, "{kill:#}");
    assert!(
        out.contains(&format!(
            "in the store afterwards: {answered} of {answered}"
        )),
        "{out}"
    );

    // No address ACKed to two MACs, and leases.db agrees with the ACKs.
    if is_root() {
        let dhcp = &kill["dhcp"];
        assert_eq!(dhcp["doubles"], serde_json::json!([]), "{dhcp:#}");
        assert_eq!(dhcp["lease_conflicts"], serde_json::json!([]), "{dhcp:#}");
        assert!(dhcp["lease_rows"].is_u64(), "leases.db not read: {dhcp:#}");
        // Each host's firmware and iPXE are ACKed its reserved address, at least once each.
        assert_eq!(dhcp["addresses"].as_u64(), Some(HOSTS as u64), "{dhcp:#}");
        assert!(dhcp["acks"].as_u64() >= Some(2 * HOSTS as u64), "{dhcp:#}");
        assert!(out.contains("none to two MACs"), "{out}");
    } else {
        assert!(
            out.contains("dhcp leases: not checked (no reservation-mode DHCP in this run)"),
            "{out}"
        );
    }
}

/// fleet-sim refuses a kill that cannot fall mid-run rather than running without one.
#[test]
fn a_kill_after_the_whole_fleet_is_refused() {
    let root = repo_root();
    let (code, out, err) = pxeforge(&[
        "fleet-sim",
        "--site",
        root.to_str().expect("utf-8 repository path"),
        "--hosts",
        "4",
        "--kill-after",
        "4",
        "--no-netns",
    ]);
    assert_ne!(code, 0, "stdout:\n{out}");
    assert!(
        err.contains("--kill-after 4: must be between 1 and"),
        "{err}"
    );
}
