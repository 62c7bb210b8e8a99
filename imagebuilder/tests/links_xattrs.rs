//! Hard links and extended attributes through every output: a hard link whose name sorts before
//! its target (what `podman export` writes), file capabilities and SELinux labels carried from
//! PAX `SCHILY.xattr.*` records, and a real Debian root made by `mmdebstrap`.

mod common;
use common::*;
use pxeforge_imagebuilder as ib;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROFILE: &str = "arch = \"x86_64\"\nfirmware = \"bios\"\ndisk = \"/dev/vda\"\n";

/// `cap_net_raw=ep` as the kernel stores it (VFS_CAP_REVISION_2): what `setcap cap_net_raw+ep`
/// writes on Debian's ping.
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const LABEL: &[u8] = b"system_u:object_r:ping_exec_t:s0";

const LONG_DIR: &str = "usr/share/a-directory-name-long-enough-to-need-more-than-the-hundred-bytes";
const LONG: &str = "usr/share/a-directory-name-long-enough-to-need-more-than-the-hundred-bytes/of-a-tar-name-field";

const ALL_OUTPUTS: &str = "outputs = [\"initramfs\", \"tar\", \"squashfs\", \"ext4\"]\n\
    [initramfs]\ncompression = \"none\"\n[tar]\ncompression = \"none\"\n";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// One fixture member: path, content (None: a directory) or hard link target, PAX xattrs.
enum M<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], &'a [(&'a str, &'a [u8])]),
    Link(&'a str, &'a str),
}

/// A tar layer written with the tar crate, xattrs as PAX `SCHILY.xattr.*` records before their
/// member (as GNU tar --xattrs, podman and buildah write them).
fn layer(members: &[M]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match m {
            M::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            M::File(p, data, xattrs) => {
                let recs: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                    .collect();
                b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            M::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Writes an OCI image layout of uncompressed layers at `site/<dir>`.
fn oci_layout(site: &Site, dir: &str, layers: &[Vec<u8>]) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let descs: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}"#,
                sha(l),
                l.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{}]}}"#,
        sha(&config),
        config.len(),
        descs.join(",")
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{}}}]}}"#,
        sha(manifest.as_bytes()),
        manifest.len()
    );
    for blob in layers.iter().chain([&config, &manifest.into_bytes()]) {
        site.write(&format!("{dir}/blobs/sha256/{}", sha(blob)), blob);
    }
    site.write(&format!("{dir}/index.json"), index);
    site.write(
        &format!("{dir}/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    );
}

fn extract_tar(tar: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run_ok(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(into),
    );
}

fn extract_squashfs(img: &Path, into: &Path) {
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-d"])
            .arg(into)
            .arg(img),
    );
}

fn extract_cpio(img: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run_ok(Command::new("sh").current_dir(into).arg("-c").arg(format!(
        "cpio -idm --quiet --no-absolute-filenames < '{}'",
        img.display()
    )));
}

/// (inode, link count) of each path in an ext4 image, from debugfs (no mount needed).
fn ext4_inodes(img: &Path, paths: &[&str]) -> Vec<(u64, u64)> {
    paths
        .iter()
        .map(|p| {
            let s = run_ok(
                Command::new("debugfs")
                    .arg("-R")
                    .arg(format!("stat \"/{p}\""))
                    .arg(img),
            );
            let field = |name: &str| -> u64 {
                let i = s
                    .find(name)
                    .unwrap_or_else(|| panic!("{p}: no {name:?} in {s}"));
                s[i + name.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            (field("Inode:"), field("Links:"))
        })
        .collect()
}

/// The value of one xattr of a file in an ext4 image, from debugfs, as bytes.
fn ext4_xattr(img: &Path, path: &str, name: &str) -> Option<Vec<u8>> {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("ea_get -x \"/{path}\" {name}"))
        .arg(img)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    let (_, hexes) = s.split_once(" = ")?;
    Some(
        hexes
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect(),
    )
}

/// Every extended attribute of an extracted file, with getfattr (the attr package).
fn host_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let s = run_ok(
        Command::new("getfattr")
            .args(["--absolute-names", "-d", "-m", "-", "-e", "hex"])
            .arg(p),
    );
    s.lines()
        .filter_map(|l| l.split_once("=0x"))
        .map(|(k, v)| {
            let bytes = (0..v.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&v[i..i + 2], 16).unwrap())
                .collect();
            (k.to_string(), bytes)
        })
        .collect()
}

