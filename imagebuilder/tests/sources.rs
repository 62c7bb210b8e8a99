//! Base root sources: tarballs (refusing entries that escape the root), OCI layouts (whiteouts),
//! and device nodes carried into every output as entries.

mod common;
use common::*;
use pxeforge_imagebuilder as ib;
use std::io::Write;
use std::process::Command;

const PROFILE: &str = "arch = \"x86_64\"\nfirmware = \"bios\"\ndisk = \"/dev/vda\"\n";

enum E<'a> {
    Dir(&'a str, u32, u32, u32),
    File(&'a str, &'a [u8], u32, u32, u32),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str, u32, u32, u32),
}

/// A tar archive written header by header, so that names the tar crate would refuse can be made.
fn tarball(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n, m, u, g) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*m);
                h.set_uid(*u as u64);
                h.set_gid(*g as u64);
                (n, b"")
            }
            E::File(n, d, m, u, g) => {
                h.set_mode(*m);
                h.set_uid(*u as u64);
                h.set_gid(*g as u64);
                (n, d)
            }
            E::Sym(n, t) | E::Hard(n, t) => {
                h.set_entry_type(if matches!(e, E::Sym(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.as_gnu_mut().unwrap().linkname[..t.len()].copy_from_slice(t.as_bytes());
                (n, b"")
            }
            E::Char(n, ma, mi, g) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o620);
                h.set_gid(*g as u64);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                (n, b"")
            }
        };
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn tarball_entries_leaving_the_root_are_refused_by_name() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    let cases: Vec<(&str, Vec<E>)> = vec![
        ("../evil", vec![E::File("../evil", b"x", 0o644, 0, 0)]),
        (
            "etc/../../evil",
            vec![
                E::Dir("etc", 0o755, 0, 0),
                E::File("etc/../../evil", b"x", 0o644, 0, 0),
            ],
        ),
        (
            "/etc/passwd",
            vec![E::File("/etc/passwd", b"x", 0o644, 0, 0)],
        ),
        (
            "usr/esc",
            vec![
                E::Dir("usr", 0o755, 0, 0),
                E::Sym("usr/esc", "../../../etc"),
            ],
        ),
        ("hl", vec![E::Hard("hl", "../outside")]),
        (
            "lnk/passwd",
            vec![
                E::Sym("lnk", "/etc"),
                E::File("lnk/passwd", b"x", 0o644, 0, 0),
            ],
        ),
    ];
    for (i, (entry, entries)) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        site.write(&format!("{name}.tar.gz"), gzip(&tarball(entries)));
        site.write(
            &format!("images/{name}.toml"),
            format!(
                "profiles = [\"vm\"]\noutputs = [\"tar\"]\n[base]\ntarball = \"{name}.tar.gz\"\n"
            ),
        );
        let err = site.build(&name, &p, false).unwrap_err().to_string();
        assert!(err.contains(&format!("{entry:?}")), "case {entry}: {err}");
        assert!(ib::store::list(&site.state()).is_empty());
    }
    // Links that stay inside the root are fine, relative or absolute.
    let ok = tarball(&[
        E::Dir("usr", 0o755, 0, 0),
        E::Dir("usr/bin", 0o755, 0, 0),
        E::Sym("usr/bin/sh", "../../bin/busybox"),
        E::Sym("abs", "/etc/x"),
    ]);
    site.write("ok.tar.zst", zstd::encode_all(&ok[..], 3).unwrap());
    site.write(
        "images/ok.toml",
        "profiles = [\"vm\"]\noutputs = [\"tar\"]\n[base]\ntarball = \"ok.tar.zst\"\n",
    );
    site.build("ok", &p, false).unwrap();
}

#[test]
fn oci_layers_apply_in_order_with_whiteouts() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    let l1 = gzip(&tarball(&[
        E::Dir("etc", 0o755, 0, 0),
        E::File("etc/gone", b"1", 0o644, 0, 0),
        E::File("etc/kept", b"1", 0o644, 0, 0),
        E::Dir("var", 0o755, 0, 0),
        E::Dir("var/cache", 0o755, 0, 0),
        E::File("var/cache/old1", b"1", 0o644, 0, 0),
        E::Dir("var/cache/sub", 0o755, 0, 0),
        E::File("var/cache/sub/old2", b"1", 0o644, 0, 0),
        E::File("etc/replaced", b"lower", 0o644, 0, 0),
    ]));
    let l2 = tarball(&[
        E::File("etc/.wh.gone", b"", 0o644, 0, 0),
        E::File("var/cache/.wh..wh..opq", b"", 0o644, 0, 0),
        E::File("var/cache/new", b"2", 0o600, 7, 8),
        E::File("etc/replaced", b"upper", 0o644, 0, 0),
    ]);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":{}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        sha(&config),
        config.len(),
        sha(&l1),
        l1.len(),
        sha(&l2),
        l2.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
        sha(manifest.as_bytes()),
        manifest.len()
    );
    for blob in [&config, &l1, &l2, &manifest.as_bytes().to_vec()] {
        site.write(&format!("oci/blobs/sha256/{}", sha(blob)), blob);
    }
    site.write("oci/index.json", index);
    site.write("oci/oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#);
    site.write("images/oci.toml", "profiles = [\"vm\"]\noutputs = [\"tar\"]\n[tar]\ncompression = \"none\"\n[base]\noci = \"oci\"\noci_ref = \"latest\"\n");
    let out = site.build("oci", &p, false).unwrap();

    let listing = run_ok(
        Command::new("tar")
            .arg("-tvf")
            .arg(out.dir.join("root.tar"))
            .arg("--numeric-owner"),
    );
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "etc/",
            "etc/kept",
            "etc/replaced",
            "var/",
            "var/cache/",
            "var/cache/new"
        ],
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw------- 7/8") && l.ends_with("var/cache/new")),
        "{listing}"
    );
    let replaced = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(out.dir.join("root.tar"))
            .arg("etc/replaced"),
    );
    assert_eq!(replaced, "upper");
}

