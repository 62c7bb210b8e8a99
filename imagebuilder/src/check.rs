//! Static checks of recipes against the site (for `pxeforge check`), and of the published store
//! against what each profile's firmware and memory can carry.

use crate::recipe::{Output, Recipe};
use crate::{Diagnostic, ProfileLayer, Severity};
use std::path::{Component, Path, PathBuf};
use toml::Spanned;

/// A site-relative path resolved lexically; None when it is absolute or climbs out of the site.
pub fn inside_site(site: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(site.join(p))
}

struct Ctx<'a> {
    recipe: &'a Recipe,
    out: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err(&mut self, offset: usize, msg: String) {
        self.push(offset, msg, Severity::Error);
    }
    fn push(&mut self, offset: usize, message: String, severity: Severity) {
        let line = self.recipe.line_of(offset);
        self.out.push(Diagnostic { file: self.recipe.file.clone(), line, message, severity });
    }
    /// A site path that must exist (as a dir when `dir`).
    fn site_path(&mut self, site: &Path, what: &str, s: &Spanned<String>, dir: bool) {
        self.site_path_at(site, what, s.get_ref(), s.span().start, dir);
    }
    fn site_path_at(&mut self, site: &Path, what: &str, rel: &str, offset: usize, dir: bool) {
        match inside_site(site, rel) {
            None => self.err(offset, format!("{what} {rel:?} is outside the site directory")),
            Some(p) if dir && !p.is_dir() => self.err(offset, format!("{what} {rel:?}: no such directory")),
            Some(p) if !dir && !p.exists() => self.err(offset, format!("{what} {rel:?}: no such file")),
            Some(_) => {}
        }
    }
}

pub fn check_recipes(site_dir: &Path, recipes: &[Recipe], profiles: &[ProfileLayer]) -> Vec<Diagnostic> {
    let mut all = Vec::new();
    for r in recipes {
        let mut c = Ctx { recipe: r, out: Vec::new() };
        let s = &r.spec;
        let base = s.base.get_ref();
        let base_at = s.base.span().start;
        let n = [base.dir.is_some(), base.tarball.is_some(), base.oci.is_some(), base.scratch]
            .iter()
            .filter(|x| **x)
            .count();
        if n != 1 {
            c.err(base_at, "[base] needs exactly one of dir, tarball, oci, scratch = true".into());
        }
        if let Some(d) = &base.dir {
            c.site_path(site_dir, "base dir", d, true);
        }
        if let Some(t) = &base.tarball {
            c.site_path(site_dir, "base tarball", t, false);
        }
        if let Some(o) = &base.oci {
            c.site_path(site_dir, "base oci layout", o, true);
            if let Some(p) = inside_site(site_dir, o.get_ref()) {
                if p.is_dir() && !p.join("index.json").is_file() {
                    c.err(o.span().start, format!("base oci {:?}: no index.json (not an OCI image layout)", o.get_ref()));
                }
            }
        }
        if base.owner.is_some() && base.dir.is_none() {
            c.err(base_at, "[base] owner applies to a dir base only".into());
        }
        if base.oci_ref.is_some() && base.oci.is_none() {
            c.err(base_at, "[base] oci_ref applies to an oci base only".into());
        }
        if s.profiles.is_empty() {
            c.err(0, "profiles is empty".into());
        }
        for p in &s.profiles {
            if !profiles.iter().any(|x| &x.name == p.get_ref()) {
                c.err(p.span().start, format!("unknown profile {:?}", p.get_ref()));
            }
        }
        if s.outputs.is_empty() {
            c.err(0, "outputs is empty".into());
        }
        for (i, o) in s.outputs.iter().enumerate() {
            if Output::parse(o.get_ref()).is_none() {
                let known: Vec<&str> = Output::ALL.iter().map(|o| o.name()).collect();
                c.err(o.span().start, format!("unknown output {:?} (known: {})", o.get_ref(), known.join(", ")));
            } else if s.outputs[..i].iter().any(|x| x.get_ref() == o.get_ref()) {
                c.push(o.span().start, format!("output {:?} listed twice", o.get_ref()), Severity::Warning);
            }
        }
        for t in &s.tree {
            let at = t.span().start;
            c.site_path_at(site_dir, "tree dir", &t.get_ref().dir, at, true);
            if crate::tree::normalize(&t.get_ref().dest).is_err() {
                c.err(at, format!("tree dest {:?} has a `..` component", t.get_ref().dest));
            }
        }
        for f in &s.file {
            let at = f.span().start;
            let fe = f.get_ref();
            match (&fe.contents, &fe.source) {
                (Some(_), None) => {}
                (None, Some(src)) => c.site_path_at(site_dir, "file source", src, at, false),
                _ => c.err(at, format!("[[file]] {}: give exactly one of contents and source", fe.path)),
            }
            if crate::tree::normalize(&fe.path).map(|p| p.is_empty()).unwrap_or(true) {
                c.err(at, format!("[[file]] path {:?} is not a file path inside the image", fe.path));
            }
        }
        for d in &s.device {
            let de = d.get_ref();
            if de.kind != "c" && de.kind != "b" {
                c.err(d.span().start, format!("[[device]] {}: kind {:?} is not c or b", de.path, de.kind));
            }
        }
        if let Some(k) = &s.kernel {
            let ke = k.get_ref();
            match (&ke.path, &ke.file) {
                (Some(_), None) => {}
                (None, Some(f)) => c.site_path_at(site_dir, "kernel file", f, k.span().start, false),
                _ => c.err(k.span().start, "[kernel] needs exactly one of path and file".into()),
            }
        }
        for u in &s.units {
            if u.get_ref().contains('/') || !u.get_ref().contains('.') {
                c.err(u.span().start, format!("unit {:?} is not a unit name (e.g. sshd.service)", u.get_ref()));
            }
        }
        all.extend(c.out);
    }
    for p in profiles {
        if let Some(d) = &p.layer_dir {
            let rel = d.to_string_lossy();
            let resolved = if d.is_absolute() {
                d.starts_with(site_dir).then(|| d.clone())
            } else {
                inside_site(site_dir, &rel)
            };
            let msg = match resolved {
                None => Some("outside the site directory"),
                Some(p) if !p.is_dir() => Some("no such directory"),
                Some(_) => None,
            };
            if let Some(msg) = msg {
                let file = site_dir.join("profiles").join(format!("{}.toml", p.name));
                all.push(Diagnostic::error(&file, 0, format!("layer {rel:?}: {msg}")));
            }
        }
    }
    all
}