fn same_inode(root: &Path, a: &str, b: &str) {
    let (ma, mb) = (
        std::fs::symlink_metadata(root.join(a)).unwrap(),
        std::fs::symlink_metadata(root.join(b)).unwrap(),
    );
    assert_eq!(
        (ma.dev(), ma.ino()),
        (mb.dev(), mb.ino()),
        "{a} and {b} under {} are not one inode",
        root.display()
    );
    assert!(ma.nlink() >= 2, "{a}: {} links", ma.nlink());
}

#[test]
fn hard_links_named_before_their_targets_survive_every_output() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    // What podman export writes: the first name met in a directory walk is the file, so a link
    // can sort before its target (usr/bin/perl → perl5.36.0), also across directories.
    site.write(
        "base.tar",
        layer(&[
            M::Dir("usr"),
            M::Dir("usr/bin"),
            M::File("usr/bin/perl5.36.0", b"#!perl\n", &[]),
            M::Link("usr/bin/perl", "usr/bin/perl5.36.0"),
            M::Dir("b"),
            M::File("b/x", b"shared\n", &[]),
            M::Dir("a"),
            M::Link("a/y", "b/x"),
            // A link to a link: the same inode again.
            M::Link("a/z", "a/y"),
        ]),
    );
    site.write(
        "images/links.toml",
        format!("profiles = [\"vm\"]\n{ALL_OUTPUTS}[base]\ntarball = \"base.tar\"\n"),
    );
    let out = site.build("links", &p, false).unwrap();
    let groups: [&[&str]; 2] = [
        &["usr/bin/perl", "usr/bin/perl5.36.0"],
        &["a/y", "a/z", "b/x"],
    ];
    let x = tempfile::tempdir().unwrap();

    extract_tar(&out.dir.join("root.tar"), &x.path().join("tar"));
    extract_squashfs(&out.dir.join("root.squashfs"), &x.path().join("sq"));
    extract_cpio(&out.dir.join("initramfs.img"), &x.path().join("cpio"));
    for root in ["tar", "sq", "cpio"] {
        let r = x.path().join(root);
        for g in groups {
            for other in &g[1..] {
                same_inode(&r, g[0], other);
            }
        }
        assert_eq!(std::fs::read(r.join("a/z")).unwrap(), b"shared\n", "{root}");
        assert_eq!(
            std::fs::read(r.join("usr/bin/perl")).unwrap(),
            b"#!perl\n",
            "{root}"
        );
    }
    let ext4 = out.dir.join("root.ext4");
    run_ok(Command::new("e2fsck").arg("-fn").arg(&ext4));
    for g in groups {
        let inodes = ext4_inodes(&ext4, g);
        assert!(
            inodes.iter().all(|i| *i == (inodes[0].0, g.len() as u64)),
            "{g:?}: {inodes:?}"
        );
    }
}

