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
        self.out.push(Diagnostic {
            file: self.recipe.file.clone(),
            line,
            message,
            severity,
        });
    }
    /// A site path that the build reads (as a dir when `dir`). Outside the site is an error; a
    /// missing one is a warning: inputs such as a `podman export` tarball or a fetched kernel are
    /// often produced by a separate step, and their absence must not stop `serve` from serving
    /// hosts. `build` refuses to run without them.
    fn site_path(&mut self, site: &Path, what: &str, s: &Spanned<String>, dir: bool) {
        self.site_path_at(site, what, s.get_ref(), s.span().start, dir);
    }
    fn site_path_at(&mut self, site: &Path, what: &str, rel: &str, offset: usize, dir: bool) {
        match inside_site(site, rel) {
            None => self.err(
                offset,
                format!("{what} {rel:?} is outside the site directory"),
            ),
            Some(p) if dir && !p.is_dir() => self.push(
                offset,
                format!("{what} {rel:?}: no such directory (`pxeforge build` needs it)"),
                Severity::Warning,
            ),
            Some(p) if !dir && !p.exists() => self.push(
                offset,
                format!("{what} {rel:?}: no such file (`pxeforge build` needs it)"),
                Severity::Warning,
            ),
            Some(_) => {}
        }
    }
}

