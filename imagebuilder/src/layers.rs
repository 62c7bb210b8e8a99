//! The recipe's and the profile's layers applied onto the base tree, in the documented order.

use crate::error::BuildError;
use crate::recipe::Recipe;
use crate::tree::{normalize, Content, Kind, Node, Tree};
use crate::ProfileLayer;
use std::path::Path;

fn norm(p: &str) -> Result<String, BuildError> {
    normalize(p).map_err(|reason| BuildError::Entry {
        entry: p.to_string(),
        reason,
    })
}

/// Resolves a site-relative path; a path that leaves the site is an error.
pub fn site_path(site: &Path, rel: &str) -> Result<std::path::PathBuf, BuildError> {
    crate::check::inside_site(site, rel)
        .ok_or_else(|| BuildError::Recipe(format!("path {rel:?} is outside the site directory")))
}

/// Copies a site directory into the tree at `dest`: owned 0:0, modes normalized as git records them.
pub fn apply_site_tree(tree: &mut Tree, dir: &Path, dest: &str) -> Result<(), BuildError> {
    let dest = norm(dest)?;
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| BuildError::source(dir, e.to_string()))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| BuildError::source(dir, e.to_string()))?;
        let rel = rel.to_string_lossy();
        let path = match (dest.is_empty(), rel.is_empty()) {
            (_, true) => dest.clone(),
            (true, false) => rel.to_string(),
            (false, false) => format!("{dest}/{rel}"),
        };
        let md = entry
            .metadata()
            .map_err(|e| BuildError::source(entry.path(), e.to_string()))?;
        let ft = md.file_type();
        let node = if ft.is_dir() {
            if rel.is_empty() && tree.get(&path).is_some_and(|n| matches!(n.kind, Kind::Dir)) {
                continue; // keep the owner/mode of an existing destination directory
            }
            Node::dir(0o755, 0, 0)
        } else if ft.is_symlink() {
            let t = std::fs::read_link(entry.path()).map_err(BuildError::io(entry.path()))?;
            let t = t.to_string_lossy().into_owned();
            if !crate::tree::link_stays_inside(&path, &t) {
                return Err(BuildError::Entry {
                    entry: path,
                    reason: format!("symlink to {t:?} leads out of the root"),
                });
            }
            Node {
                kind: Kind::Symlink(t),
                mode: 0o777,
                uid: 0,
                gid: 0,
                xattrs: Default::default(),
            }
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = if md.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            Node {
                kind: Kind::File(Content::Host {
                    path: entry.path().to_path_buf(),
                    size: md.len(),
                }),
                mode,
                uid: 0,
                gid: 0,
                xattrs: Default::default(),
            }
        } else {
            return Err(BuildError::Entry {
                entry: entry.path().display().to_string(),
                reason: "site trees hold only directories, files and symlinks; use [[device]]"
                    .into(),
            });
        };
        tree.insert(path, node)?;
    }
    Ok(())
}

