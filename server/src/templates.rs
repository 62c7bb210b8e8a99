//! The site's Tera templates: iPXE scripts under `templates/` (named `ipxe/...`) and kickstarts
//! under `kickstarts/` (named `ks/...`), compiled once per load.

use pxeforge_site::{Diagnostic, Severity};
use std::path::{Path, PathBuf};
use tera::{Context, Tera};

/// Script names under `templates/` chosen by boot method.
pub const BOOTSTRAP: &str = "ipxe/boot.ipxe";
pub const INSTALL: &str = "ipxe/install.ipxe";
pub const DISKLESS: &str = "ipxe/diskless.ipxe";
pub const LOCAL: &str = "ipxe/local.ipxe";
pub const DISCOVER: &str = "ipxe/discover.ipxe";
/// An armed host while `install.max_installing` installs are under way. Built in (a site may
/// override it with `templates/wait.ipxe`), so that a site from before the cap works unchanged.
pub const WAIT: &str = "ipxe/wait.ipxe";
const WAIT_BUILTIN: &str = "#!ipxe
echo pxeforge: {{ host.name }} waits for an install slot; asking again in {{ retry_secs }} s
sleep {{ retry_secs }}
chain --replace --autofree {{ base_url }}/boot.ipxe || exit
";

#[derive(Debug)]
pub struct Templates {
    tera: Tera,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
}

fn tera_message(e: &tera::Error) -> String {
    // Tera nests the useful part (e.g. "Variable `x` not found") in its sources.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

impl Templates {
    pub fn load(site_dir: &Path) -> Result<Templates, Vec<Diagnostic>> {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        let mut diags = Vec::new();
        for (sub, prefix) in [("templates", "ipxe"), ("kickstarts", "ks")] {
            let root = site_dir.join(sub);
            collect(&root, &root, prefix, &mut files, &mut diags, site_dir);
        }
        for (path, name) in &files {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    diags.push(diag(site_dir, path, 0, format!("cannot read: {e}")));
                    continue;
                }
            };
            if let Err(e) = tera.add_raw_template(name, &text) {
                let msg = tera_message(&e);
                diags.push(diag(site_dir, path, line_in_tera_message(&msg), msg));
            }
        }
        if !files.iter().any(|(_, n)| n == WAIT) {
            // A constant template: it parses.
            if let Err(e) = tera.add_raw_template(WAIT, WAIT_BUILTIN) {
                diags.push(diag(
                    site_dir,
                    Path::new("templates/wait.ipxe"),
                    0,
                    tera_message(&e),
                ));
            }
        }
        if diags.is_empty() {
            // Resolves includes and inheritance; an include of a missing snippet fails here.
            if let Err(e) = tera.build_inheritance_chains() {
                diags.push(Diagnostic {
                    file: PathBuf::from("templates"),
                    line: 0,
                    message: tera_message(&e),
                    severity: Severity::Error,
                });
            }
        }
        for required in [BOOTSTRAP, INSTALL, DISKLESS, LOCAL, DISCOVER] {
            if !tera.get_template_names().any(|n| n == required) {
                let file = required.replacen("ipxe/", "templates/", 1);
                diags.push(Diagnostic {
                    file: PathBuf::from(file),
                    line: 0,
                    message: "required iPXE template is missing".into(),
                    severity: Severity::Error,
                });
            }
        }
        if diags.is_empty() {
            Ok(Templates { tera })
        } else {
            Err(diags)
        }
    }

    pub fn render(&self, name: &str, ctx: &Context) -> Result<String, RenderError> {
        self.tera
            .render(name, ctx)
            .map_err(|e| RenderError::Template {
                name: name.to_string(),
                message: tera_message(&e),
            })
    }
}

fn diag(site_dir: &Path, path: &Path, line: usize, message: String) -> Diagnostic {
    Diagnostic {
        file: path.strip_prefix(site_dir).unwrap_or(path).to_path_buf(),
        line,
        message,
        severity: Severity::Error,
    }
}

/// Tera's parse errors read "--> 3:10"; take the line.
fn line_in_tera_message(msg: &str) -> usize {
    msg.split("--> ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn collect(
    root: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(PathBuf, String)>,
    diags: &mut Vec<Diagnostic>,
    site_dir: &Path,
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        if dir == root {
            diags.push(diag(
                site_dir,
                dir,
                0,
                "template directory is missing".into(),
            ));
        }
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, prefix, out, diags, site_dir);
        } else if p.is_file()
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push((p.clone(), format!("{prefix}/{rel}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tera_line_is_found() {
        assert_eq!(line_in_tera_message("Failed to parse\n --> 3:10\n"), 3);
        assert_eq!(line_in_tera_message("nothing"), 0);
    }
}
