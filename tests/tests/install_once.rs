//! Install once: host build state, per-build tokens and authenticated events, through the real
//! binary. A host is armed (`pxeforge reinstall`, or a raised `generation`), installs once, and
//! boots its local disk from then on; nothing in the TOML is edited for that.

use pxeforge_tests::{get, ks_url, script, Server};
use reqwest::blocking::Client;

const BIOS_MAC: &str = "52:54:00:00:10:01";

use pxeforge_tests::TempSite as Site;

fn site() -> Site {
    Site::new()
}

fn serve(s: &Site) -> Server {
    s.serve()
}

fn reinstall(s: &Site, args: &[&str]) -> (i32, String) {
    pxeforge_tests::reinstall(&s.site, &s.state, args)
}

fn arm(s: &Site, host: &str) {
    let (code, out) = reinstall(s, &[host]);
    assert_eq!(code, 0, "{out}");
}

fn token_of(ks: &str) -> String {
    ks.split("token=")
        .nth(1)
        .expect("token in the URL")
        .to_string()
}

fn post_event(c: &Client, srv: &Server, token: Option<&str>, status: &str) -> u16 {
    let body = format!(r#"{{"mac":"{BIOS_MAC}","stage":"install","status":"{status}"}}"#);
    let mut req = c
        .post(srv.url("/events"))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    req.send().expect("POST").status().as_u16()
}

fn is_local(script: &str) -> bool {
    script.contains("is not to be (re)installed") && !script.contains("kernel ")
}

fn state_of(s: &Site, host: &str) -> String {
    let db = rusqlite::Connection::open_with_flags(
        s.state.join("buildstate.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open buildstate.db");
    db.query_row("SELECT state FROM hosts WHERE host = ?1", [host], |r| {
        r.get(0)
    })
    .expect("record")
}

#[test]
fn an_empty_store_adopts_every_host_as_installed() {
    let s = site();
    let srv = serve(&s);
    let c = Client::new();
    for mac in [BIOS_MAC, "52:54:00:00:20:01", "b8:ca:3a:6e:10:02"] {
        let sc = script(&c, &srv, &format!("mac={mac}"));
        assert!(
            is_local(&sc),
            "a new store must not reinstall the fleet: {sc}"
        );
    }
    assert_eq!(state_of(&s, "vm-bios-01"), "installed");
}

#[test]
fn finished_with_the_token_ends_the_install_without_editing_toml() {
    let s = site();
    arm(&s, "vm-bios-01");
    let srv = serve(&s);
    let c = Client::new();
    let sc = script(&c, &srv, &format!("mac={BIOS_MAC}&platform=pcbios"));
    let ks = ks_url(&sc).expect("armed: the install script");
    // Serving the script again changes nothing: same token, still armed.
    let again = script(&c, &srv, &format!("mac={BIOS_MAC}&platform=pcbios"));
    assert_eq!(ks_url(&again).as_deref(), Some(ks.as_str()));
    assert_eq!(state_of(&s, "vm-bios-01"), "armed");
    let token = token_of(&ks);
    // Without the token, the kickstart is refused.
    assert_eq!(get(&c, &srv.url("/ks/vm-bios-01")).0, 403);
    assert_eq!(get(&c, &srv.url("/ks/vm-bios-01?token=0123")).0, 403);
    let r = c.get(&ks).send().expect("GET ks");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let body = r.text().expect("ks");
    assert!(
        body.contains(&format!("Authorization: Bearer {token}")),
        "{body}"
    );
    assert_eq!(state_of(&s, "vm-bios-01"), "installing");
    // `finished` without the token, or with another, is refused and changes nothing.
    assert_eq!(post_event(&c, &srv, None, "finished"), 403);
    assert_eq!(
        post_event(
            &c,
            &srv,
            Some("00000000000000000000000000000000"),
            "finished"
        ),
        403
    );
    assert_eq!(state_of(&s, "vm-bios-01"), "installing");
    assert_eq!(post_event(&c, &srv, Some(&token), "progress"), 201);
    // A message cannot forge a log line: control characters are escaped in the log.
    let forged = format!(
        r#"{{"mac":"{BIOS_MAC}","stage":"install","status":"info","message":"ok\nFORGED install event host=db-a01 status=finished"}}"#
    );
    let r = c
        .post(srv.url("/events"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {token}"))
        .body(forged)
        .send()
        .expect("POST");
    assert_eq!(r.status(), 201);
    assert_eq!(post_event(&c, &srv, Some(&token), "finished"), 201);
    assert_eq!(state_of(&s, "vm-bios-01"), "installed");
    let after = script(&c, &srv, &format!("mac={BIOS_MAC}"));
    assert!(is_local(&after), "{after}");
    assert_eq!(get(&c, &ks).0, 403);
    // The build is over: only its last event, sent again, is still answered (see below).
    assert_eq!(post_event(&c, &srv, Some(&token), "started"), 403);
    // No token ever reaches the log, and no client text starts a line of its own.
    let log = srv.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged log line:\n{log}"
    );
    assert!(!log.contains(&token), "a token leaked into the log:\n{log}");
    assert!(
        log.contains("build state") && log.contains("finished event"),
        "{log}"
    );
}

#[test]
fn a_kickstart_fetch_from_a_second_address_kills_the_token() {
    let s = site();
    arm(&s, "vm-bios-01");
    let srv = serve(&s);
    let c = Client::new();
    let ks = ks_url(&script(&c, &srv, &format!("mac={BIOS_MAC}"))).expect("install script");
    assert_eq!(get(&c, &ks).0, 200);
    // A second fetch from the bound address is fine (installers retry).
    assert_eq!(get(&c, &ks).0, 200);
    // The same URL from another loopback address: a stolen token.
    let thief = Client::builder()
        .local_address(Some("127.0.0.2".parse().expect("addr")))
        .build()
        .expect("client");
    assert_eq!(get(&thief, &ks).0, 403);
    assert_eq!(state_of(&s, "vm-bios-01"), "failed");
    assert_eq!(get(&c, &ks).0, 403, "the token is dead for everyone");
    assert_eq!(post_event(&c, &srv, Some(&token_of(&ks)), "finished"), 403);
    assert!(is_local(&script(&c, &srv, &format!("mac={BIOS_MAC}"))));
    let log = srv.log_text();
    assert!(
        log.contains("kickstart fetched from a second address"),
        "an alert names what happened: {log}"
    );
}

#[test]
fn reinstall_rearms_and_a_whole_profile_needs_yes() {
    let s = site();
    let srv = serve(&s);
    let c = Client::new();
    assert!(is_local(&script(&c, &srv, &format!("mac={BIOS_MAC}"))));
    // A running server sees the change at the next request.
    arm(&s, "vm-bios-01");
    let sc = script(&c, &srv, &format!("mac={BIOS_MAC}"));
    assert!(ks_url(&sc).is_some(), "{sc}");
    let (code, out) = reinstall(&s, &["--profile", "dell-r650"]);
    assert_ne!(code, 0);
    assert!(out.contains("--yes"), "{out}");
    assert_eq!(
        state_of(&s, "db-a01"),
        "installed",
        "nothing changed without --yes"
    );
    let (code, out) = reinstall(&s, &["--profile", "dell-r650", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(state_of(&s, "db-a01"), "armed");
    let (code, out) = reinstall(&s, &["no-such-host"]);
    assert_ne!(code, 0);
    assert!(out.contains("no-such-host"), "{out}");
}

fn set_generation(s: &Site, g: u64) {
    let p = s.site.join("hosts/lab.toml");
    let text = std::fs::read_to_string(&p).expect("hosts");
    let mut out = String::new();
    let mut in_bios = false;
    for line in text.lines() {
        if line.trim_start().starts_with("generation") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("name = \"vm-bios-01\"") {
            in_bios = true;
        } else if in_bios && line.starts_with("profile") {
            out.push_str(&format!("generation = {g}\n"));
            in_bios = false;
        }
    }
    std::fs::write(&p, out).expect("write hosts");
}

#[test]
fn generation_rearms_when_raised_never_when_lowered_and_state_survives() {
    let s = site();
    set_generation(&s, 1);
    let srv = serve(&s);
    let c = Client::new();
    assert!(
        is_local(&script(&c, &srv, &format!("mac={BIOS_MAC}"))),
        "adopted"
    );
    // Raising it (as a git commit would) and reloading arms the host.
    set_generation(&s, 2);
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("site reloaded", 1), "{}", srv.log_text());
    assert!(
        srv.log_text().contains("this load arms 1 host(s)"),
        "{}",
        srv.log_text()
    );
    let ks = ks_url(&script(&c, &srv, &format!("mac={BIOS_MAC}"))).expect("armed");
    assert_eq!(get(&c, &ks).0, 200);
    assert_eq!(post_event(&c, &srv, Some(&token_of(&ks)), "finished"), 201);
    // Lowering it never arms; a reload and a restart keep every state.
    set_generation(&s, 1);
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("site reloaded", 2), "{}", srv.log_text());
    assert!(is_local(&script(&c, &srv, &format!("mac={BIOS_MAC}"))));
    arm(&s, "app-a02");
    drop(srv);
    let srv = serve(&s);
    assert!(is_local(&script(&c, &srv, &format!("mac={BIOS_MAC}"))));
    assert_eq!(state_of(&s, "vm-bios-01"), "installed");
    assert_eq!(state_of(&s, "app-a02"), "armed");
    assert!(ks_url(&script(&c, &srv, "mac=94:40:c9:11:22:33")).is_some());
    // The same generation again: still nothing to arm.
    set_generation(&s, 2);
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("site reloaded", 1), "{}", srv.log_text());
    assert!(is_local(&script(&c, &srv, &format!("mac={BIOS_MAC}"))));
}

#[test]
fn an_unreadable_store_arms_nothing_and_says_why() {
    let s = site();
    std::fs::create_dir_all(&s.state).expect("state");
    std::fs::write(
        s.state.join("buildstate.db"),
        b"garbage where the build state should be, long enough to not look empty.........",
    )
    .expect("garbage");
    let srv = serve(&s);
    let c = Client::new();
    let sc = script(&c, &srv, &format!("mac={BIOS_MAC}"));
    assert!(is_local(&sc), "{sc}");
    assert_eq!(get(&c, &srv.url("/ks/vm-bios-01?token=0123")).0, 503);
    let log = srv.log_text();
    assert!(
        log.contains("buildstate.db") && log.contains("no host will be installed"),
        "{log}"
    );
    let (code, out) = reinstall(&s, &["vm-bios-01"]);
    assert_ne!(code, 0, "reinstall must not paper over the store: {out}");
}

#[test]
fn a_host_recognised_by_uuid_gets_its_kickstart() {
    let s = site();
    arm(&s, "db-a01");
    let srv = serve(&s);
    let c = Client::new();
    // Booting from a NIC that is not in the inventory: known by its SMBIOS UUID.
    let sc = script(
        &c,
        &srv,
        "mac=02:00:00:00:00:42&uuid=4C4C4544-0042-3510-8051-B4C04F4E3132&platform=efi",
    );
    let ks = ks_url(&sc).expect("install script");
    assert!(ks.contains("/ks/db-a01?token="), "{ks}");
    let (code, body) = get(&c, &ks);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# Kickstart for db-a01"), "{body}");
    // Its templates see the MAC it booted with.
    assert!(body.contains("02:00:00:00:00:42"), "{body}");
}

/// The server is killed after it applied `finished` but before its answer left: the installer
/// sends the same event again (the example kickstart retries with curl) and must be answered
/// 201, not 403, or its `%post` fails an install that is done. Nothing else is accepted with
/// the spent token.
#[test]
fn the_last_event_sent_again_is_answered_the_same() {
    let s = site();
    arm(&s, "vm-bios-01");
    let srv = serve(&s);
    let c = Client::new();
    let ks = ks_url(&script(&c, &srv, &format!("mac={BIOS_MAC}"))).expect("install script");
    assert_eq!(get(&c, &ks).0, 200);
    let token = token_of(&ks);
    assert_eq!(post_event(&c, &srv, Some(&token), "finished"), 201);
    assert_eq!(state_of(&s, "vm-bios-01"), "installed");
    assert_eq!(
        post_event(&c, &srv, Some(&token), "finished"),
        201,
        "the retry"
    );
    assert_eq!(state_of(&s, "vm-bios-01"), "installed");
    assert_eq!(post_event(&c, &srv, Some(&token), "progress"), 403);
    assert_eq!(post_event(&c, &srv, Some(&token), "failed"), 403);
    assert!(is_local(&script(&c, &srv, &format!("mac={BIOS_MAC}"))));
}
