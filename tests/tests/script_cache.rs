//! Rendered `/ipxe` scripts kept in memory (server/src/script_cache.rs): a kept script is the
//! bytes a fresh render gives, and every change it depends on drops it — a reload, a build-state
//! change through the admin API or by the offline `pxeforge reinstall --state`, a publish in
//! the image store — while the number kept stays under `limits.script_cache_entries`.

use pxeforge_tests::{get, ks_url, script, Server};
use reqwest::blocking::Client;
use std::path::Path;

const BIOS_MAC: &str = "52:54:00:00:10:01";
const QUERY: &str = "mac=52:54:00:00:10:01&platform=pcbios";

use pxeforge_tests::TempSite as Site;

fn site() -> Site {
    Site::new()
}

fn serve(s: &Site) -> Server {
    s.serve()
}

/// A counter or gauge of `/metrics` (0 when absent).
fn metric(srv: &Server, name: &str) -> u64 {
    srv.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn hits(srv: &Server) -> u64 {
    metric(srv, "pxeforge_script_cache_hits_total")
}

/// Fetches the script until it satisfies `done`: a publish reaches the server through a file
/// watcher, after the rename that made it. Gives up after 400 tries (a watcher that never
/// reports fails the test).
fn script_until(c: &Client, srv: &Server, query: &str, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..400 {
        last = script(c, srv, query);
        if done(&last) {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the script never changed:\n{last}");
}

/// An installed host: the first request renders, the second is answered from memory with the
/// same bytes; arming it through the admin API drops the kept script at once.
#[test]
fn a_kept_script_is_the_rendered_one_and_an_admin_reinstall_drops_it() {
    let s = site();
    let srv = serve(&s);
    let c = Client::new();
    let first = script(&c, &srv, QUERY);
    assert!(
        ks_url(&first).is_none(),
        "adopted hosts boot locally:\n{first}"
    );
    let before = hits(&srv);
    let second = script(&c, &srv, QUERY);
    assert_eq!(first, second, "a kept script must be the rendered bytes");
    assert_eq!(
        hits(&srv),
        before + 1,
        "the second request was not a cache hit"
    );
    // The same request with another platform is another script.
    let efi = script(&c, &srv, "mac=52:54:00:00:10:01&platform=efi");
    assert_eq!(hits(&srv), before + 1, "another platform must not hit");
    assert!(!efi.is_empty());
    let (code, body) = srv.admin_post(
        "/api/reinstall",
        &serde_json::json!({ "hosts": ["vm-bios-01"] }),
    );
    assert_eq!(code, 200, "{body}");
    let armed = script(&c, &srv, QUERY);
    assert!(
        ks_url(&armed).is_some(),
        "an armed host must get its install script:\n{armed}"
    );
    // Each request of an armed host is decided again (it may change its record).
    let again = script(&c, &srv, QUERY);
    assert_eq!(ks_url(&armed), ks_url(&again));
    let log = srv.log_text();
    assert!(
        log.matches("host script").count() >= 5,
        "every request, kept or not, logs its host script line:\n{log}"
    );
}

/// `pxeforge reinstall --state DIR` writes the store from another process: the running
/// server's next request sees it.
#[test]
fn an_offline_reinstall_drops_kept_scripts() {
    let s = site();
    let srv = serve(&s);
    let c = Client::new();
    let local = script(&c, &srv, QUERY);
    assert_eq!(script(&c, &srv, QUERY), local);
    let kept = hits(&srv);
    assert!(kept >= 1, "the second request was not a cache hit");
    pxeforge_tests::arm(&s.site, &s.state, &["vm-bios-01"]);
    let armed = script(&c, &srv, QUERY);
    assert!(
        ks_url(&armed).is_some(),
        "the offline reinstall was not seen at the next request:\n{armed}"
    );
}

/// A reload (SIGHUP) swaps the catalog: a kept script of the old site is never served again.
#[test]
fn a_reload_drops_kept_scripts() {
    let s = site();
    let srv = serve(&s);
    let c = Client::new();
    let old = script(&c, &srv, QUERY);
    assert_eq!(script(&c, &srv, QUERY), old);
    let p = s.site.join("templates/local.ipxe");
    let text = std::fs::read_to_string(&p).expect("local.ipxe");
    std::fs::write(&p, format!("{text}\necho pxeforge: reloaded template\n")).expect("write");
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        srv.wait_log("site reloaded", 1),
        "no reload in the log:\n{}",
        srv.log_text()
    );
    let new = script(&c, &srv, QUERY);
    assert!(
        new.contains("reloaded template"),
        "the script of the old site was served after the reload:\n{new}"
    );
}

/// A build laid out as the builder publishes it: files, `SHA256SUMS`, then `current` moved to it
/// by a rename.
fn publish(state: &Path, id: &str) {
    let dir = state.join("images/rescue/qemu-bios");
    let build = dir.join(id);
    std::fs::create_dir_all(&build).expect("build dir");
    let mut sums = String::new();
    for name in ["vmlinuz", "initramfs.img"] {
        let data = format!("{name} of {id}");
        std::fs::write(build.join(name), &data).expect("file");
        sums.push_str(&format!(
            "{}  {name}\n",
            pxeforge_tests::sha256_hex(data.as_bytes())
        ));
    }
    std::fs::write(build.join("SHA256SUMS"), sums).expect("sums");
    let tmp = dir.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(id, &tmp).expect("link");
    std::fs::rename(&tmp, dir.join("current")).expect("rename");
}

/// A diskless host's script names the current build of its image: a publish (by another
/// process, `pxeforge build`) drops the kept script.
#[test]
fn a_publish_drops_kept_scripts() {
    let s = site();
    let p = s.site.join("profiles/qemu-bios.toml");
    let text = std::fs::read_to_string(&p).expect("profile");
    std::fs::write(
        &p,
        text.replace(
            "boot = \"install\"",
            "boot = \"diskless\"\nimage = \"rescue\"",
        ),
    )
    .expect("profile");
    publish(&s.state, "build-1");
    let srv = serve(&s);
    let c = Client::new();
    let first = script(&c, &srv, QUERY);
    assert!(first.contains("build build-1"), "{first}");
    let before = hits(&srv);
    assert_eq!(script(&c, &srv, QUERY), first);
    assert_eq!(
        hits(&srv),
        before + 1,
        "the second request was not a cache hit"
    );
    publish(&s.state, "build-2");
    script_until(&c, &srv, QUERY, |t| t.contains("build build-2"));
}

/// Unknown MACs are never kept, and inventory hosts asked for under many base URLs (a client
/// makes them up with its Host header) keep at most `limits.script_cache_entries` scripts.
#[test]
fn the_cache_stays_within_its_bound() {
    let s = site();
    let conf = s.site.join("pxeforge.toml");
    let text = std::fs::read_to_string(&conf).expect("pxeforge.toml");
    std::fs::write(
        &conf,
        format!("{text}\n[limits]\nscript_cache_entries = 3\n"),
    )
    .expect("write");
    let srv = serve(&s);
    let c = Client::new();
    for i in 0..50u32 {
        let mac = format!("02:aa:00:00:{:02x}:{:02x}", i / 256, i % 256);
        let (code, _) = get(&c, &srv.url(&format!("/ipxe?mac={mac}")));
        assert_eq!(code, 200);
    }
    assert_eq!(metric(&srv, "pxeforge_script_cache_entries"), 0);
    for i in 0..20u32 {
        let r = c
            .get(srv.url(&format!("/ipxe?mac={BIOS_MAC}")))
            .header("Host", format!("boot{i}.example"))
            .send()
            .expect("GET /ipxe");
        assert_eq!(r.status().as_u16(), 200);
    }
    // The example site derives the base URL from the Host header: 20 keys, 3 kept.
    let kept = metric(&srv, "pxeforge_script_cache_entries");
    assert_eq!(kept, 3, "scripts kept under a bound of 3");
}
