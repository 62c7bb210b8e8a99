//! The boot service's HTTP endpoints, through the real binary and a real HTTP client.

use pxeforge_tests::{arm, copy_example_site, sha256_hex, Server};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use std::path::Path;

const BIOS_MAC: &str = "52:54:00:00:10:01";
const UEFI_MAC: &str = "52:54:00:00:20:01";
const KEEP_MAC: &str = "52:54:00:00:30:01";
const R650_MAC: &str = "b8:ca:3a:6e:10:02";

struct Fixture {
    _dir: tempfile::TempDir,
    site: std::path::PathBuf,
    assets: std::path::PathBuf,
    state: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    copy_example_site(&site);
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(assets.join("sub")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(assets.join("sub/big.bin"), &big).unwrap();
    std::fs::write(dir.path().join("secret.txt"), b"not for clients").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), assets.join("escape")).unwrap();
    let state = dir.path().join("state");
    // A new store adopts every host as installed: arm them all, as an operator would.
    arm(&site, &state, &["--all", "--yes"]);
    Fixture {
        site,
        assets,
        state,
        _dir: dir,
    }
}

fn start(f: &Fixture) -> Server {
    Server::start(
        &f.site,
        &[
            "--no-tftp",
            "--assets",
            f.assets.to_str().unwrap(),
            "--state",
            f.state.to_str().unwrap(),
        ],
    )
}

/// The `inst.ks=` URL of an install script (it carries the build's token).
fn ks_url(script: &str) -> String {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inst.ks="))
        .unwrap_or_else(|| panic!("no inst.ks= in {script}"))
        .to_string()
}

fn get(c: &Client, url: &str) -> (StatusCode, String) {
    let r = c.get(url).send().unwrap();
    let s = r.status();
    (s, r.text().unwrap())
}

