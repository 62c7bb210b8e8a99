//! Nothing lost on a bad day (issue 17): a corrupt event store is moved aside rather than
//! stopping every service, and a full state filesystem stops events, not boots.

use pxeforge_tests::{copy_example_site, Server};
use reqwest::blocking::Client;

fn site() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    copy_example_site(&site);
    (dir, site)
}

#[test]
fn a_corrupt_event_store_is_moved_aside_and_boots_go_on() {
    let (dir, site) = site();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    let garbage = vec![0x5au8; 16384];
    std::fs::write(state.join("events.db"), &garbage).expect("garbage");
    let srv = Server::start(
        &site,
        &["--no-tftp", "--state", state.to_str().expect("utf-8")],
    );
    let c = Client::new();
    let r = c
        .get(srv.url("/ipxe?mac=02:00:00:00:17:01"))
        .send()
        .expect("GET /ipxe");
    assert_eq!(r.status().as_u16(), 200);
    let aside: Vec<_> = std::fs::read_dir(&state)
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("events.db.corrupt-")
        })
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the corrupt file is kept beside the new one"
    );
    assert_eq!(std::fs::read(aside[0].path()).expect("kept"), garbage);
    assert!(srv.log_text().contains("corrupt store moved aside"));
    assert!(
        srv.metrics()
            .contains("pxeforge_state_moved_aside_total{store=\"events\"} 1"),
        "{}",
        srv.metrics()
    );
}

#[test]
fn a_build_state_store_that_is_garbage_is_not_moved_aside() {
    let (dir, site) = site();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::write(state.join("buildstate.db"), vec![0x5au8; 16384]).expect("garbage");
    let _srv = Server::start(
        &site,
        &["--no-tftp", "--state", state.to_str().expect("utf-8")],
    );
    assert!(state.join("buildstate.db").exists());
    let moved = std::fs::read_dir(&state)
        .expect("ls")
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("buildstate.db.corrupt")
        });
    assert!(
        !moved,
        "build state that cannot be read arms nothing; it is never replaced"
    );
}

/// The state directory on a 1 MiB tmpfs: once it is full, events answer 503 and scripts are
/// still served; once space is back, events are stored again, with no restart.
#[test]
fn a_full_state_filesystem_stops_events_not_boots() {
    if !pxeforge_tests::is_root() {
        pxeforge_tests::skip(
            "faults::a_full_state_filesystem_stops_events_not_boots: needs root to mount a tmpfs",
        );
        return;
    }
    let (dir, site) = site();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&state)
        .status()
        .expect("mount");
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(state.clone());
    pxeforge_tests::arm(&site, &state, &["vm-bios-01"]);
    let srv = Server::start(
        &site,
        &["--no-tftp", "--state", state.to_str().expect("utf-8")],
    );
    let c = Client::new();
    let script = c
        .get(srv.url("/ipxe?mac=52:54:00:00:10:01"))
        .send()
        .expect("GET")
        .text()
        .expect("script");
    let ks = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inst.ks="))
        .expect("install script")
        .to_string();
    let token = ks.split("token=").nth(1).expect("token").to_string();
    assert_eq!(c.get(&ks).send().expect("ks").status().as_u16(), 200);
    let event = |msg: &str| {
        c.post(srv.url("/events"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"mac": "52:54:00:00:10:01", "stage": "post", "status": "progress", "message": msg}))
            .send()
            .expect("event")
            .status()
            .as_u16()
    };
    assert_eq!(event("before"), 201);
    // Fill the filesystem.
    let filler = state.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    let mut codes = Vec::new();
    for i in 0..20 {
        codes.push(event(&format!("while full {i} {}", "x".repeat(3000))));
    }
    assert!(codes.contains(&503), "a full disk answers 503: {codes:?}");
    assert!(codes.iter().all(|c| *c == 201 || *c == 503), "{codes:?}");
    // Boots are still served: scripts of known and unknown machines.
    for q in [
        "mac=52:54:00:00:20:01",
        "mac=02:00:00:00:17:02",
        "mac=52:54:00:00:10:01",
    ] {
        let r = c.get(srv.url(&format!("/ipxe?{q}"))).send().expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{q}");
    }
    std::fs::remove_file(&filler).expect("free space");
    assert_eq!(
        event("after"),
        201,
        "recovers on its own once space is back"
    );
}
