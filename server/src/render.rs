//! Tera templates of iPXE scripts and kickstarts, and the context they see.
//!
//! The context is flat and documented in the README; every value in it comes from the site
//! or has been validated, so nothing a client sends is pasted into a script.

use crate::mac::Mac;
use crate::site::{BootMethod, Diagnostic, Host, Profile, Severity, Site};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tera::{Context, Tera};

/// Script names under `templates/` chosen by boot method.
pub const BOOTSTRAP: &str = "ipxe/boot.ipxe";
pub const INSTALL: &str = "ipxe/install.ipxe";
pub const DISKLESS: &str = "ipxe/diskless.ipxe";
pub const LOCAL: &str = "ipxe/local.ipxe";
pub const DISCOVER: &str = "ipxe/discover.ipxe";

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

/// What a booting machine told us about itself (via `/ipxe` query parameters).
/// Only validated, printable values survive into this struct.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    pub mac: Option<Mac>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    /// iPXE's `${buildarch}`: i386, x86_64, arm64.
    pub arch: Option<String>,
    /// iPXE's `${platform}`: pcbios or efi.
    pub platform: Option<String>,
}

/// Keeps a fact only if it is short and made of characters that are inert in an iPXE script,
/// a kickstart and a URL.
pub fn clean_fact(v: &str) -> Option<String> {
    let v = v.trim();
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, ' ' | '.' | '_' | '-' | ',' | '(' | ')' | '/' | '+')
        });
    ok.then(|| v.to_string())
}

/// Which script a request gets, decided before anything is rendered.
#[derive(Debug, Clone)]
pub enum ScriptChoice<'a> {
    Host {
        host: &'a Host,
        profile: &'a Profile,
    },
    /// Unknown host whose SMBIOS facts matched this profile.
    Matched {
        profile: &'a Profile,
        mac: Mac,
    },
    Unknown,
}

/// The per-host template context shared by iPXE scripts and kickstarts.
pub fn host_context(
    site: &Site,
    base_url: &str,
    host: &Host,
    profile: &Profile,
    mac: Mac,
    platform: Option<&str>,
) -> Context {
    let mut ctx = Context::new();
    let platform = platform.unwrap_or(match profile.firmware {
        crate::site::profile::Firmware::Bios => "pcbios",
        _ => "efi",
    });
    ctx.insert("base_url", base_url);
    ctx.insert("host", host);
    ctx.insert("profile", profile);
    ctx.insert("mac", &mac.to_string());
    ctx.insert("mac_url", &mac.hyphenated());
    ctx.insert("platform", platform);
    ctx.insert("install", &site.settings.install);
    ctx.insert("ks_url", &format!("{base_url}/ks/{}", mac.hyphenated()));
    ctx.insert("events_url", &format!("{base_url}/events"));
    let release = profile.release.map(|r| r.to_string());
    let rel = release
        .as_ref()
        .and_then(|r| site.settings.install.releases.get(r));
    let repo = rel
        .map(|r| r.repo.replace("{base_url}", base_url))
        .unwrap_or_default();
    let boot_tree = rel
        .and_then(|r| r.boot_tree.as_ref())
        .map(|t| t.replace("{base_url}", base_url))
        .unwrap_or_else(|| repo.clone());
    let extra_repos: std::collections::BTreeMap<String, String> = rel
        .map(|r| {
            r.extra_repos
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("{base_url}", base_url)))
                .collect()
        })
        .unwrap_or_default();
    ctx.insert("release", &release.unwrap_or_default());
    ctx.insert("repo", &repo);
    ctx.insert("extra_repos", &extra_repos);
    ctx.insert("kernel_url", &format!("{boot_tree}/images/pxeboot/vmlinuz"));
    ctx.insert(
        "initrd_url",
        &format!("{boot_tree}/images/pxeboot/initrd.img"),
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(c) = &profile.console {
        args.push(format!("console={c}"));
    }
    args.extend(profile.kernel_args.iter().cloned());
    ctx.insert("kernel_args", &args.join(" "));
    ctx.insert(
        "image",
        &crate::images::image_context(site, base_url, profile),
    );
    ctx
}

