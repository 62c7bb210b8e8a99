//! Discovery before destruction, and the admin API apart from the boot network (issue 14),
//! through the real binary: an unknown machine a match rule claims is only discovered until an
//! operator approves it; its claim cannot be changed by anyone who calls `/ipxe`; the admin API
//! needs its token; pause and the install cap hold.

use pxeforge_tests::{copy_example_site, get, ks_url, script, Server};
use reqwest::blocking::Client;
use std::path::PathBuf;

const NEW_R650: &str = "02:00:00:00:06:50";
const R650_FACTS: &str = "manufacturer=Dell%20Inc.&product=PowerEdge%20R650xs&platform=efi";
const DL380_FACTS: &str = "manufacturer=HPE&product=ProLiant%20DL380%20Gen11&platform=efi";

struct Site {
    _dir: tempfile::TempDir,
    site: PathBuf,
    state: PathBuf,
}

fn site_with(extra_toml: &str) -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    copy_example_site(&site);
    if !extra_toml.is_empty() {
        let p = site.join("pxeforge.toml");
        let mut t = std::fs::read_to_string(&p).expect("pxeforge.toml");
        t.push_str(extra_toml);
        std::fs::write(&p, t).expect("write pxeforge.toml");
    }
    let state = dir.path().join("state");
    Site {
        site,
        state,
        _dir: dir,
    }
}

fn serve(s: &Site) -> Server {
    Server::start(
        &s.site,
        &["--no-tftp", "--state", s.state.to_str().expect("utf-8")],
    )
}

fn has_kernel(script: &str) -> bool {
    script
        .lines()
        .any(|l| l.trim_start().starts_with("kernel "))
}

