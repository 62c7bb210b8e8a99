//! The composed root: a sorted map of normalized relative paths to entries with owners and modes
//! carried from the sources. Nothing here touches the build host's filesystem except reading file
//! contents that are referenced by path.

use crate::error::BuildError;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;

/// Where a regular file's bytes live.
#[derive(Debug, Clone)]
pub enum Content {
    Inline(Vec<u8>),
    /// A file on the build host (a dir base, a site tree, or a spooled tar member).
    Host {
        path: PathBuf,
        size: u64,
    },
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::Inline(v) => v.len() as u64,
            Content::Host { size, .. } => *size,
        }
    }

    pub fn open(&self) -> std::io::Result<Box<dyn Read + '_>> {
        match self {
            Content::Inline(v) => Ok(Box::new(&v[..])),
            Content::Host { path, size } => Ok(Box::new(std::fs::File::open(path)?.take(*size))),
        }
    }

    /// Whether two contents are the same bytes from the same place: a hard link still names the
    /// file it was made to, not a later file put at the target's path.
    pub fn same_as(&self, other: &Content) -> bool {
        match (self, other) {
            (Content::Inline(a), Content::Inline(b)) => a == b,
            (Content::Host { path: a, size: x }, Content::Host { path: b, size: y }) => {
                a == b && x == y
            }
            _ => false,
        }
    }

    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.size() as usize);
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }
}

/// Extended attributes of an inode (`security.capability`, `security.selinux`, `user.*`, ...),
/// by name; sorted, so every output writes them in one order.
pub type Xattrs = BTreeMap<String, Vec<u8>>;

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Content),
    Symlink(String),
    /// A hard link to another entry of the tree (normalized path), with that entry's content so
    /// the link survives its target being deleted or replaced by a later layer. After
    /// [`Tree::fix_hardlinks`] the target is a `File` whose path sorts before the link's, so
    /// every output, written in path order, meets the target first (tar extractors and the
    /// staging for mkfs need it there).
    Hardlink(String, Content),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits only (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Extended attributes, from PAX `SCHILY.xattr.*` records of tar and OCI sources. A hard
    /// link carries its target's (one inode); outputs write them once, with the target.
    pub xattrs: Xattrs,
}

impl Node {
    pub fn dir(mode: u32, uid: u32, gid: u32) -> Node {
        Node::new(Kind::Dir, mode, uid, gid)
    }

    /// An entry without extended attributes.
    pub fn new(kind: Kind, mode: u32, uid: u32, gid: u32) -> Node {
        Node {
            kind,
            mode,
            uid,
            gid,
            xattrs: Xattrs::new(),
        }
    }

    /// Same inode metadata (what a hard link shares with its target).
    fn same_inode_meta(&self, other: &Node) -> bool {
        (self.mode, self.uid, self.gid) == (other.mode, other.uid, other.gid)
            && self.xattrs == other.xattrs
    }

    /// The `st_mode` file type bits of this entry.
    pub fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) | Kind::Hardlink(..) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::Char(..) => 0o020000,
            Kind::Block(..) => 0o060000,
            Kind::Fifo => 0o010000,
        }
    }
}

