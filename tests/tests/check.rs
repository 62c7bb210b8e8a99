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
                let cut = t.find("[install.releases.10]").unwrap();
                std::fs::write(&p, &t[..cut]).unwrap();
            }),
            "profiles/qemu-uefi.toml:1: error: profile \"qemu-uefi\" uses release 10, but pxeforge.toml has no [install.releases.10]",
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