#[test]
fn scripts_for_every_kind_of_machine() {
    let f = fixture();
    let srv = start(&f);
    let c = Client::new();
    let base = format!("http://{}", srv.http);

    let (s, body) = get(&c, &srv.url("/healthz"));
    assert_eq!(s, 200, "{body}");

    let (s, boot) = get(&c, &srv.url("/boot.ipxe"));
    assert_eq!(s, 200);
    assert!(boot.starts_with("#!ipxe"));
    assert!(
        boot.contains(&format!(
            "chain --replace --autofree {base}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&"
        )),
        "{boot}"
    );
    assert!(boot.contains("product=${product:uristring}") && boot.contains("platform=${platform}"));
    assert!(
        boot.contains("exit 1"),
        "bootstrap must end in a local-disk fallback"
    );

    // BIOS install host: CentOS Stream 9, no initrd= (only UEFI needs it), ks at this server.
    let (s, bios) = get(
        &c,
        &srv.url("/ipxe?mac=52-54-00-00-10-01&platform=pcbios&arch=x86_64"),
    );
    assert_eq!(s, 200, "{bios}");
    assert!(bios.contains("kernel https://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os/images/pxeboot/vmlinuz "), "{bios}");
    // The kickstart URL names the host and carries its build's token (128 bits, hex).
    let ks = ks_url(&bios);
    let token = ks
        .strip_prefix(&format!("{base}/ks/vm-bios-01?token="))
        .unwrap_or_else(|| panic!("{bios}"));
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ks}"
    );
    assert!(bios.contains("inst.repo=https://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os"));
    assert!(bios.contains("console=ttyS0,115200n8 net.ifnames=0"));
    assert!(!bios.contains("initrd=initrd.img"), "{bios}");
    assert!(bios.contains("initrd --name initrd.img https://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os/images/pxeboot/initrd.img"));
    assert!(
        bios.contains("sanboot --no-describe --drive 0x80"),
        "fallback to local disk"
    );

    // UEFI host: Stream 10 and initrd= on the kernel line; MAC spelled another way.
    let (s, uefi) = get(&c, &srv.url("/ipxe?mac=525400002001&platform=efi"));
    assert_eq!(s, 200);
    assert!(
        uefi.contains("10-stream/BaseOS/x86_64/os/images/pxeboot/vmlinuz initrd=initrd.img "),
        "{uefi}"
    );

    // A real server model, known by MAC: its profile's console and Stream 10 tree.
    let (s, hpe) = get(&c, &srv.url("/ipxe?mac=94:40:c9:11:22:33&platform=efi"));
    assert_eq!(s, 200);
    assert!(
        hpe.contains("app-a02 (profile hpe-dl380)") && hpe.contains("10-stream"),
        "{hpe}"
    );
    // Known by SMBIOS UUID when it boots from a NIC that is not in the inventory.
    let (s, by_uuid) = get(
        &c,
        &srv.url(
            "/ipxe?mac=02:00:00:00:00:42&uuid=4C4C4544-0042-3510-8051-B4C04F4E3132&platform=efi",
        ),
    );
    assert_eq!(s, 200);
    assert!(by_uuid.contains("db-a01 (profile dell-r650)"), "{by_uuid}");

    // A known host that must not be reinstalled: local boot, no kernel.
    let (s, keep) = get(&c, &srv.url(&format!("/ipxe?mac={KEEP_MAC}")));
    assert_eq!(s, 200);
    assert!(!keep.contains("kernel "), "{keep}");
    assert!(keep.contains("vm-keep-01 is not to be (re)installed") && keep.contains("exit 1"));

    // Unknown host, discover policy in the example site: report + retry, no kernel.
    let (s, unk) = get(
        &c,
        &srv.url("/ipxe?mac=02:00:00:00:00:99&manufacturer=QEMU&product=Standard%20PC"),
    );
    assert_eq!(s, 200);
    assert!(!unk.contains("kernel "), "{unk}");
    assert!(
        unk.contains(&format!("chain --replace --autofree {base}/boot.ipxe")),
        "{unk}"
    );

    // Unknown machine whose SMBIOS facts match the R650 rule: the rule only suggests the R650
    // profile; nothing is installed until an operator approves the machine.
    let r650 = || {
        get(
            &c,
            &srv.url("/ipxe?mac=02-00-00-00-00-65&manufacturer=Dell%20Inc.&product=PowerEdge%20R650xs&platform=efi"),
        )
    };
    let (s, matched) = r650();
    assert_eq!(s, 200);
    assert!(!matched.contains("inst.ks="), "not approved yet: {matched}");
    assert_eq!(get(&c, &srv.url("/ks/02:00:00:00:00:65")).0, 404);
    let (s, body) = srv.admin_post(
        "/api/discovered/02:00:00:00:00:65/approve",
        &serde_json::json!({}),
    );
    assert_eq!(s, 200, "{body}");
    let (s, matched) = r650();
    assert_eq!(s, 200);
    assert!(
        matched.contains("profile dell-r650") && matched.contains("inst.ks="),
        "{matched}"
    );
    let (s, mks) = get(&c, &ks_url(&matched));
    assert_eq!(s, 200, "{mks}");
    assert!(mks.contains("nvme-Dell_BOSS-N1*"), "{mks}");

    // Request values are validated, never pasted: a hostile product string is dropped.
    let (s, evil) = get(
        &c,
        &srv.url("/ipxe?mac=02:00:00:00:00:98&product=x%0Akernel%20http://evil/"),
    );
    assert_eq!(s, 200);
    assert!(!evil.contains("evil"), "{evil}");

    let (s, _) = get(&c, &srv.url("/ipxe?mac=52:54:00:zz:00:01"));
    assert_eq!(s, 400);

    // The inventory and the metrics are on the admin listener only.
    assert_eq!(get(&c, &srv.url("/api/hosts")).0, 404);
    assert_eq!(get(&c, &srv.url("/metrics")).0, 404);
    let (s, hosts) = srv.admin_get("/api/hosts");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    let disc = v["discovered"].as_array().unwrap();
    assert!(
        disc.iter()
            .any(|d| d["mac"] == "02:00:00:00:00:99" && d["facts"]["manufacturer"] == "QEMU"),
        "{hosts}"
    );
    // The approved R650 is a host now, under the default name.
    assert!(
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "mac-020000000065"
                && h["source"] == "approved"
                && h["profile"] == "dell-r650"),
        "{hosts}"
    );
    assert!(
        !disc.iter().any(|d| d["mac"] == "02:00:00:00:00:65"),
        "{hosts}"
    );

    let m = srv.metrics();
    assert!(
        m.contains("pxeforge_http_requests_total{endpoint=\"/ipxe\",status=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains("pxeforge_http_requests_total{endpoint=\"/ipxe\",status=\"400\"} 1"),
        "{m}"
    );
    // Five inventory hosts and the approved R650; the R650 once before its approval.
    assert!(
        m.contains("pxeforge_scripts_served_total{outcome=\"host\"} 6"),
        "{m}"
    );
    assert!(
        m.contains("pxeforge_scripts_served_total{outcome=\"matched\"} 1"),
        "{m}"
    );
}