/// Normalizes a path inside the image: strips leading `/` and `.` components. Refuses `..` so that
/// no entry can name something outside the root; the error names the entry.
pub fn normalize(path: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("entry {path:?} has a `..` component")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Does a symlink at `link` (normalized) with `target` stay inside the root? Absolute targets are
/// resolved against the image root when it runs, so only relative targets can climb out.
pub fn link_stays_inside(link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth: i64 = link.split('/').filter(|c| !c.is_empty()).count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Splits `a/b/c` into its parent `a/b` ("" for top level).
pub fn parent(path: &str) -> &str {
    path.rfind('/').map(|i| &path[..i]).unwrap_or("")
}

#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// "" is the root directory.
    pub entries: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Tree {
        let mut t = Tree::default();
        t.entries.insert(String::new(), Node::dir(0o755, 0, 0));
        t
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(path)
    }

    /// Inserts an entry at a normalized path, creating missing parents (0755 root:root). A parent
    /// that is not a directory (a symlink in particular) is an error naming the entry: following
    /// it could place the entry outside the root.
    pub fn insert(&mut self, path: String, node: Node) -> Result<(), BuildError> {
        if path.is_empty() {
            if let Kind::Dir = node.kind {
                self.entries.insert(path, node);
                return Ok(());
            }
            return Err(BuildError::Entry {
                entry: "/".into(),
                reason: "the root must be a directory".into(),
            });
        }
        self.ensure_parents(&path)?;
        if let Some(old) = self.entries.get(&path) {
            if matches!(old.kind, Kind::Dir) && !matches!(node.kind, Kind::Dir) {
                self.remove(&path);
            }
        }
        self.entries.insert(path, node);
        Ok(())
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), BuildError> {
        let mut idx = 0;
        while let Some(off) = path[idx..].find('/') {
            let p = &path[..idx + off];
            match self.entries.get(p) {
                Some(Node {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(BuildError::Entry {
                        entry: path.to_string(),
                        reason: format!("its parent {p:?} is not a directory"),
                    })
                }
                None => {
                    self.entries.insert(p.to_string(), Node::dir(0o755, 0, 0));
                }
            }
            idx += off + 1;
        }
        Ok(())
    }

    /// Removes an entry and everything below it.
    pub fn remove(&mut self, path: &str) {
        if path.is_empty() {
            self.clear_dir("");
            return;
        }
        self.entries.remove(path);
        self.clear_dir(path);
    }

    /// Removes everything below a directory, keeping the directory (an OCI opaque whiteout).
    pub fn clear_dir(&mut self, path: &str) {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let doomed: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.entries.remove(&k);
        }
    }

    /// Puts hard links in the shape every output relies on: each link group has one `File`, at
    /// the group's first path in sort order, and its other paths link to that one.
    ///
    /// Sources name a link's target as they met it, which may sort after the link (`podman
    /// export` writes `usr/bin/perl` as a link to `usr/bin/perl5.36.0`); outputs are written in
    /// path order and a link before its target cannot be extracted ("Cannot hard link"). A link
    /// whose target was deleted or replaced by a later layer keeps the content it was made to:
    /// links that shared that old file stay one group, without the new file.
    pub fn fix_hardlinks(&mut self) {
        // Group key: the File path for intact links; (old target, index) for orphaned ones.
        let mut groups: BTreeMap<(String, usize), Vec<String>> = BTreeMap::new();
        let mut orphans: HashMap<String, Vec<(Content, Node)>> = HashMap::new();
        for (path, node) in &self.entries {
            let Kind::Hardlink(t, c) = &node.kind else {
                continue;
            };
            let intact = matches!(
                self.entries.get(t),
                Some(n @ Node { kind: Kind::File(tc), .. }) if tc.same_as(c) && n.same_inode_meta(node)
            );
            let key = if intact {
                (t.clone(), 0)
            } else {
                let seen = orphans.entry(t.clone()).or_default();
                let i = match seen
                    .iter()
                    .position(|(oc, on)| oc.same_as(c) && on.same_inode_meta(node))
                {
                    Some(i) => i,
                    None => {
                        seen.push((c.clone(), node.clone()));
                        seen.len() - 1
                    }
                };
                (t.clone(), i + 1)
            };
            let members = groups.entry(key.clone()).or_default();
            if intact && members.is_empty() {
                members.push(t.clone());
            }
            members.push(path.clone());
        }
        for (_, mut members) in groups {
            members.sort();
            let Some((first, rest)) = members.split_first() else {
                continue;
            };
            let Some(node) = self.entries.get_mut(first) else {
                continue;
            };
            let content = match &node.kind {
                Kind::File(c) | Kind::Hardlink(_, c) => c.clone(),
                _ => continue,
            };
            node.kind = Kind::File(content.clone());
            let meta = node.clone();
            for m in rest {
                if let Some(n) = self.entries.get_mut(m) {
                    *n = Node {
                        kind: Kind::Hardlink(first.clone(), content.clone()),
                        ..meta.clone()
                    };
                }
            }
        }
    }

    /// Total bytes of regular file contents (hard links counted once).
    pub fn content_size(&self) -> u64 {
        self.entries
            .values()
            .map(|n| match &n.kind {
                Kind::File(c) => c.size(),
                _ => 0,
            })
            .sum()
    }

    /// Resolves a path inside the image, following symlinks (absolute targets from the root), up to
    /// a bounded depth. Returns the normalized path of the final entry.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut cur = normalize(path).ok()?;
        for _ in 0..40 {
            match &self.entries.get(&cur)?.kind {
                Kind::Symlink(t) => {
                    let joined = if t.starts_with('/') {
                        t.clone()
                    } else {
                        format!("{}/{}", parent(&cur), t)
                    };
                    cur = normalize_lossy(&joined)?;
                }
                _ => return Some(cur),
            }
        }
        None
    }
}