pub fn apply_recipe(tree: &mut Tree, site: &Path, recipe: &Recipe) -> Result<(), BuildError> {
    let spec = &recipe.spec;
    for t in &spec.tree {
        let t = t.get_ref();
        apply_site_tree(tree, &site_path(site, &t.dir)?, &t.dest)?;
    }
    for d in &spec.dir {
        tree.insert(norm(&d.path)?, Node::dir(d.mode & 0o7777, d.uid, d.gid))?;
    }
    for f in &spec.file {
        let f = f.get_ref();
        let content = match (&f.contents, &f.source) {
            (Some(c), None) => Content::Inline(c.as_bytes().to_vec()),
            (None, Some(s)) => {
                let p = site_path(site, s)?;
                let md = std::fs::metadata(&p).map_err(BuildError::io(&p))?;
                Content::Host {
                    path: p,
                    size: md.len(),
                }
            }
            _ => {
                return Err(BuildError::Recipe(format!(
                    "[[file]] {}: give exactly one of contents and source",
                    f.path
                )))
            }
        };
        tree.insert(
            norm(&f.path)?,
            Node {
                kind: Kind::File(content),
                mode: f.mode & 0o7777,
                uid: f.uid,
                gid: f.gid,
                xattrs: Default::default(),
            },
        )?;
    }
    for s in &spec.symlink {
        let path = norm(&s.path)?;
        if !crate::tree::link_stays_inside(&path, &s.target) {
            return Err(BuildError::Entry {
                entry: s.path.clone(),
                reason: "symlink leads out of the root".into(),
            });
        }
        tree.insert(
            path,
            Node {
                kind: Kind::Symlink(s.target.clone()),
                mode: 0o777,
                uid: s.uid,
                gid: s.gid,
                xattrs: Default::default(),
            },
        )?;
    }
    for d in &spec.device {
        let d = d.get_ref();
        let kind = match d.kind.as_str() {
            "c" => Kind::Char(d.major, d.minor),
            "b" => Kind::Block(d.major, d.minor),
            k => {
                return Err(BuildError::Recipe(format!(
                    "[[device]] {}: kind {k:?} is not c or b",
                    d.path
                )))
            }
        };
        tree.insert(
            norm(&d.path)?,
            Node {
                kind,
                mode: d.mode & 0o7777,
                uid: d.uid,
                gid: d.gid,
                xattrs: Default::default(),
            },
        )?;
    }
    for u in &spec.user {
        add_user(tree, u.get_ref())?;
    }
    for u in &spec.units {
        enable_unit(tree, u.get_ref())?;
    }
    Ok(())
}

pub fn apply_profile(
    tree: &mut Tree,
    site: &Path,
    profile: &ProfileLayer,
) -> Result<(), BuildError> {
    if let Some(dir) = &profile.layer_dir {
        let p = if dir.is_absolute() {
            dir.clone()
        } else {
            site.join(dir)
        };
        apply_site_tree(tree, &p, "/")?;
    }
    for f in &profile.firmware_files {
        let p = if f.is_absolute() {
            f.clone()
        } else {
            site.join(f)
        };
        let md = std::fs::metadata(&p).map_err(BuildError::io(&p))?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tree.insert(
            format!("lib/firmware/{name}"),
            Node {
                kind: Kind::File(Content::Host {
                    path: p,
                    size: md.len(),
                }),
                mode: 0o644,
                uid: 0,
                gid: 0,
                xattrs: Default::default(),
            },
        )?;
    }
    if !profile.drivers.is_empty() {
        let mut s = String::from("# drivers of profile ");
        s.push_str(&profile.name);
        s.push('\n');
        for d in &profile.drivers {
            s.push_str(d);
            s.push('\n');
        }
        tree.insert(
            "etc/modules-load.d/pxeforge.conf".into(),
            file_node(s.into_bytes(), 0o644),
        )?;
    }
    Ok(())
}

fn file_node(bytes: Vec<u8>, mode: u32) -> Node {
    Node {
        kind: Kind::File(Content::Inline(bytes)),
        mode,
        uid: 0,
        gid: 0,
        xattrs: Default::default(),
    }
}

fn read_text(tree: &Tree, path: &str) -> Result<(String, u32, u32, u32), BuildError> {
    match tree.get(path) {
        Some(Node {
            kind: Kind::File(c),
            mode,
            uid,
            gid,
            ..
        }) => {
            let bytes = c.read_all().map_err(BuildError::io(path))?;
            Ok((
                String::from_utf8_lossy(&bytes).into_owned(),
                *mode,
                *uid,
                *gid,
            ))
        }
        Some(_) => Err(BuildError::Entry {
            entry: path.into(),
            reason: "not a regular file".into(),
        }),
        None => Ok((String::new(), 0, 0, 0)),
    }
}