#[test]
fn device_nodes_and_owners_carried_into_every_output() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    let base = tarball(&[
        E::Dir("dev", 0o755, 0, 0),
        E::Char("dev/tty0", 4, 0, 5),
        E::Dir("home", 0o755, 0, 0),
        E::Dir("home/u", 0o700, 1000, 1000),
        E::File("home/u/f", b"data", 0o640, 1000, 1000),
        E::Hard("home/u/g", "home/u/f"),
    ]);
    site.write("base.tar", &base);
    site.write(
        "images/dev.toml",
        "profiles = [\"vm\"]\noutputs = [\"initramfs\", \"tar\", \"squashfs\", \"ext4\"]\nsource_date_epoch = 1234567890\n[initramfs]\ncompression = \"none\"\n[base]\ntarball = \"base.tar\"\n\
         [[device]]\npath = \"/dev/console\"\nkind = \"c\"\nmajor = 5\nminor = 1\n[[device]]\npath = \"/dev/sda\"\nkind = \"b\"\nmajor = 8\nminor = 0\nmode = 0o660\ngid = 6\n",
    );
    let out = site.build("dev", &p, false).unwrap();

    // cpio (the initramfs)
    let cpio = run_ok(Command::new("sh").arg("-c").arg(format!(
        "cpio -itv --numeric-uid-gid < {}",
        out.dir.join("initramfs.img").display()
    )));
    let has = |listing: &str, pre: &str, name: &str| {
        listing
            .lines()
            .any(|l| l.starts_with(pre) && l.ends_with(name))
    };
    assert!(has(&cpio, "crw------- ", "dev/console"), "{cpio}");
    assert!(
        cpio.lines()
            .any(|l| l.contains(" 5,") && l.ends_with("dev/console")),
        "{cpio}"
    );
    assert!(has(&cpio, "brw-rw---- ", "dev/sda"), "{cpio}");
    assert!(has(&cpio, "crw--w---- ", "dev/tty0"), "{cpio}");
    assert!(
        cpio.lines()
            .any(|l| l.contains(" 1000 ") && l.ends_with("home/u/f")),
        "{cpio}"
    );

    // tar
    let t = run_ok(
        Command::new("tar")
            .arg("-tvzf")
            .arg(out.dir.join("root.tar.gz"))
            .arg("--numeric-owner"),
    );
    assert!(
        t.lines().any(|l| l.starts_with("crw------- 0/0")
            && l.contains("5,1")
            && l.ends_with("dev/console")),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("-rw-r----- 1000/1000") && l.ends_with("home/u/f")),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("hrw-r----- 1000/1000")
                && l.ends_with("home/u/g link to home/u/f")),
        "{t}"
    );

    // squashfs
    let s = run_ok(
        Command::new("unsquashfs")
            .arg("-lln")
            .arg(out.dir.join("root.squashfs")),
    );
    assert!(
        s.lines().any(|l| l.starts_with("crw------- 0/0")
            && l.contains("5,  1")
            && l.ends_with("/dev/console")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("brw-rw---- 0/6") && l.ends_with("/dev/sda")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("drwx------ 1000/1000") && l.ends_with("/home/u")),
        "{s}"
    );

    // ext4
    let ext4 = out.dir.join("root.ext4");
    let stat = |p: &str| {
        run_ok(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("stat {p}"))
                .arg(&ext4),
        )
    };
    let c = stat("/dev/console");
    assert!(
        c.contains("character special")
            && c.contains("Mode:  0600")
            && c.contains("Device major/minor number: 05:01"),
        "{c}"
    );
    let f = stat("/home/u/f");
    assert!(
        f.contains("User:  1000   Group:  1000")
            && f.contains("Mode:  0640")
            && f.contains("Links: 2"),
        "{f}"
    );
    assert!(f.contains("mtime: 0x499602d2:00000000"), "{f}");

    // Nothing was created as a device node on the build host.
    for e in walkdir::WalkDir::new(site.dir()).follow_links(false) {
        let e = e.unwrap();
        use std::os::unix::fs::FileTypeExt;
        let t = e.file_type();
        assert!(
            !t.is_char_device() && !t.is_block_device(),
            "{} is a device node",
            e.path().display()
        );
    }
}

#[test]
fn dir_base_with_kernel_in_boot_and_forced_owner() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    site.write("root/boot/vmlinuz-9.9", b"not really a kernel");
    site.write("root/usr/lib/modules/9.9/vmlinuz", b"not really a kernel");
    site.write("root/etc/hostname", b"x\n");
    std::os::unix::fs::symlink("hostname", site.dir().join("root/etc/name")).unwrap();
    site.write("images/d.toml", "profiles = [\"vm\"]\noutputs = [\"kernel\", \"tar\"]\n[base]\ndir = \"root\"\nowner = [0, 0]\n");
    let out = site.build("d", &p, false).unwrap();
    assert_eq!(
        std::fs::read(out.dir.join("vmlinuz")).unwrap(),
        b"not really a kernel"
    );
    let t = run_ok(
        Command::new("tar")
            .arg("-tvzf")
            .arg(out.dir.join("root.tar.gz"))
            .arg("--numeric-owner"),
    );
    assert!(
        t.lines()
            .all(|l| l.split_whitespace().nth(1) == Some("0/0")),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("etc/name -> hostname")),
        "{t}"
    );
}