#[test]
fn kickstarts_by_path_and_by_anaconda_headers() {
    let f = fixture();
    let srv = start(&f);
    let c = Client::new();

    let script = get(&c, &srv.url("/ipxe?mac=52-54-00-00-10-01")).1;
    let (s, ks) = get(&c, &ks_url(&script));
    assert_eq!(s, 200);
    assert!(ks.contains("# Kickstart for vm-bios-01"), "{ks}");
    assert!(
        ks.contains(&format!(
            "network --bootproto=dhcp --device={BIOS_MAC} --hostname=vm-bios-01 --activate"
        )),
        "{ks}"
    );
    assert!(
        ks.contains("ignoredisk --only-use=disk/by-path/pci-0000:00:04.0"),
        "{ks}"
    );

    // An inventory host's kickstart is not served by MAC any more: it needs the token.
    assert_eq!(get(&c, &srv.url("/ks/52:54:00:00:20:01")).0, 403);
    let script = get(&c, &srv.url("/ipxe?mac=52:54:00:00:20:01")).1;
    let (s, ks) = get(&c, &ks_url(&script));
    assert_eq!(s, 200);
    assert!(ks.contains(&format!("network --bootproto=static --device={UEFI_MAC} --ip=10.77.0.21 --netmask=255.255.255.0 --gateway=10.77.0.1 --nameserver=10.77.0.1 --hostname=vm-uefi-01.lab.example --activate")), "{ks}");

    // Unknown MAC: 404, never another host's kickstart. Neither a MAC nor a token: 403.
    // Local-only host: 404. A wrong token: 403.
    assert_eq!(get(&c, &srv.url("/ks/02:00:00:00:00:01")).0, 404);
    assert_eq!(get(&c, &srv.url("/ks/not-a-mac")).0, 403);
    assert_eq!(get(&c, &srv.url(&format!("/ks/{KEEP_MAC}"))).0, 404);
    assert_eq!(get(&c, &srv.url("/ks/db-a01?token=00")).0, 403);

    // inst.ks.sendmac names an inventory host: refused, its kickstart needs the token.
    let r = c
        .get(srv.url("/ks"))
        .header("X-RHN-Provisioning-MAC-0", "eth0 02:00:00:00:00:07")
        .header("X-RHN-Provisioning-MAC-1", format!("eth1 {R650_MAC}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    // A machine that a profile's match rule claimed gets no kickstart before an operator
    // approves it; approved, it is a host whose kickstart needs its build token like any other.
    let claim = "/ipxe?mac=02:00:00:00:00:07&manufacturer=Dell%20Inc.&product=PowerEdge%20R650";
    assert_eq!(get(&c, &srv.url(claim)).0, 200);
    let by_headers = || {
        c.get(srv.url("/ks"))
            .header("X-RHN-Provisioning-MAC-0", "eth0 02:00:00:00:00:07")
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(by_headers(), 404);
    let (s, body) = srv.admin_post(
        "/api/discovered/02:00:00:00:00:07/approve",
        &serde_json::json!({"name": "r650-new"}),
    );
    assert_eq!(s, 200, "{body}");
    let script = get(&c, &srv.url(claim)).1;
    assert_eq!(by_headers(), 403);
    let r = c.get(ks_url(&script)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let ks = r.text().unwrap();
    assert!(ks.contains("--device=02:00:00:00:00:07"), "{ks}");
    assert_eq!(get(&c, &srv.url("/ks")).0, 400);
    let r = c
        .get(srv.url("/ks"))
        .header("X-RHN-Provisioning-MAC-0", "eth0 02:00:00:00:00:08")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn events_are_validated_stored_and_survive_a_restart() {
    let f = fixture();
    let c = Client::new();
    {
        let srv = start(&f);
        let script = get(&c, &srv.url(&format!("/ipxe?mac={BIOS_MAC}"))).1;
        let ks = ks_url(&script);
        let token = ks.split("token=").nth(1).unwrap().to_string();
        assert_eq!(get(&c, &ks).0, 200, "installing");
        let post_as = |body: &str, ct: &str, token: &str| {
            c.post(srv.url("/events"))
                .header("Content-Type", ct)
                .header("Authorization", format!("Bearer {token}"))
                .body(body.to_string())
                .send()
                .unwrap()
                .status()
        };
        let post = |body: &str, ct: &str| post_as(body, ct, &token);
        let ok = format!(
            r#"{{"mac":"{BIOS_MAC}","stage":"install","status":"started","message":"anaconda up"}}"#
        );
        assert_eq!(post(&ok, "application/json"), 201);
        // Without the build's token nothing is accepted.
        assert_eq!(post_as(&ok, "application/json", "0123"), 403);
        let r = c.post(srv.url("/events")).body(ok.clone()).send().unwrap();
        assert_eq!(r.status(), 403);
        // The token may also travel in the URL the kickstart was given.
        let ok2 = "mac=52-54-00-00-10-01&stage=install&status=finished&message=done";
        let r = c
            .post(srv.url(&format!("/events?token={token}")))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(ok2)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(post("{not json", "application/json"), 400);
        assert_eq!(
            post(
                r#"{"mac":"zz","stage":"x","status":"started"}"#,
                "application/json"
            ),
            400
        );
        assert_eq!(
            post(
                &format!(r#"{{"mac":"{BIOS_MAC}","stage":"x","status":"exploded"}}"#),
                "application/json"
            ),
            400
        );
        let huge = format!(
            r#"{{"mac":"{BIOS_MAC}","stage":"x","status":"info","message":"{}"}}"#,
            "a".repeat(100_000)
        );
        assert_eq!(post(&huge, "application/json"), 413);
        // After `finished` the build is over: its token is refused.
        assert_eq!(post(&ok, "application/json"), 403);
        let m = srv.metrics();
        assert!(m.contains("pxeforge_events_received_total 2"), "{m}");
        assert!(m.contains("pxeforge_events_rejected_total 7"), "{m}");
    }
    let srv = start(&f);
    let (s, hosts) = srv.admin_get("/api/hosts");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    let h = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "vm-bios-01")
        .unwrap()
        .clone();
    assert_eq!(h["last_event"]["status"], "finished", "{hosts}");
    assert_eq!(h["last_event"]["message"], "done");
    let other = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "db-a01")
        .unwrap()
        .clone();
    assert!(other["last_event"].is_null());
    assert_eq!(v["hosts"].as_array().unwrap().len(), 5);
}

#[test]
fn assets_with_range_head_etag_and_confinement() {
    let f = fixture();
    let srv = start(&f);
    let c = Client::new();
    let big = std::fs::read(f.assets.join("sub/big.bin")).unwrap();

    let r = c.get(srv.url("/assets/sub/big.bin")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str()
    );
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body = r.bytes().unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(&big));

    let r = c
        .get(srv.url("/assets/sub/big.bin"))
        .header("Range", "bytes=1000-1999")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", big.len()).as_str()
    );
    assert_eq!(&r.bytes().unwrap()[..], &big[1000..2000]);

    let r = c
        .get(srv.url("/assets/sub/big.bin"))
        .header("Range", "bytes=-10")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().unwrap()[..], &big[big.len() - 10..]);

    let r = c
        .get(srv.url("/assets/sub/big.bin"))
        .header("Range", "bytes=99999999-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);

    let r = c.head(srv.url("/assets/sub/big.bin")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str()
    );

    let r = c
        .get(srv.url("/assets/sub/big.bin"))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), 304);

    // Escapes: encoded dot-dot, a symlink out of the root, a directory, a missing file.
    for (path, want) in [
        ("/assets/..%2f..%2fsecret.txt", [403u16, 404]),
        ("/assets/sub/..%2f..%2fsecret.txt", [403, 404]),
        ("/assets/%2e%2e/secret.txt", [403, 404]),
        ("/assets/escape", [403, 403]),
        ("/assets/sub", [404, 404]),
        ("/assets/nope", [404, 404]),
    ] {
        let r = c.get(srv.url(path)).send().unwrap();
        let st = r.status().as_u16();
        let body = r.text().unwrap();
        assert!(want.contains(&st), "{path}: {st}");
        assert!(!body.contains("not for clients"), "{path} leaked the file");
    }
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

#[test]
fn reload_keeps_the_last_good_site_on_a_broken_edit() {
    let f = fixture();
    let srv = start(&f);
    let c = Client::new();
    let new_host =
        "\n[[host]]\nname = \"vm-new-01\"\nmac = \"52:54:00:00:40:01\"\nprofile = \"qemu-bios\"\n";

    // A broken edit: valid host plus a typo'd key. Nothing of it may be applied.
    let lab = f.site.join("hosts/lab.toml");
    let good = std::fs::read_to_string(&lab).unwrap();
    write(&lab, &format!("{good}{new_host}\n[[host]]\nname = \"vm-bad\"\nmac = \"52:54:00:00:40:02\"\nprofle = \"qemu-bios\"\n"));
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("reload refused", 1), "{}", srv.log_text());
    let log = srv.log_text();
    assert!(
        log.contains("hosts/lab.toml:"),
        "errors name the file and line: {log}"
    );
    assert!(log.contains("profle"), "{log}");
    let new = get(&c, &srv.url("/ipxe?mac=52:54:00:00:40:01")).1;
    assert!(
        !new.contains("vm-new-01"),
        "half-loaded a refused site: {new}"
    );
    let old = get(&c, &srv.url("/ipxe?mac=52:54:00:00:10:01")).1;
    assert!(
        old.contains("vm-bios-01") && old.contains("inst.ks="),
        "last good site still serves: {old}"
    );

    write(&lab, &format!("{good}{new_host}"));
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("site reloaded", 1), "{}", srv.log_text());
    // A host added to the inventory while the store exists is a new machine: armed.
    assert!(
        srv.log_text().contains("this load arms 1 host(s)"),
        "{}",
        srv.log_text()
    );
    let new = get(&c, &srv.url("/ipxe?mac=52:54:00:00:40:01")).1;
    assert!(
        new.contains("vm-new-01") && new.contains("inst.ks="),
        "{new}"
    );
    assert_eq!(get(&c, &ks_url(&new)).0, 200);
    let m = srv.metrics();
    assert!(
        m.contains("pxeforge_site_reloads_total{result=\"failed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pxeforge_site_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
}

#[test]
fn serve_refuses_a_broken_site() {
    let f = fixture();
    write(
        &f.site.join("hosts/broken.toml"),
        "[[host]]\nname = \"x\"\nmac = \"nope\"\nprofile = \"qemu-bios\"\n",
    );
    let out = std::process::Command::new(pxeforge_tests::pxeforge_bin())
        .args([
            "serve",
            "--site",
            f.site.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--no-tftp",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hosts/broken.toml:3: error: host \"x\": malformed MAC"),
        "{err}"
    );
}

/// The operator's commands are clients of the admin API: listing, approving a discovered
/// machine into a hosts file, the dry run of a whole profile, cancel, reinstall, pause and
/// resume, events; a wrong token or the boot listener as `--server` is an error that says so.
#[test]
fn operator_commands_through_the_admin_api() {
    let f = fixture();
    let srv = start(&f);
    let c = Client::new();
    // An unknown R650 turns up on the boot network: discovered, its profile suggested.
    let new_mac = "02:00:00:00:00:66";
    let (s, _) = get(
        &c,
        &srv.url(&format!(
            "/ipxe?mac={new_mac}&manufacturer=Dell%20Inc.&product=PowerEdge%20R650&platform=efi"
        )),
    );
    assert_eq!(s, 200);

    let (code, out, err) = srv.cli(&["hosts"]);
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAME "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("vm-bios-01 ") && l.contains(" armed ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(new_mac) && l.contains("discovered") && l.contains("dell-r650")),
        "{out}"
    );
    let (code, out, err) = srv.cli(&["hosts", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("hosts --json is JSON");
    assert_eq!(v["total_discovered"], 1, "{v}");

    // Approved under a name of our choosing, and written to a hosts file of the checkout.
    let file = f.site.join("hosts/rack-b.toml");
    let file_arg = file.to_str().unwrap();
    let (code, out, err) = srv.cli(&[
        "hosts", "approve", new_mac, "--name", "db-b01", "--write", file_arg,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("approved as db-b01 (profile dell-r650)"),
        "{out}"
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains(
            "[[host]]\nname = \"db-b01\"\nmac = \"02:00:00:00:00:66\"\nprofile = \"dell-r650\"\n"
        ),
        "{written}"
    );
    let (code, out, _) = pxeforge_tests::pxeforge(&["check", "--site", f.site.to_str().unwrap()]);
    assert_eq!(code, 0, "the written hosts file must pass check: {out}");
    // The name is in the file already: refused before the server is asked.
    let (code, _, err) = srv.cli(&[
        "hosts",
        "approve",
        "02:00:00:00:00:67",
        "--name",
        "db-b01",
        "--write",
        file_arg,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("already has a host named \"db-b01\""), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
    let (code, out, err) = srv.cli(&["hosts", "show", "db-b01"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("source      approved"), "{out}");

    // A whole profile without --yes: what would be armed, nothing changed, exit 1.
    let (code, out, _) = srv.cli(&["hosts", "cancel", "vm-bios-01"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = srv.cli(&["reinstall", "--profile", "qemu-bios"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing changed: add --yes"), "{out}");
    assert!(out.contains("vm-bios-01: installed -> armed"), "{out}");
    let state = |host: &str| {
        let (s, body) = srv.admin_get(&format!("/api/hosts?host={host}"));
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["hosts"][0]["state"].as_str().unwrap_or("-").to_string()
    };
    assert_eq!(state("vm-bios-01"), "installed");
    let (code, out, err) = srv.cli(&["reinstall", "vm-bios-01"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "vm-bios-01: installed -> armed: installs at its next network boot\n"
    );
    assert_eq!(state("vm-bios-01"), "armed");

    // Paused: the armed host gets its local-disk script; resumed: its install script.
    let script = || get(&c, &srv.url(&format!("/ipxe?mac={BIOS_MAC}"))).1;
    assert_eq!(srv.cli(&["pause"]).0, 0);
    assert!(!script().contains("inst.ks="), "paused: {}", script());
    let (_, out, _) = srv.cli(&["hosts"]);
    assert!(out.contains("INSTALLS PAUSED"), "{out}");
    assert_eq!(srv.cli(&["resume"]).0, 0);
    assert!(script().contains("inst.ks="), "resumed: {}", script());

    let (code, out, err) = srv.cli(&["events", "--host", new_mac, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("events --json is JSON");
    assert_eq!(v["events"][0]["stage"], "discovery", "{v}");

    // A wrong token, and the boot listener mistaken for the admin API.
    let wrong = f.state.join("wrong.token");
    std::fs::write(&wrong, "0123456789abcdef\n").unwrap();
    let admin = format!("http://{}", srv.admin);
    let (code, _, err) = pxeforge_tests::pxeforge(&[
        "hosts",
        "--server",
        &admin,
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("401") && err.contains("wrong.token"), "{err}");
    let boot = format!("http://{}", srv.http);
    let (code, _, err) = pxeforge_tests::pxeforge(&[
        "hosts",
        "--server",
        &boot,
        "--token-file",
        srv.admin_token_file.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("404") && err.contains("not the boot listener"),
        "{err}"
    );
}