#[test]
fn file_capabilities_and_labels_survive_into_every_output() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    let xattrs: &[(&str, &[u8])] = &[
        ("security.capability", &CAP_NET_RAW),
        ("security.selinux", LABEL),
    ];
    // The capability arrives in a later OCI layer that replaces the binary, and the tarball
    // base carries one as well.
    let lower = layer(&[
        M::Dir("usr"),
        M::Dir("usr/bin"),
        M::File("usr/bin/ping", b"old ping\n", &[]),
    ]);
    let upper = layer(&[
        M::File("usr/bin/ping", b"new ping\n", xattrs),
        M::Link("usr/bin/ping4", "usr/bin/ping"),
        M::File("usr/bin/plain", b"plain\n", &[("user.note", b"kept")]),
        // A name too long for the tar header: a GNU long-name record and the PAX record both
        // describe the member after them.
        M::Dir(LONG_DIR),
        M::File(LONG, b"long\n", &[("user.note", b"long")]),
    ]);
    oci_layout(&site, "oci", &[lower, upper.clone()]);
    site.write(
        "images/caps.toml",
        format!("profiles = [\"vm\"]\n{ALL_OUTPUTS}[base]\noci = \"oci\"\n"),
    );
    site.write("base.tar", &upper);
    site.write(
        "images/capstar.toml",
        "profiles = [\"vm\"]\noutputs = [\"ext4\"]\n[base]\ntarball = \"base.tar\"\n",
    );
    let out = site.build("caps", &p, false).unwrap();
    let from_tarball = site.build("capstar", &p, false).unwrap();

    // ext4: read back by debugfs, no privileges needed.
    for img in [
        out.dir.join("root.ext4"),
        from_tarball.dir.join("root.ext4"),
    ] {
        for path in ["usr/bin/ping", "usr/bin/ping4"] {
            assert_eq!(
                ext4_xattr(&img, path, "security.capability").as_deref(),
                Some(&CAP_NET_RAW[..]),
                "{path} in {}",
                img.display()
            );
            assert_eq!(
                ext4_xattr(&img, path, "security.selinux").as_deref(),
                Some(LABEL),
                "{path}"
            );
        }
        assert_eq!(
            ext4_xattr(&img, "usr/bin/plain", "user.note").as_deref(),
            Some(&b"kept"[..])
        );
        assert_eq!(
            ext4_xattr(&img, LONG, "user.note").as_deref(),
            Some(&b"long"[..])
        );
        run_ok(Command::new("e2fsck").arg("-fn").arg(&img));
    }

    // tar and squashfs: extracted by GNU tar and unsquashfs, read by getfattr/getcap. Setting
    // security.* attributes while extracting needs root.
    if !is_root() {
        pxeforge_tests::skip(
            "not root: the tar and squashfs capabilities cannot be extracted to check them",
        );
        return;
    }
    let x = tempfile::tempdir().unwrap();
    extract_tar(&out.dir.join("root.tar"), &x.path().join("tar"));
    extract_squashfs(&out.dir.join("root.squashfs"), &x.path().join("sq"));
    for root in ["tar", "sq"] {
        let r = x.path().join(root);
        for path in ["usr/bin/ping", "usr/bin/ping4"] {
            let got = host_xattrs(&r.join(path));
            assert_eq!(
                got.get("security.capability").map(Vec::as_slice),
                Some(&CAP_NET_RAW[..]),
                "{root}/{path}: {got:?}"
            );
            assert_eq!(
                got.get("security.selinux").map(Vec::as_slice),
                Some(LABEL),
                "{root}/{path}: {got:?}"
            );
        }
        let getcap = run_ok(Command::new("getcap").arg(r.join("usr/bin/ping")));
        assert!(getcap.contains("cap_net_raw=ep"), "{root}: {getcap}");
        assert_eq!(
            host_xattrs(&r.join("usr/bin/plain"))
                .get("user.note")
                .map(Vec::as_slice),
            Some(&b"kept"[..]),
            "{root}"
        );
        assert_eq!(
            host_xattrs(&r.join(LONG))
                .get("user.note")
                .map(Vec::as_slice),
            Some(&b"long"[..]),
            "{root}"
        );
        assert_eq!(
            std::fs::read(r.join("usr/bin/ping")).unwrap(),
            b"new ping\n"
        );
    }
    // The initramfs is cpio newc, which has no place for xattrs: the files are there, the
    // attributes are not (see cpio.rs).
    extract_cpio(&out.dir.join("initramfs.img"), &x.path().join("cpio"));
    assert_eq!(
        std::fs::read(x.path().join("cpio/usr/bin/ping")).unwrap(),
        b"new ping\n"
    );
}