/// Base URL used when there is no request to derive it from (`render`, `check`).
pub fn offline_base_url(site: &Site) -> String {
    if site.settings.server.base_url.is_empty() {
        format!("http://{}", site.settings.server.http)
    } else {
        site.settings
            .server
            .base_url
            .trim_end_matches('/')
            .to_string()
    }
}

pub fn ipxe_template_for(host: Option<&Host>, profile: &Profile) -> &'static str {
    if host.is_some_and(|h| !h.install) {
        return LOCAL;
    }
    match profile.boot {
        BootMethod::Install | BootMethod::Image => INSTALL,
        BootMethod::Diskless => DISKLESS,
        BootMethod::Local => LOCAL,
    }
}

/// A stand-in host for an unknown machine that a profile's match rule claimed.
pub fn matched_host(profile: &Profile, mac: Mac) -> Host {
    Host {
        name: format!("mac-{}", mac.hyphenated().replace('-', "")),
        macs: vec![mac],
        profile: profile.name.clone(),
        uuid: None,
        serial: None,
        install: true,
        network: Default::default(),
        vars: Default::default(),
        origin: format!("match rule of {}", profile.file.display()),
    }
}

pub fn render_ipxe(
    site: &Site,
    base_url: &str,
    choice: &ScriptChoice,
    facts: &Facts,
) -> Result<String, RenderError> {
    let platform = facts
        .platform
        .as_deref()
        .filter(|p| matches!(*p, "pcbios" | "efi"));
    match choice {
        ScriptChoice::Host { host, profile } => {
            let mac = facts
                .mac
                .or_else(|| host.macs.first().copied())
                .unwrap_or(Mac([0; 6]));
            let ctx = host_context(site, base_url, host, profile, mac, platform);
            site.templates
                .render(ipxe_template_for(Some(host), profile), &ctx)
        }
        ScriptChoice::Matched { profile, mac } => {
            let host = matched_host(profile, *mac);
            let ctx = host_context(site, base_url, &host, profile, *mac, platform);
            site.templates
                .render(ipxe_template_for(None, profile), &ctx)
        }
        ScriptChoice::Unknown => {
            let mut ctx = Context::new();
            ctx.insert("base_url", base_url);
            ctx.insert("facts", facts);
            ctx.insert("mac", &facts.mac.map(|m| m.to_string()).unwrap_or_default());
            ctx.insert("retry_secs", &site.settings.install.discover_retry_secs);
            let name = match site.settings.install.unknown_hosts {
                crate::site::settings::UnknownHostPolicy::Local => LOCAL,
                crate::site::settings::UnknownHostPolicy::Discover => DISCOVER,
            };
            site.templates.render(name, &ctx)
        }
    }
}

pub fn render_bootstrap(site: &Site, base_url: &str) -> Result<String, RenderError> {
    let mut ctx = Context::new();
    ctx.insert("base_url", base_url);
    site.templates.render(BOOTSTRAP, &ctx)
}

pub fn render_kickstart(
    site: &Site,
    base_url: &str,
    host: &Host,
    profile: &Profile,
    mac: Mac,
) -> Result<String, RenderError> {
    let ctx = host_context(site, base_url, host, profile, mac, None);
    site.templates
        .render(&format!("ks/{}", profile.kickstart), &ctx)
}

/// Whether a profile's hosts get a kickstart at all.
pub fn has_kickstart(profile: &Profile) -> bool {
    matches!(profile.boot, BootMethod::Install | BootMethod::Image)
}