/// A request body: the JSON text, or an empty object.
fn req_body(text: &str) -> serde_json::Value {
    if text.is_empty() {
        serde_json::json!({})
    } else {
        json(text)
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn an_unknown_r650_gets_no_kernel_until_approved_then_its_kickstart() {
    let s = site_with("");
    let srv = serve(&s);
    let c = Client::new();
    let q = format!("mac={NEW_R650}&{R650_FACTS}");
    let before = script(&c, &srv, &q);
    assert!(
        !has_kernel(&before) && ks_url(&before).is_none(),
        "an unapproved machine must get no kernel and no kickstart:\n{before}"
    );
    // Nor a kickstart by its MAC, as wave 1 served a claimed machine.
    let (code, _) = get(&c, &srv.url(&format!("/ks/{NEW_R650}")));
    assert_eq!(code, 404);
    // The operator sees it, with the profile its facts suggest and who reported them.
    let (code, body) = srv.admin_get("/api/hosts?state=discovered");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let d = v["discovered"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["mac"] == NEW_R650))
        .unwrap_or_else(|| panic!("{NEW_R650} not discovered: {body}"));
    assert_eq!(d["profile"], "dell-r650");
    assert_eq!(d["status"], "discovered");
    assert_eq!(d["last_event"]["remote"], "127.0.0.1", "{d}");

    let (code, body) = srv.admin_post(
        &format!("/api/discovered/{NEW_R650}/approve"),
        &req_body(r#"{"name": "r650-new-01"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["host"]["name"], "r650-new-01");
    assert_eq!(v["host"]["state"], "armed");
    assert_eq!(v["host"]["profile"], "dell-r650");

    let after = script(&c, &srv, &q);
    assert!(has_kernel(&after), "approved: the install script\n{after}");
    let ks = ks_url(&after).expect("a kickstart URL");
    assert!(ks.contains("/ks/r650-new-01?token="), "{ks}");
    let (code, body) = get(&c, &ks);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("nvme-Dell_BOSS-N1"),
        "the R650's disk target:\n{body}"
    );
    // Its history names the operator's address.
    let (code, body) = srv.admin_get("/api/hosts/r650-new-01");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["host"]["state"], "installing");
    let history = v["history"].as_array().expect("history");
    assert!(
        history.iter().any(|t| t["to"] == "armed"
            && t["source"]
                .as_str()
                .is_some_and(|s| s.contains("127.0.0.1"))),
        "{body}"
    );
}

#[test]
fn other_facts_cannot_change_an_approved_claim() {
    let s = site_with("");
    let srv = serve(&s);
    let c = Client::new();
    script(&c, &srv, &format!("mac={NEW_R650}&{R650_FACTS}"));
    let (code, body) = srv.admin_post(
        &format!("/api/discovered/{NEW_R650}/approve"),
        &req_body("{}"),
    );
    assert_eq!(code, 200, "{body}");
    // Someone on the segment claims the MAC is a DL380 now.
    let forged = script(&c, &srv, &format!("mac={NEW_R650}&{DL380_FACTS}"));
    let ks = ks_url(&forged).expect("still the approved host's install script");
    assert!(ks.contains("/ks/mac-020000000650?token="), "{ks}");
    let (code, body) = get(&c, &ks);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("nvme-Dell_BOSS-N1"),
        "the approved R650's disk, not a DL380's:\n{body}"
    );
    // Approving it again (for another profile) is refused.
    let (code, body) = srv.admin_post(
        &format!("/api/discovered/{NEW_R650}/approve"),
        &req_body(r#"{"profile": "hpe-dl380"}"#),
    );
    assert_eq!(code, 409, "{body}");
}

#[test]
fn auto_install_profiles_skip_approval_and_check_says_which() {
    let s = site_with("");
    let p = s.site.join("profiles/dell-r650.toml");
    let t = std::fs::read_to_string(&p).expect("profile");
    std::fs::write(
        &p,
        t.replace(
            "boot = \"install\"",
            "boot = \"install\"\nauto_install = true",
        ),
    )
    .expect("write profile");
    let (code, out, err) =
        pxeforge_tests::pxeforge(&["check", "--site", s.site.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("dell-r650")
            && format!("{out}{err}").contains("auto_install"),
        "check names the zero-touch profiles:\n{out}{err}"
    );
    let srv = serve(&s);
    let c = Client::new();
    let first = script(&c, &srv, &format!("mac={NEW_R650}&{R650_FACTS}"));
    assert!(
        ks_url(&first).is_some(),
        "zero-touch: installs at once\n{first}"
    );
    // The unapproved DL380 profile still waits.
    let dl = script(&c, &srv, &format!("mac=02:00:00:00:03:80&{DL380_FACTS}"));
    assert!(!has_kernel(&dl), "{dl}");
}

#[test]
fn the_admin_api_needs_its_token_and_the_boot_listener_serves_none_of_it() {
    let s = site_with("");
    let srv = serve(&s);
    let c = Client::new();
    let admin = |path: &str| format!("http://{}{path}", srv.admin);
    for path in ["/api/hosts", "/api/status", "/metrics"] {
        let r = c.get(admin(path)).send().expect("GET");
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
        assert_eq!(
            r.headers().get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let r = c
            .get(admin(path))
            .bearer_auth("0".repeat(64))
            .send()
            .expect("GET");
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
    }
    let r = c
        .post(admin("/api/pause"))
        .bearer_auth("nope")
        .send()
        .expect("POST");
    assert_eq!(r.status().as_u16(), 401);
    let (code, body) = srv.admin_get("/api/status");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["paused"],
        false,
        "the wrong-token pause changed nothing"
    );
    // The boot network: no inventory, no events, no state changes, no counters.
    for path in ["/api/hosts", "/api/status", "/metrics"] {
        let (code, _) = get(&c, &srv.url(path));
        assert_eq!(code, 404, "{path} on the boot listener");
    }
    let r = c.post(srv.url("/api/pause")).send().expect("POST");
    assert!(matches!(r.status().as_u16(), 404 | 405));
    // The token file is the service's alone.
    let token_file = s.state.join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("token file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_token_file_others_can_read_stops_the_server() {
    let s = site_with("");
    std::fs::create_dir_all(&s.state).expect("state");
    let token_file = s.state.join("admin.token");
    std::fs::write(&token_file, "secret\n").expect("token");
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&token_file).expect("meta").permissions(),
        0o644,
    );
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let out = std::process::Command::new(pxeforge_tests::pxeforge_bin())
        .args(["serve", "--site"])
        .arg(&s.site)
        .args([
            "--no-tftp",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--state",
        ])
        .arg(&s.state)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.token") && err.contains("644"), "{err}");
}

#[test]
fn a_remote_admin_listener_without_tls_is_refused() {
    let s = site_with("");
    let out = std::process::Command::new(pxeforge_tests::pxeforge_bin())
        .args(["serve", "--site"])
        .arg(&s.site)
        .args([
            "--no-tftp",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "--state",
        ])
        .arg(&s.state)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

#[test]
fn pause_makes_every_host_local_at_once_and_resume_undoes_it() {
    let s = site_with("");
    let hosts = ["vm-bios-01", "vm-uefi-01"];
    for h in hosts {
        pxeforge_tests::arm(&s.site, &s.state, &[h]);
    }
    let srv = serve(&s);
    let c = Client::new();
    let macs = ["52:54:00:00:10:01", "52:54:00:00:20:01"];
    for m in macs {
        assert!(ks_url(&script(&c, &srv, &format!("mac={m}"))).is_some());
    }
    let (code, body) = srv.admin_post("/api/pause", &req_body(""));
    assert_eq!(
        (code, json(&body)["paused"].clone()),
        (200, serde_json::json!(true)),
        "{body}"
    );
    for m in macs {
        let s = script(&c, &srv, &format!("mac={m}"));
        assert!(
            !has_kernel(&s) && ks_url(&s).is_none(),
            "paused: local\n{s}"
        );
    }
    assert!(srv.metrics().contains("pxeforge_installs_paused 1"));
    let (code, _) = srv.admin_post("/api/resume", &req_body(""));
    assert_eq!(code, 200);
    for m in macs {
        assert!(ks_url(&script(&c, &srv, &format!("mac={m}"))).is_some());
    }
}

#[test]
fn reject_keeps_a_machine_local_and_adopt_keeps_its_disk() {
    let s = site_with("");
    let srv = serve(&s);
    let c = Client::new();
    let (a, b) = ("02:00:00:00:0a:01", "02:00:00:00:0a:02");
    script(&c, &srv, &format!("mac={a}&{R650_FACTS}"));
    script(&c, &srv, &format!("mac={b}&{R650_FACTS}"));
    let (code, body) = srv.admin_post(&format!("/api/discovered/{a}/reject"), &req_body(""));
    assert_eq!(code, 200, "{body}");
    let (code, body) = srv.admin_get("/api/hosts?state=rejected");
    assert_eq!(code, 200);
    assert_eq!(json(&body)["discovered"][0]["mac"], a, "{body}");
    assert!(!has_kernel(&script(
        &c,
        &srv,
        &format!("mac={a}&{R650_FACTS}")
    )));
    let (code, body) = srv.admin_post(
        &format!("/api/discovered/{b}/adopt"),
        &req_body(r#"{"name": "moved-r650"}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["host"]["state"], "installed");
    let local = script(&c, &srv, &format!("mac={b}&{R650_FACTS}"));
    assert!(!has_kernel(&local), "adopted: its disk is kept\n{local}");
    // A machine that never asked cannot be approved; nor a bad name.
    let (code, _) = srv.admin_post("/api/discovered/02:00:00:00:0a:09/approve", &req_body("{}"));
    assert_eq!(code, 404);
    let (code, _) = srv.admin_post(
        &format!("/api/discovered/{a}/approve"),
        &req_body(r#"{"name": "bad_name"}"#),
    );
    assert_eq!(code, 400);
}

#[test]
fn the_install_cap_holds_and_frees_a_slot_when_an_install_ends() {
    let s = site_with("");
    let p = s.site.join("pxeforge.toml");
    let t = std::fs::read_to_string(&p).expect("settings");
    assert!(t.contains("\n[install]\n"));
    std::fs::write(
        &p,
        t.replace("\n[install]\n", "\n[install]\nmax_installing = 2\n"),
    )
    .expect("settings");
    let hosts = ["vm-bios-01", "vm-uefi-01", "db-a01"];
    for h in hosts {
        pxeforge_tests::arm(&s.site, &s.state, &[h]);
    }
    let srv = serve(&s);
    let c = Client::new();
    let macs = [
        "52:54:00:00:10:01",
        "52:54:00:00:20:01",
        "b8:ca:3a:6e:10:01",
    ];
    let scripts: Vec<String> = macs
        .iter()
        .map(|m| script(&c, &srv, &format!("mac={m}")))
        .collect();
    let started: Vec<&String> = scripts.iter().filter(|s| ks_url(s).is_some()).collect();
    assert_eq!(started.len(), 2, "{scripts:#?}");
    let waiting = &scripts[2];
    assert!(
        waiting.contains("waits for an install slot") && waiting.contains("sleep"),
        "{waiting}"
    );
    // The first one's install ends: the third starts.
    let ks = ks_url(&scripts[0]).expect("ks");
    assert_eq!(get(&c, &ks).0, 200);
    let token = ks.split("token=").nth(1).expect("token").to_string();
    let r = c
        .post(srv.url("/events"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"mac": macs[0], "stage": "post", "status": "finished"}))
        .send()
        .expect("event");
    assert_eq!(r.status().as_u16(), 201);
    assert!(ks_url(&script(&c, &srv, &format!("mac={}", macs[2]))).is_some());
}

#[test]
fn a_host_installing_too_long_is_reported_stuck() {
    let s = site_with("");
    let p = s.site.join("pxeforge.toml");
    let t = std::fs::read_to_string(&p).expect("settings");
    std::fs::write(
        &p,
        t.replace("\n[install]\n", "\n[install]\nstuck_after_secs = 1\n"),
    )
    .expect("settings");
    pxeforge_tests::arm(&s.site, &s.state, &["vm-bios-01"]);
    let srv = serve(&s);
    let c = Client::new();
    let ks = ks_url(&script(&c, &srv, "mac=52:54:00:00:10:01")).expect("install script");
    assert_eq!(get(&c, &ks).0, 200, "installing now");
    assert!(
        srv.wait_log("install stuck", 1),
        "no stuck report:\n{}",
        srv.log_text()
    );
    assert!(srv.metrics().contains("pxeforge_installs_stuck 1"));
    let (_, body) = srv.admin_get("/api/status");
    assert_eq!(json(&body)["stuck"], 1, "{body}");
}

#[test]
fn the_admin_api_over_tls() {
    if !pxeforge_tests::have("openssl") {
        pxeforge_tests::skip("openssl is not installed: no certificate for the TLS test");
        return;
    }
    let s = site_with("");
    // A CA, and the server's certificate signed by it (webpki refuses a CA certificate as the
    // server's own, and so does any careful client).
    let d = s.site.clone();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "admin.key",
                "-out",
                "admin.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "admin.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "admin.crt",
    ]);
    let cert = d.join("ca.crt");
    let p = s.site.join("pxeforge.toml");
    let mut t = std::fs::read_to_string(&p).expect("settings");
    t.push_str("\n[admin]\ntls_cert = \"admin.crt\"\ntls_key = \"admin.key\"\n");
    std::fs::write(&p, t).expect("settings");
    let srv = serve(&s);
    assert!(
        srv.stdout
            .iter()
            .any(|l| l.contains("admin listening on") && l.contains("(https,")),
        "{:?}",
        srv.stdout
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("pem");
    let tls = Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let url = format!("https://{}/api/status", srv.admin);
    let r = tls
        .get(&url)
        .bearer_auth(&srv.admin_token)
        .send()
        .expect("GET over TLS");
    assert_eq!(r.status().as_u16(), 200);
    let r = tls.get(&url).send().expect("GET over TLS");
    assert_eq!(
        r.status().as_u16(),
        401,
        "TLS is no substitute for the token"
    );
    // Plain HTTP to the TLS port gets no answer from the API.
    let plain = Client::new()
        .get(format!("http://{}/api/status", srv.admin))
        .bearer_auth(&srv.admin_token)
        .send();
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));
}