/// Replaces the line whose first field is `name`, or appends it.
fn upsert_line(text: &str, name: &str, line: &str) -> String {
    let mut out = String::new();
    let mut found = false;
    for l in text.lines() {
        if l.split(':').next() == Some(name) {
            if !found {
                out.push_str(line);
                out.push('\n');
            }
            found = true;
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn write_back(
    tree: &mut Tree,
    path: &str,
    text: String,
    (mode, uid, gid): (u32, u32, u32),
    default_mode: u32,
) -> Result<(), BuildError> {
    let existing = tree.get(path);
    let existed = existing.is_some();
    let node = Node {
        kind: Kind::File(Content::Inline(text.into_bytes())),
        mode: if existed { mode } else { default_mode },
        uid: if existed { uid } else { 0 },
        gid: if existed { gid } else { 0 },
        // An edited file keeps its label (security.selinux of /etc/passwd, say): the edit
        // changes the contents, not what the file is.
        xattrs: existing.map(|n| n.xattrs.clone()).unwrap_or_default(),
    };
    tree.insert(path.into(), node)
}

pub fn add_user(tree: &mut Tree, u: &crate::recipe::User) -> Result<(), BuildError> {
    if u.name.is_empty() || u.name.contains([':', '\n', '/']) {
        return Err(BuildError::Recipe(format!(
            "[[user]] bad name {:?}",
            u.name
        )));
    }
    let home = u
        .home
        .clone()
        .unwrap_or_else(|| format!("/home/{}", u.name));
    let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
    let hash = u.password_hash.clone().unwrap_or_else(|| "!".into());
    for f in [&home, &shell, &hash] {
        if f.contains([':', '\n']) {
            return Err(BuildError::Recipe(format!(
                "[[user]] {}: field {f:?} holds ':' or a newline",
                u.name
            )));
        }
    }

    let (passwd, m, pu, pg) = read_text(tree, "etc/passwd")?;
    let line = format!("{}:x:{}:{}::{}:{}", u.name, u.uid, u.gid, home, shell);
    write_back(
        tree,
        "etc/passwd",
        upsert_line(&passwd, &u.name, &line),
        (m, pu, pg),
        0o644,
    )?;

    let (shadow, m, su, sg) = read_text(tree, "etc/shadow")?;
    let line = format!("{}:{}:0:0:99999:7:::", u.name, hash);
    write_back(
        tree,
        "etc/shadow",
        upsert_line(&shadow, &u.name, &line),
        (m, su, sg),
        0o600,
    )?;

    let (group, m, gu, gg) = read_text(tree, "etc/group")?;
    let mut group = group;
    let gid_str = u.gid.to_string();
    if !group
        .lines()
        .any(|l| l.split(':').nth(2) == Some(gid_str.as_str()))
    {
        group = upsert_line(&group, &u.name, &format!("{}:x:{}:", u.name, u.gid));
    }
    for g in &u.groups {
        let mut found = false;
        let mut out = String::new();
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() == 4 && f[0] == g {
                found = true;
                let mut members: Vec<&str> = f[3].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&u.name.as_str()) {
                    members.push(&u.name);
                }
                out.push_str(&format!(
                    "{}:{}:{}:{}\n",
                    f[0],
                    f[1],
                    f[2],
                    members.join(",")
                ));
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        if !found {
            return Err(BuildError::Recipe(format!(
                "[[user]] {}: group {g:?} is not in /etc/group",
                u.name
            )));
        }
        group = out;
    }
    write_back(tree, "etc/group", group, (m, gu, gg), 0o644)?;

    let home_n = norm(&home)?;
    tree.insert(home_n.clone(), Node::dir(0o700, u.uid, u.gid))?;
    if !u.ssh_authorized_keys.is_empty() {
        tree.insert(format!("{home_n}/.ssh"), Node::dir(0o700, u.uid, u.gid))?;
        let mut keys = u.ssh_authorized_keys.join("\n");
        keys.push('\n');
        tree.insert(
            format!("{home_n}/.ssh/authorized_keys"),
            Node {
                kind: Kind::File(Content::Inline(keys.into_bytes())),
                mode: 0o600,
                uid: u.uid,
                gid: u.gid,
                xattrs: Default::default(),
            },
        )?;
    }
    Ok(())
}

const UNIT_DIRS: [&str; 3] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// Targets named by `WantedBy=` / `RequiredBy=` in a unit's `[Install]` section.
pub fn install_targets(unit_text: &str) -> Vec<(String, &'static str)> {
    let mut in_install = false;
    let mut out = Vec::new();
    for l in unit_text.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            let suffix = match k.trim() {
                "WantedBy" => ".wants",
                "RequiredBy" => ".requires",
                _ => continue,
            };
            for t in v.split_whitespace() {
                out.push((t.to_string(), suffix));
            }
        }
    }
    out
}

pub fn enable_unit(tree: &mut Tree, unit: &str) -> Result<(), BuildError> {
    if unit.contains('/') || unit.is_empty() {
        return Err(BuildError::Recipe(format!(
            "unit {unit:?}: not a unit name"
        )));
    }
    let found = UNIT_DIRS.iter().find_map(|d| {
        let p = format!("{d}/{unit}");
        tree.resolve(&p).map(|r| (p, r))
    });
    let Some((unit_path, resolved)) = found else {
        return Err(BuildError::Recipe(format!(
            "unit {unit:?} is not in the image ({})",
            UNIT_DIRS.join(", ")
        )));
    };
    let (text, ..) = read_text(tree, &resolved)?;
    let targets = install_targets(&text);
    if targets.is_empty() {
        return Err(BuildError::Recipe(format!(
            "unit {unit:?} has no [Install] WantedBy=/RequiredBy="
        )));
    }
    for (t, suffix) in targets {
        tree.insert(
            format!("etc/systemd/system/{t}{suffix}/{unit}"),
            Node {
                kind: Kind::Symlink(format!("/{unit_path}")),
                mode: 0o777,
                uid: 0,
                gid: 0,
                xattrs: Default::default(),
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section() {
        let t = "[Unit]\nWantedBy=nope\n[Install]\nWantedBy=multi-user.target  graphical.target\nRequiredBy=x.target\n";
        assert_eq!(install_targets(t).len(), 3);
        assert_eq!(install_targets(t)[0].0, "multi-user.target");
    }

    #[test]
    fn user_added_and_replaced() {
        let mut tree = Tree::new();
        tree.insert(
            "etc/passwd".into(),
            file_node(
                b"root:x:0:0::/root:/bin/sh\nadmin:x:5:5::/x:/bin/false\n".to_vec(),
                0o644,
            ),
        )
        .unwrap();
        tree.insert(
            "etc/group".into(),
            file_node(b"root:x:0:\nwheel:x:10:root\n".to_vec(), 0o644),
        )
        .unwrap();
        let u = crate::recipe::User {
            name: "admin".into(),
            uid: 1000,
            gid: 1000,
            home: None,
            shell: None,
            password_hash: None,
            groups: vec!["wheel".into()],
            ssh_authorized_keys: vec!["ssh-ed25519 AAA k".into()],
        };
        add_user(&mut tree, &u).unwrap();
        let (p, ..) = read_text(&tree, "etc/passwd").unwrap();
        assert_eq!(
            p,
            "root:x:0:0::/root:/bin/sh\nadmin:x:1000:1000::/home/admin:/bin/sh\n"
        );
        let (g, ..) = read_text(&tree, "etc/group").unwrap();
        assert!(
            g.contains("wheel:x:10:root,admin\n") && g.contains("admin:x:1000:\n"),
            "{g}"
        );
        let ak = tree.get("home/admin/.ssh/authorized_keys").unwrap();
        assert_eq!((ak.mode, ak.uid), (0o600, 1000));
        assert_eq!(tree.get("etc/shadow").unwrap().mode, 0o600);
    }

    #[test]
    fn enabling_a_unit_links_it_into_its_targets() {
        let mut tree = Tree::new();
        tree.insert(
            "usr/lib/systemd/system/sshd.service".into(),
            file_node(
                b"[Unit]\nDescription=x\n[Install]\nWantedBy=multi-user.target\n".to_vec(),
                0o644,
            ),
        )
        .unwrap();
        tree.insert(
            "usr/lib/systemd/system/static.service".into(),
            file_node(b"[Unit]\n".to_vec(), 0o644),
        )
        .unwrap();
        enable_unit(&mut tree, "sshd.service").unwrap();
        match &tree
            .get("etc/systemd/system/multi-user.target.wants/sshd.service")
            .unwrap()
            .kind
        {
            Kind::Symlink(t) => assert_eq!(t, "/usr/lib/systemd/system/sshd.service"),
            k => panic!("{k:?}"),
        }
        assert!(enable_unit(&mut tree, "static.service")
            .unwrap_err()
            .to_string()
            .contains("[Install]"));
        assert!(enable_unit(&mut tree, "missing.service")
            .unwrap_err()
            .to_string()
            .contains("not in the image"));
    }
}