/// Renders every script and kickstart for every host (and every profile's match-rule
/// stand-in), turning failures into diagnostics that name the host's file and line.
pub fn check_all(site: &Site) -> Vec<Diagnostic> {
    let base = offline_base_url(site);
    let mut out = Vec::new();
    let mut fail = |origin: &str, what: String| {
        let (file, line) = origin
            .rsplit_once(':')
            .map(|(f, l)| (PathBuf::from(f), l.parse().unwrap_or(0)))
            .unwrap_or_else(|| (PathBuf::from(origin), 0));
        out.push(Diagnostic {
            file,
            line,
            message: what,
            severity: Severity::Error,
        });
    };
    if let Err(e) = render_bootstrap(site, &base) {
        fail("templates/boot.ipxe:0", e.to_string());
    }
    let unknown = Facts {
        mac: Some(Mac([0x02, 0, 0, 0, 0, 1])),
        ..Facts::default()
    };
    if let Err(e) = render_ipxe(site, &base, &ScriptChoice::Unknown, &unknown) {
        fail("pxeforge.toml:0", format!("unknown-host script: {e}"));
    }
    let mut unbuilt = std::collections::BTreeSet::new();
    let mut warnings = Vec::new();
    for host in &site.hosts {
        let Some(profile) = site.profiles.get(&host.profile) else {
            continue;
        };
        let mac = host.macs.first().copied().unwrap_or(Mac([0; 6]));
        for platform in ["pcbios", "efi"] {
            let facts = Facts {
                mac: Some(mac),
                platform: Some(platform.into()),
                ..Facts::default()
            };
            if let Err(e) = render_ipxe(site, &base, &ScriptChoice::Host { host, profile }, &facts)
            {
                fail(
                    &host.origin,
                    format!("host {:?}: iPXE script: {e}", host.name),
                );
            }
        }
        if profile.boot == BootMethod::Image
            && crate::images::image_context(site, &base, profile)
                .is_none_or(|i| i.tarball.is_none())
        {
            unbuilt.insert(profile.name.clone());
            continue;
        }
        if has_kickstart(profile) && host.install {
            if let Err(e) = render_kickstart(site, &base, host, profile, mac) {
                fail(
                    &host.origin,
                    format!("host {:?}: kickstart: {e}", host.name),
                );
            }
        }
    }
    for name in unbuilt {
        let Some(p) = site.profiles.get(&name) else {
            continue;
        };
        warnings.push(Diagnostic {
            file: p.file.clone(),
            line: 0,
            message: format!(
                "profile {name:?} installs image {:?}, which has no published build with a tar output yet: its hosts' kickstarts fail until `pxeforge build {}` runs",
                p.image.as_deref().unwrap_or(""),
                p.image.as_deref().unwrap_or("")
            ),
            severity: Severity::Warning,
        });
    }
    for profile in site.profiles.values().filter(|p| !p.match_rules.is_empty()) {
        let mac = Mac([0x02, 0, 0, 0, 0, 2]);
        let origin = format!("{}:0", profile.file.display());
        let choice = ScriptChoice::Matched { profile, mac };
        if let Err(e) = render_ipxe(site, &base, &choice, &unknown) {
            fail(
                &origin,
                format!("profile {:?} (matched machine): {e}", profile.name),
            );
        }
        if has_kickstart(profile) {
            let host = matched_host(profile, mac);
            if let Err(e) = render_kickstart(site, &base, &host, profile, mac) {
                fail(
                    &origin,
                    format!(
                        "profile {:?} (matched machine) kickstart: {e}",
                        profile.name
                    ),
                );
            }
        }
    }
    out.extend(warnings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_cleaned() {
        assert_eq!(clean_fact(" Dell Inc. "), Some("Dell Inc.".into()));
        assert_eq!(clean_fact("PowerEdge R650"), Some("PowerEdge R650".into()));
        assert_eq!(clean_fact("x\nkernel http://evil"), None);
        assert_eq!(clean_fact("a;b"), None);
        assert_eq!(clean_fact("${x}"), None);
        assert_eq!(clean_fact(&"a".repeat(200)), None);
        assert_eq!(clean_fact(""), None);
    }

    #[test]
    fn tera_line_is_found() {
        assert_eq!(line_in_tera_message("Failed to parse\n --> 3:10\n"), 3);
        assert_eq!(line_in_tera_message("nothing"), 0);
    }
}