const GIB: u64 = 1 << 30;

/// Warnings for published images that the profile's firmware cannot load or whose root does not
/// fit the profile's declared memory.
pub fn check_store_limits(state_dir: &Path, profiles: &[ProfileLayer]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for img in crate::store::list(state_dir) {
        let Some(p) = profiles.iter().find(|p| p.name == img.profile) else { continue };
        let file = img.dir.join(crate::store::MANIFEST);
        let warn = |out: &mut Vec<Diagnostic>, message: String| {
            out.push(Diagnostic { file: file.clone(), line: 0, message, severity: Severity::Warning })
        };
        for o in &img.outputs {
            let what = format!("image {}/{}/{} {}", img.recipe, img.profile, img.id, o.file);
            if o.name == "initramfs" {
                if matches!(p.firmware.as_str(), "bios" | "both") && o.size > 3 * GIB {
                    warn(&mut out, format!("{what} is {} MiB: BIOS boot loads at most about 3 GiB of initramfs", o.size >> 20));
                }
                if o.size > 4 * GIB {
                    warn(&mut out, format!("{what} is {} MiB: a compressed initramfs over 4 GiB does not boot", o.size >> 20));
                }
            }
            if let Some(mem) = p.memory_mib {
                let live = match o.name.as_str() {
                    "initramfs" => o.uncompressed_size.unwrap_or(o.size),
                    "squashfs" => o.size,
                    _ => continue,
                };
                if live > mem << 20 {
                    warn(&mut out, format!("{what}: live root of {} MiB is larger than profile {}'s memory_mib = {mem}", live >> 20, p.name));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_paths() {
        let s = Path::new("/site");
        assert_eq!(inside_site(s, "a/../b"), Some(PathBuf::from("/site/a/../b")));
        assert_eq!(inside_site(s, "../x"), None);
        assert_eq!(inside_site(s, "a/../../x"), None);
        assert_eq!(inside_site(s, "/etc"), None);
    }
}