/// The mmdebstrap arguments of the Debian root the next test builds from: the smallest variant
/// of the suite the machine runs, plus ping, whose postinst gives it `cap_net_raw` when setcap
/// is there.
fn mmdebstrap_args() -> Vec<String> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |k: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    let suite = match (field("ID").as_deref(), field("VERSION_CODENAME")) {
        (Some("debian"), Some(c)) if !c.is_empty() => c,
        _ => "stable".to_string(),
    };
    [
        "--variant=essential",
        "--mode=root",
        "--include=libcap2-bin,iputils-ping",
        "--format=tar",
        &suite,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A Debian root tarball made by mmdebstrap once, cached under
/// /var/cache/pxeforge-tests/<sha256 of the arguments>/root.tar (published by rename, so
/// concurrent tests never see half of it). None, with a recorded skip, when it cannot be made.
fn debian_root() -> Option<PathBuf> {
    if !is_root() {
        pxeforge_tests::skip("not root: mmdebstrap --mode=root needs root");
        return None;
    }
    if !pxeforge_tests::have("mmdebstrap") {
        pxeforge_tests::skip("no mmdebstrap (Debian package mmdebstrap)");
        return None;
    }
    let args = mmdebstrap_args();
    let key = sha(format!("mmdebstrap {}", args.join(" ")).as_bytes());
    let dir = Path::new("/var/cache/pxeforge-tests").join(&key[..32]);
    let tarball = dir.join("root.tar");
    if tarball.is_file() {
        return Some(tarball);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!("root.tar.tmp-{}", std::process::id()));
    let o = Command::new("mmdebstrap")
        .args(&args[..args.len() - 1])
        .arg(&args[args.len() - 1])
        .arg(&tmp)
        .output()
        .unwrap();
    if !o.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        pxeforge_tests::skip(format_args!(
            "mmdebstrap {} failed (mirror unreachable?): {}",
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
        return None;
    }
    std::fs::rename(&tmp, &tarball).unwrap();
    Some(tarball)
}

/// Re-packs a root tarball in the order `podman export` walks a root: parents first, but
/// siblings in reverse name order, so that GNU tar stores the later name of each hard link
/// group as the file and the earlier names as links to it.
fn repack_like_podman_export(src: &Path, work: &Path) -> PathBuf {
    let root = work.join("root");
    extract_tar(src, &root);
    let names = run_ok(Command::new("tar").arg("-tf").arg(src));
    let mut names: Vec<Vec<&str>> = names
        .lines()
        .map(|l| {
            l.trim_start_matches("./")
                .split('/')
                .filter(|c| !c.is_empty())
                .collect()
        })
        .filter(|c: &Vec<&str>| !c.is_empty())
        .collect();
    names.sort_by(|a, b| {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| y.cmp(x))
            .find(|o| o.is_ne())
            .unwrap_or(a.len().cmp(&b.len()))
    });
    let list = work.join("list");
    let text: String = names.iter().map(|c| format!("{}\n", c.join("/"))).collect();
    std::fs::write(&list, text).unwrap();
    let out = work.join("podman-like.tar");
    run_ok(
        Command::new("tar")
            .args([
                "--format=pax",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "--no-recursion",
                "--verbatim-files-from",
                "-C",
            ])
            .arg(&root)
            .arg("-T")
            .arg(&list)
            .arg("-cf")
            .arg(&out),
    );
    out
}

/// The hard link groups of a tarball, from GNU tar's listing: target → its links.
fn link_groups(tarball: &Path) -> BTreeMap<String, Vec<String>> {
    let listing = run_ok(Command::new("tar").arg("-tvf").arg(tarball));
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in listing.lines().filter(|l| l.starts_with('h')) {
        let (head, target) = l.rsplit_once(" link to ").unwrap();
        let name = head.rsplit(' ').next().unwrap();
        groups
            .entry(target.trim_start_matches("./").to_string())
            .or_default()
            .push(name.trim_start_matches("./").to_string());
    }
    groups
}

#[test]
fn debian_root_from_mmdebstrap_keeps_hard_links_and_capabilities() {
    let Some(debian) = debian_root() else {
        return;
    };
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    let base = repack_like_podman_export(&debian, site.dir());
    let groups = link_groups(&base);
    assert!(
        groups.iter().any(|(t, links)| links.iter().any(|l| l < t)),
        "the repacked root has no link named before its target: {groups:?}"
    );
    site.write(
        "images/debian.toml",
        format!("profiles = [\"vm\"]\n{ALL_OUTPUTS}[base]\ntarball = \"podman-like.tar\"\n"),
    );
    let out = site.build("debian", &p, false).unwrap();

    let x = tempfile::tempdir().unwrap();
    extract_tar(&out.dir.join("root.tar"), &x.path().join("tar"));
    extract_squashfs(&out.dir.join("root.squashfs"), &x.path().join("sq"));
    extract_cpio(&out.dir.join("initramfs.img"), &x.path().join("cpio"));
    let ext4 = out.dir.join("root.ext4");
    run_ok(Command::new("e2fsck").arg("-fn").arg(&ext4));
    for (target, links) in &groups {
        for root in ["tar", "sq", "cpio"] {
            for l in links {
                same_inode(&x.path().join(root), target, l);
            }
        }
        let mut paths = vec![target.as_str()];
        paths.extend(links.iter().map(String::as_str));
        let inodes = ext4_inodes(&ext4, &paths);
        assert!(
            inodes.iter().all(|i| *i == inodes[0] && i.1 >= 2),
            "{paths:?}: {inodes:?}"
        );
    }

    // ping's capability, if its postinst set one in this root, is in every output but cpio.
    let src_ping = host_xattrs(&x.path().join("tar/usr/bin/ping"));
    let debian_root_dir = site.dir().join("root/usr/bin/ping");
    let expected = host_xattrs(&debian_root_dir);
    match expected.get("security.capability") {
        Some(cap) => {
            assert_eq!(src_ping.get("security.capability"), Some(cap), "tar");
            let sq = host_xattrs(&x.path().join("sq/usr/bin/ping"));
            assert_eq!(sq.get("security.capability"), Some(cap), "squashfs");
            assert_eq!(
                ext4_xattr(&ext4, "usr/bin/ping", "security.capability").as_ref(),
                Some(cap),
                "ext4"
            );
        }
        None => pxeforge_tests::skip(
            "ping in the mmdebstrap root has no capability (setcap ran after its postinst?)",
        ),
    }
    assert!(ib::store::verify(&site.state()).unwrap().is_empty());
}
