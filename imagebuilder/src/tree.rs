//! The composed root: a sorted map of normalized relative paths to entries with owners and modes
//! carried from the sources. Nothing here touches the build host's filesystem except reading file
//! contents that are referenced by path.

use crate::error::BuildError;
use std::collections::BTreeMap;
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

    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.size() as usize);
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Content),
    Symlink(String),
    /// A hard link to another entry of the tree (normalized path), with that entry's content so
    /// the link survives its target being deleted or replaced by a later layer.
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
}

impl Node {
    pub fn dir(mode: u32, uid: u32, gid: u32) -> Node {
        Node {
            kind: Kind::Dir,
            mode,
            uid,
            gid,
        }
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

    /// Turns hard links whose target is no longer that regular file into plain files.
    pub fn fix_hardlinks(&mut self) {
        let broken: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, n)| match &n.kind {
                Kind::Hardlink(t, _) => !matches!(
                    self.entries.get(t),
                    Some(Node {
                        kind: Kind::File(_),
                        ..
                    })
                ),
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in broken {
            if let Some(n) = self.entries.get_mut(&k) {
                if let Kind::Hardlink(_, c) = &n.kind {
                    n.kind = Kind::File(c.clone());
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
                },
            )
            .unwrap();
        }
        t.clear_dir("a");
        assert!(t.get("a").is_some());
        assert!(t.get("a/x").is_none() && t.get("a/y").is_none());
        assert!(t.get("ab").is_some());
    }
}
