//! `pxeforge check` and `pxeforge render`: the example site is clean, every kickstart passes
//! pykickstart's validator, and each kind of mistake is reported with its file and line.

use pxeforge_tests::{copy_example_site, have, pxeforge, repo_root};
use std::path::Path;
use std::process::Command;

#[test]
fn example_site_checks_clean() {
    let root = repo_root();
    let (code, out, err) = pxeforge(&["check", "--site", root.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("ok: 4 profiles, 5 hosts"), "{out}");
}

/// Every example host with a kickstart, through `pxeforge render kickstart` (the server's code
/// path), validated by pykickstart for its release: no error and no warning.
#[test]
fn every_example_kickstart_passes_ksvalidator() {
    if !have("ksvalidator") {
        panic!("ksvalidator (pip install pykickstart) is required: scripts/test.sh installs it");
    }
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let hosts = [
        ("52:54:00:00:10:01", "RHEL9"),
        ("52-54-00-00-20-01", "RHEL10"),
        ("b8:ca:3a:6e:10:01", "RHEL9"),
        ("b8:ca:3a:6e:10:02", "RHEL9"),
        ("94:40:c9:11:22:33", "RHEL10"),
    ];
    for (mac, version) in hosts {
        let (code, ks, err) = pxeforge(&[
            "render",
            "kickstart",
            "--mac",
            mac,
            "--site",
            root.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{mac}: {err}");
        let path = dir.path().join(format!("{}.ks", mac.replace(':', "")));
        std::fs::write(&path, &ks).unwrap();
        let out = Command::new("ksvalidator")
            .args(["-v", version])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{mac} ({version}) failed ksvalidator:\n{text}\n---\n{ks}"
        );
        assert!(
            !text.to_lowercase().contains("warning"),
            "{mac} ({version}) warns:\n{text}"
        );
    }
    // The host that must not be reinstalled has no kickstart at all.
    let (code, _, err) = pxeforge(&[
        "render",
        "kickstart",
        "--mac",
        "52:54:00:00:30:01",
        "--site",
        root.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("vm-keep-01 is not installed from a kickstart"),
        "{err}"
    );
}

#[test]
fn render_ipxe_matches_the_platform() {
    let root = repo_root();
    let (code, s, err) = pxeforge(&[
        "render",
        "ipxe",
        "--mac",
        "52:54:00:00:20:01",
        "--platform",
        "efi",
        "--base-url",
        "http://10.0.0.1:8080",
        "--site",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(s.contains("initrd=initrd.img inst.repo="), "{s}");
    // The kickstart URL names the host and carries its build's token (`TOKEN` offline).
    assert!(
        s.contains("inst.ks=http://10.0.0.1:8080/ks/vm-uefi-01?token=TOKEN"),
        "{s}"
    );
}

fn broken(edit: impl FnOnce(&Path)) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    copy_example_site(dir.path());
    edit(dir.path());
    let (code, out, _) = pxeforge(&["check", "--site", dir.path().to_str().unwrap()]);
    (code, out)
}

fn append(p: &Path, s: &str) {
    let mut t = std::fs::read_to_string(p).unwrap_or_default();
    t.push_str(s);
    std::fs::write(p, t).unwrap();
}

#[test]
fn each_mistake_is_named_with_file_and_line() {
    type Edit = Box<dyn FnOnce(&Path)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown key",
            Box::new(|d: &Path| append(&d.join("hosts/lab.toml"), "\n[[host]]\nname = \"n9\"\nmac = \"52:54:00:99:00:01\"\nprofile = \"qemu-bios\"\nrack = 3\n")),
            "hosts/lab.toml:31: error: unknown field `rack`",
        ),
        (
            "duplicate MAC",
            Box::new(|d: &Path| append(&d.join("hosts/lab.toml"), "\n[[host]]\nname = \"n9\"\nmac = \"52-54-00-00-10-01\"\nprofile = \"qemu-bios\"\n")),
            "hosts/lab.toml:29: error: duplicate MAC 52:54:00:00:10:01 (first at hosts/lab.toml:5)",
        ),
        (
            "duplicate name",
            Box::new(|d: &Path| append(&d.join("hosts/rack-a.toml"), "\n[[host]]\nname = \"vm-bios-01\"\nmac = \"52:54:00:99:00:02\"\nprofile = \"qemu-bios\"\n")),
            "hosts/rack-a.toml:24: error: duplicate host name \"vm-bios-01\" (first at hosts/lab.toml:4)",
        ),
        (
            "missing profile",
            Box::new(|d: &Path| append(&d.join("hosts/rack-a.toml"), "\n[[host]]\nname = \"n10\"\nmac = \"52:54:00:99:00:03\"\nprofile = \"dell-r750\"\n")),
            "hosts/rack-a.toml:26: error: host \"n10\" names profile \"dell-r750\", which does not exist",
        ),
        (
            "malformed MAC",
            Box::new(|d: &Path| append(&d.join("hosts/rack-a.toml"), "\n[[host]]\nname = \"n11\"\nmac = [\"52:54:00:99:00:04\", \"52:54:00:99:00\"]\nprofile = \"qemu-bios\"\n")),
            "hosts/rack-a.toml:25: error: host \"n11\": malformed MAC address \"52:54:00:99:00\"",
        ),
        (
            "template that does not render",
            Box::new(|d: &Path| {
                let p = d.join("kickstarts/snippets/users.ks");
                append(&p, "{{ host.vars.team }}\n");
            }),
            "hosts/lab.toml:3: error: host \"vm-bios-01\": kickstart: template ks/centos-stream.ks",
        ),
        (
            "template syntax",
            Box::new(|d: &Path| append(&d.join("templates/local.ipxe"), "{% if %}\n")),
            "templates/local.ipxe:8: error:",
        ),
        (
            "bad TOML",
            Box::new(|d: &Path| append(&d.join("profiles/qemu-bios.toml"), "release = \n")),
            "profiles/qemu-bios.toml:12: error:",
        ),
        (
            "release without settings",
            Box::new(|d: &Path| {
                let p = d.join("pxeforge.toml");
                let t = std::fs::read_to_string(&p).unwrap();
                let cut = t.find("[install.releases.stream10-x86_64]").unwrap();
                let rest = &t[cut..];
                let end = rest.find("[loaders]").unwrap_or(rest.len());
                std::fs::write(&p, format!("{}{}", &t[..cut], &rest[end..])).unwrap();
            }),
            "profiles/qemu-uefi.toml:1: error: profile \"qemu-uefi\" uses release stream10-x86_64, but pxeforge.toml has no [install.releases.stream10-x86_64]",
        ),
        (
            "an aarch64 profile on an x86_64 tree",
            Box::new(|d: &Path| {
                let p = d.join("profiles/qemu-uefi.toml");
                let t = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, t.replace("arch = \"x86_64\"", "arch = \"aarch64\"")).unwrap();
            }),
            "profiles/qemu-uefi.toml:1: error: profile \"qemu-uefi\" is aarch64 but release stream10-x86_64 is an x86_64 tree",
        ),
    ];
    for (what, edit, want) in cases {
        let (code, out) = broken(edit);
        assert_eq!(code, 1, "{what}: check must fail\n{out}");
        assert!(out.contains(want), "{what}: expected {want:?} in:\n{out}");
    }
}

/// DHCP pools per subnet: what the loader refuses, naming the file and line, and how a wave-1
/// `[dhcp.pool]` still loads (with a warning that names `[[dhcp.subnet]]`).
#[test]
fn dhcp_subnets_are_checked_and_the_old_pool_still_loads() {
    let cases: [(&str, &str); 3] = [
        (
            "\n[[dhcp.subnet]]\nnetwork = \"10.5.0.1/24\"\nstart = \"10.5.0.10\"\nend = \"10.5.0.20\"\n",
            "is not A.B.C.D/N",
        ),
        (
            "\n[[dhcp.subnet]]\nnetwork = \"10.5.0.0/24\"\nstart = \"10.5.1.10\"\nend = \"10.5.1.20\"\n",
            "must be inside it",
        ),
        (
            "\n[[dhcp.subnet]]\nnetwork = \"10.5.0.0/16\"\nstart = \"10.5.0.10\"\nend = \"10.5.0.20\"\n\n[[dhcp.subnet]]\nnetwork = \"10.5.7.0/24\"\nstart = \"10.5.7.10\"\nend = \"10.5.7.20\"\n",
            "overlaps",
        ),
    ];
    for (toml, want) in cases {
        let (code, out) = broken(|d| append(&d.join("pxeforge.toml"), toml));
        assert_eq!(code, 1, "{want}: check must fail\n{out}");
        assert!(
            out.contains("pxeforge.toml:") && out.contains(want),
            "{want}:\n{out}"
        );
    }
    let (code, out) = broken(|d| {
        append(
            &d.join("pxeforge.toml"),
            "\n[dhcp.pool]\nstart = \"10.77.0.160\"\nend = \"10.77.0.199\"\nprefix = 24\n",
        )
    });
    assert_eq!(code, 0, "a wave-1 pool still loads\n{out}");
    assert!(
        out.contains("warning") && out.contains("[[dhcp.subnet]]"),
        "{out}"
    );
}

/// A wave-1 site (releases keyed by number with `repo` and `boot_tree`, profiles naming a
/// number) still loads and renders, with a warning naming each new key.
#[test]
fn a_wave_one_site_still_loads_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    copy_example_site(d);
    let p = d.join("pxeforge.toml");
    let t = std::fs::read_to_string(&p).unwrap();
    let cut = t.find("[install.releases.stream9-x86_64]").unwrap();
    let wave1 = r#"[install.releases.9]
repo = "http://mirror.example/9-stream/BaseOS/x86_64/os"
boot_tree = "http://boot.example/9"

[install.releases.10]
repo = "http://mirror.example/10-stream/BaseOS/x86_64/os"
"#;
    // (A wave-1 `tftp.root = "/usr/lib/ipxe"` fails check now, rightly: Debian's ipxe.efi there
    // is a symlink out of the folder; tests/tests/loaders.rs covers it.)
    let t = format!("{}{wave1}", &t[..cut]);
    std::fs::write(&p, t).unwrap();
    for (f, n) in [
        ("qemu-bios", 9),
        ("dell-r650", 9),
        ("qemu-uefi", 10),
        ("hpe-dl380", 10),
    ] {
        let p = d.join(format!("profiles/{f}.toml"));
        let t = std::fs::read_to_string(&p).unwrap();
        let t: String = t
            .lines()
            .map(|l| {
                if l.starts_with("release = ") {
                    format!("release = {n}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&p, t).unwrap();
    }
    let site = d.to_str().unwrap();
    let (code, out, err) = pxeforge(&["check", "--site", site]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "install.releases.9: the version is read from the name (wave-1 form): write version = 9",
        "install.releases.9: boot_tree is read as upstream (wave-1 form)",
        "install.releases.10: repo is read as upstream, the install tree (wave-1 form)",
        "install.releases.10: no arch, x86_64 assumed (wave-1 form): write arch = \"x86_64\"",
        "profiles/qemu-bios.toml:11: warning: release = <number> is the wave-1 form",
    ] {
        assert!(out.contains(want), "expected {want:?} in:\n{out}");
    }
    // The boot media still come from boot_tree, the packages from repo.
    let (code, s, err) = pxeforge(&[
        "render",
        "ipxe",
        "--mac",
        "52:54:00:00:10:01",
        "--base-url",
        "http://10.0.0.1:8080",
        "--site",
        site,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        s.contains("kernel http://boot.example/9/images/pxeboot/vmlinuz "),
        "{s}"
    );
    assert!(
        s.contains("inst.repo=http://mirror.example/9-stream/BaseOS/x86_64/os "),
        "{s}"
    );
    assert!(
        !s.contains("inst.stage2="),
        "not synced: no stage2 of ours\n{s}"
    );
}

/// A release that must be synced and is not: `check` names it once, not once per host (and
/// `serve` does not start on it, as on any error).
#[test]
fn require_synced_is_one_error_in_check() {
    let s = pxeforge_tests::TempSite::new();
    let p = s.site.join("pxeforge.toml");
    let t = std::fs::read_to_string(&p).unwrap().replace(
        "[install.releases.stream9-x86_64]\n",
        "[install.releases.stream9-x86_64]\nrequire_synced = true\n",
    );
    std::fs::write(&p, t).unwrap();
    let site = s.site.to_str().unwrap();
    let (code, out, _) = pxeforge(&["check", "--site", site]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(
        errors,
        ["pxeforge.toml:45: error: release stream9-x86_64 has require_synced = true but was never synced: run `pxeforge releases sync stream9-x86_64`"],
        "{out}"
    );
}