/// Normalizes allowing `..` that stays inside the root.
fn normalize_lossy(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_dotdot() {
        assert_eq!(normalize("/etc//./passwd").unwrap(), "etc/passwd");
        assert!(normalize("a/../../etc").is_err());
    }

    #[test]
    fn links() {
        assert!(link_stays_inside("usr/lib/x", "../../bin/sh"));
        assert!(!link_stays_inside("usr/x", "../../etc/passwd"));
        assert!(link_stays_inside("x", "/etc/passwd"));
        assert!(!link_stays_inside("x", ".."));
    }

    #[test]
    fn insert_through_symlink_refused() {
        let mut t = Tree::new();
        t.insert(
            "lnk".into(),
            Node {
                kind: Kind::Symlink("/etc".into()),
                mode: 0o777,
                uid: 0,
                gid: 0,
                xattrs: Default::default(),
            },
        )
        .unwrap();
        let e = t
            .insert(
                "lnk/passwd".into(),
                Node {
                    kind: Kind::Fifo,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    xattrs: Default::default(),
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("lnk/passwd"), "{e}");
    }

    #[test]
    fn clear_dir_keeps_siblings() {
        let mut t = Tree::new();
        for p in ["a/x", "a/y/z", "ab"] {
            t.insert(
                p.into(),
                Node {
                    kind: Kind::Fifo,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    xattrs: Default::default(),
                },
            )
            .unwrap();
        }
        t.clear_dir("a");
        assert!(t.get("a").is_some());
        assert!(t.get("a/x").is_none() && t.get("a/y").is_none());
        assert!(t.get("ab").is_some());
    }

    fn file(t: &mut Tree, path: &str, data: &[u8]) {
        let mut n = Node::new(Kind::File(Content::Inline(data.to_vec())), 0o755, 0, 0);
        n.xattrs
            .insert("security.capability".into(), vec![1, 0, 0, 2]);
        t.insert(path.into(), n).unwrap();
    }

    /// A link as a tar source adds it: the target's inode metadata, the target's content.
    fn link(t: &mut Tree, path: &str, target: &str) {
        let n = t.get(target).unwrap().clone();
        let Kind::File(c) = &n.kind else { panic!() };
        let kind = Kind::Hardlink(target.into(), c.clone());
        t.insert(path.into(), Node { kind, ..n }).unwrap();
    }

    fn shape(t: &Tree) -> Vec<(String, String)> {
        t.entries
            .iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, n)| {
                let what = match &n.kind {
                    Kind::File(c) => {
                        format!("file {}", String::from_utf8_lossy(&c.read_all().unwrap()))
                    }
                    Kind::Hardlink(t, _) => format!("link {t}"),
                    _ => "other".into(),
                };
                (k.clone(), what)
            })
            .collect()
    }

    #[test]
    fn every_link_group_starts_with_its_first_name() {
        let mut t = Tree::new();
        file(&mut t, "usr/bin/perl5.36.0", b"perl");
        link(&mut t, "usr/bin/perl", "usr/bin/perl5.36.0");
        link(&mut t, "a", "usr/bin/perl5.36.0");
        t.fix_hardlinks();
        assert_eq!(
            shape(&t),
            [
                ("a".into(), "file perl".into()),
                ("usr".into(), "other".into()),
                ("usr/bin".into(), "other".into()),
                ("usr/bin/perl".into(), "link a".into()),
                ("usr/bin/perl5.36.0".into(), "link a".into()),
            ]
        );
        // The inode's attributes stay with every name.
        assert!(t
            .entries
            .values()
            .filter(|n| n.type_bits() == 0o100000)
            .all(|n| n.xattrs.len() == 1));
    }

    #[test]
    fn links_to_a_replaced_file_keep_the_old_file_together() {
        let mut t = Tree::new();
        file(&mut t, "bin/x", b"old");
        link(&mut t, "bin/y", "bin/x");
        link(&mut t, "bin/z", "bin/x");
        // A later layer puts a new file at the target's path; the old inode lives on as y and z.
        t.insert(
            "bin/x".into(),
            Node::new(Kind::File(Content::Inline(b"new".to_vec())), 0o755, 0, 0),
        )
        .unwrap();
        link(&mut t, "bin/w", "bin/x");
        t.fix_hardlinks();
        assert_eq!(
            shape(&t),
            [
                ("bin".into(), "other".into()),
                ("bin/w".into(), "file new".into()),
                ("bin/x".into(), "link bin/w".into()),
                ("bin/y".into(), "file old".into()),
                ("bin/z".into(), "link bin/y".into()),
            ]
        );
    }
}
