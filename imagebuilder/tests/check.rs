//! `pxeforge check` for recipes: every problem named with file and line.

mod common;
use common::*;
use pxeforge_imagebuilder as ib;

#[test]
fn bad_recipes_are_errors_with_file_and_line() {
    let site = Site::new();
    let p = site.profile(
        "vm",
        "arch = \"x86_64\"\nfirmware = \"bios\"\ndisk = \"/dev/vda\"\n",
    );
    std::fs::create_dir_all(site.dir().join("trees/ok")).unwrap();
    site.write(
        "images/bad.toml",
        "profiles = [\"vm\",\n  \"nosuch\"]\n\
         outputs = [\"tar\",\n  \"iso\"]\n\
         \n\
         [base]\n\
         dir = \"missing-root\"\n\
         \n\
         [[tree]]\n\
         dir = \"../outside\"\n\
         \n\
         [[tree]]\n\
         dir = \"trees/ok\"\n\
         \n\
         [[file]]\n\
         path = \"/etc/x\"\n\
         source = \"nope.txt\"\n",
    );
    site.write("images/typo.toml", "profiles = [\"vm\"]\noutputs = [\"tar\"]\n[base]\nscratch = true\n\n[[user]]\nname = \"a\"\nuid = 1\ngid = 1\nshel = \"/bin/sh\"\n");
    let (recipes, diags) = ib::load_recipes(site.dir());
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(diags[0].file.ends_with("images/typo.toml"));
    assert_eq!(diags[0].line, 10, "{}", diags[0]);
    assert!(diags[0].message.contains("shel"), "{}", diags[0]);

    let diags = ib::check_recipes(site.dir(), &recipes, &[p]);
    let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.message.as_str())).collect();
    let expect = [
        (7, "base dir \"missing-root\": no such directory"),
        (2, "unknown profile \"nosuch\""),
        (4, "unknown output \"iso\""),
        (9, "tree dir \"../outside\" is outside the site directory"),
        (15, "file source \"nope.txt\": no such file"),
    ];
    assert_eq!(diags.len(), expect.len(), "{got:?}");
    for (line, msg) in expect {
        assert!(
            got.iter().any(|(l, m)| *l == line && m.starts_with(msg)),
            "missing {line}: {msg} in {got:?}"
        );
    }
    for d in &diags {
        assert!(d.file.ends_with("images/bad.toml"));
        // Missing inputs are warnings (a separate step may produce them); the rest are errors.
        let want = if d.message.contains("no such") {
            ib::Severity::Warning
        } else {
            ib::Severity::Error
        };
        assert_eq!(d.severity, want, "{d}");
    }
}

#[test]
fn missing_tool_names_the_debian_package() {
    let empty = tempfile::tempdir().unwrap();
    let e =
        ib::tools::check_tools_in(&[ib::Output::Squashfs], empty.path().as_os_str()).unwrap_err();
    assert_eq!(
        (e.tool.as_str(), e.package.as_str()),
        ("mksquashfs", "squashfs-tools")
    );
    assert!(
        e.to_string()
            .contains("install the Debian package `squashfs-tools`"),
        "{e}"
    );
    let e = ib::tools::check_tools_in(&[ib::Output::Qcow2], empty.path().as_os_str()).unwrap_err();
    assert_eq!(
        (e.tool.as_str(), e.package.as_str(), e.output.as_str()),
        ("mkfs.ext4", "e2fsprogs", "qcow2"),
        "{e}"
    );
    // Native outputs need no tool at all.
    ib::tools::check_tools_in(
        &[ib::Output::Initramfs, ib::Output::Tar, ib::Output::Kernel],
        empty.path().as_os_str(),
    )
    .unwrap();
}