pub fn check_recipes(
    site_dir: &Path,
    recipes: &[Recipe],
    profiles: &[ProfileLayer],
) -> Vec<Diagnostic> {
    let mut all = Vec::new();
    for r in recipes {
        let mut c = Ctx {
            recipe: r,
            out: Vec::new(),
        };
        let s = &r.spec;
        let base = s.base.get_ref();
        let base_at = s.base.span().start;
        let n = [
            base.dir.is_some(),
            base.tarball.is_some(),
            base.oci.is_some(),
            base.scratch,
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            c.err(
                base_at,
                "[base] needs exactly one of dir, tarball, oci, scratch = true".into(),
            );
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
                    c.err(
                        o.span().start,
                        format!(
                            "base oci {:?}: no index.json (not an OCI image layout)",
                            o.get_ref()
                        ),
                    );
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
                c.err(
                    o.span().start,
                    format!(
                        "unknown output {:?} (known: {})",
                        o.get_ref(),
                        known.join(", ")
                    ),
                );
            } else if s.outputs[..i].iter().any(|x| x.get_ref() == o.get_ref()) {
                c.push(
                    o.span().start,
                    format!("output {:?} listed twice", o.get_ref()),
                    Severity::Warning,
                );
            }
        }
        for t in &s.tree {
            let at = t.span().start;
            c.site_path_at(site_dir, "tree dir", &t.get_ref().dir, at, true);
            if crate::tree::normalize(&t.get_ref().dest).is_err() {
                c.err(
                    at,
                    format!("tree dest {:?} has a `..` component", t.get_ref().dest),
                );
            }
        }
        for f in &s.file {
            let at = f.span().start;
            let fe = f.get_ref();
            match (&fe.contents, &fe.source) {
                (Some(_), None) => {}
                (None, Some(src)) => c.site_path_at(site_dir, "file source", src, at, false),
                _ => c.err(
                    at,
                    format!(
                        "[[file]] {}: give exactly one of contents and source",
                        fe.path
                    ),
                ),
            }
            if crate::tree::normalize(&fe.path)
                .map(|p| p.is_empty())
                .unwrap_or(true)
            {
                c.err(
                    at,
                    format!(
                        "[[file]] path {:?} is not a file path inside the image",
                        fe.path
                    ),
                );
            }
        }
        for d in &s.device {
            let de = d.get_ref();
            if de.kind != "c" && de.kind != "b" {
                c.err(
                    d.span().start,
                    format!("[[device]] {}: kind {:?} is not c or b", de.path, de.kind),
                );
            }
        }
        if let Some(k) = &s.kernel {
            let ke = k.get_ref();
            match (&ke.path, &ke.file) {
                (Some(_), None) => {}
                (None, Some(f)) => {
                    c.site_path_at(site_dir, "kernel file", f, k.span().start, false)
                }
                _ => c.err(
                    k.span().start,
                    "[kernel] needs exactly one of path and file".into(),
                ),
            }
        }
        for u in &s.units {
            if u.get_ref().contains('/') || !u.get_ref().contains('.') {
                c.err(
                    u.span().start,
                    format!(
                        "unit {:?} is not a unit name (e.g. sshd.service)",
                        u.get_ref()
                    ),
                );
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

/// What a profile's firmware and memory cannot carry of one published output (pure).
pub fn output_limits(p: &ProfileLayer, o: &crate::store::OutputFile) -> Vec<String> {
    let mut v = Vec::new();
    if o.name == "initramfs" {
        if matches!(p.firmware.as_str(), "bios" | "both") && o.size > 3 * GIB {
            v.push(format!(
                "{} is {} MiB: BIOS boot loads at most about 3 GiB of initramfs",
                o.file,
                o.size >> 20
            ));
        }
        if o.size > 4 * GIB {
            v.push(format!(
                "{} is {} MiB: a compressed initramfs over 4 GiB does not boot",
                o.file,
                o.size >> 20
            ));
        }
    }
    let live = match o.name.as_str() {
        "initramfs" => Some(o.uncompressed_size.unwrap_or(o.size)),
        "squashfs" => Some(o.size),
        _ => None,
    };
    if let (Some(live), Some(mem)) = (live, p.memory_mib) {
        if live > mem << 20 {
            v.push(format!(
                "{}: live root of {} MiB is larger than profile {}'s memory_mib = {mem}",
                o.file,
                live >> 20,
                p.name
            ));
        }
    }
    v
}

/// Warnings for the current published images that the profile's firmware cannot load or whose
/// root does not fit the profile's declared memory.
pub fn check_store_limits(state_dir: &Path, profiles: &[ProfileLayer]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for img in crate::store::list(state_dir)
        .into_iter()
        .filter(|i| i.is_current)
    {
        let Some(p) = profiles.iter().find(|p| p.name == img.profile) else {
            continue;
        };
        for o in &img.outputs {
            for m in output_limits(p, o) {
                out.push(Diagnostic {
                    file: img.dir.join(crate::store::MANIFEST),
                    line: 0,
                    message: format!("image {}/{}/{}: {m}", img.recipe, img.profile, img.id),
                    severity: Severity::Warning,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_limits() {
        let out = |name: &str, size: u64, unc: Option<u64>| crate::store::OutputFile {
            name: name.into(),
            file: "f".into(),
            size,
            sha256: String::new(),
            uncompressed_size: unc,
        };
        let p = |fw: &str, mem: Option<u64>| ProfileLayer {
            name: "p".into(),
            firmware: fw.into(),
            memory_mib: mem,
            ..Default::default()
        };
        let big = out("initramfs", 3 * GIB + 1, None);
        assert_eq!(output_limits(&p("bios", None), &big).len(), 1);
        assert_eq!(output_limits(&p("both", None), &big).len(), 1);
        assert!(output_limits(&p("uefi", None), &big).is_empty());
        let huge = out("initramfs", 4 * GIB + 1, None);
        assert_eq!(output_limits(&p("uefi", None), &huge).len(), 1);
        assert_eq!(output_limits(&p("bios", None), &huge).len(), 2);
        // Memory is compared with what the root takes once unpacked.
        let small = out("initramfs", 10 << 20, Some(600 << 20));
        assert_eq!(output_limits(&p("uefi", Some(512)), &small).len(), 1);
        assert!(output_limits(&p("uefi", Some(1024)), &small).is_empty());
        assert_eq!(
            output_limits(&p("uefi", Some(8)), &out("squashfs", 9 << 20, None)).len(),
            1
        );
        assert!(output_limits(&p("bios", Some(1)), &out("disk", 5 * GIB, None)).is_empty());
    }

    #[test]
    fn site_paths() {
        let s = Path::new("/site");
        assert_eq!(
            inside_site(s, "a/../b"),
            Some(PathBuf::from("/site/a/../b"))
        );
        assert_eq!(inside_site(s, "../x"), None);
        assert_eq!(inside_site(s, "a/../../x"), None);
        assert_eq!(inside_site(s, "/etc"), None);
    }
}
