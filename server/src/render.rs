//! Tera templates of iPXE scripts and kickstarts, and the context they see.
//!
//! The context is flat and documented in the README; every value in it comes from the site
//! or has been validated, so nothing a client sends is pasted into a script.

use crate::mac::Mac;
use crate::site::{BootMethod, Diagnostic, Host, Profile, Severity, Site};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// Lives here, owned by the `Site`, so that a reload (a new `Site`) starts with an empty
    /// cache and no entry can outlive the profiles and settings it was built from.
    profile_contexts: ProfileContexts,
}

/// Base URLs can come from a client's Host header, so the number of distinct keys is not ours to
/// choose. A site has a handful of profiles × base URLs × 2 platforms; this is far above that.
const PROFILE_CONTEXTS_MAX: usize = 1024;

/// (profile name, base URL, platform): everything the shared part of a host's context depends on,
/// given the `Site` the cache belongs to.
type ProfileKey = (String, String, String);

/// The part of the host context that is the same for every host of a profile: serialising the
/// profile and the install settings dominated the cost of rendering a script.
#[derive(Default)]
struct ProfileContexts {
    // `Arc` so that a hit holds the lock only for a refcount bump, not a deep clone.
    map: Mutex<HashMap<ProfileKey, Arc<SharedContext>>>,
}

/// One profile's shared context, and copies of it that finished renders handed back: a render
/// overwrites the same per-request keys in a copy instead of deep-cloning the whole context
/// (the clone and its drop were a tenth of a rendered request's CPU).
struct SharedContext {
    base: Context,
    spare: Mutex<Vec<Context>>,
}

/// Copies kept per entry: one per thread that renders at the same moment is all that is reused.
const SPARE_CONTEXTS: usize = 8;

impl SharedContext {
    fn take(&self) -> Context {
        let spare = self.spare.lock().ok().and_then(|mut v| v.pop());
        spare.unwrap_or_else(|| self.base.clone())
    }

    /// Only copies whose keys are the base's plus the per-request ones come back here, so a
    /// reused copy is exactly a fresh clone with those keys set again.
    fn give_back(&self, ctx: Context) {
        if let Ok(mut v) = self.spare.lock() {
            if v.len() < SPARE_CONTEXTS {
                v.push(ctx);
            }
        }
    }
}

impl std::fmt::Debug for ProfileContexts {
    // The contexts themselves would swamp any `Debug` of the site.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.map.lock().map(|m| m.len()).ok();
        f.debug_struct("ProfileContexts")
            .field("len", &len)
            .finish()
    }
}

impl ProfileContexts {
    /// The shared context of (profile, base URL, platform); `None` when it cannot be cached.
    fn get_or_build(
        &self,
        site: &Site,
        base_url: &str,
        profile: &Profile,
        platform: &str,
    ) -> Option<Arc<SharedContext>> {
        // The key names the profile, so it must be this site's profile of that name; anything
        // else (a caller's modified copy) would be served another profile's context.
        let ours = site
            .profiles
            .get(&profile.name)
            .is_some_and(|p| std::ptr::eq(p, profile));
        if !ours {
            return None;
        }
        let key = (
            profile.name.clone(),
            base_url.to_string(),
            platform.to_string(),
        );
        // A poisoned lock only costs the cache, never the request.
        let hit = self.map.lock().ok()?.get(&key).cloned();
        if hit.is_some() {
            return hit;
        }
        let shared = Arc::new(SharedContext {
            base: profile_context(site, base_url, profile, platform),
            spare: Mutex::new(Vec::new()),
        });
        let evicted = match self.map.lock() {
            Ok(mut m) => {
                // Clearing rather than refusing inserts: a flood of made-up Host headers must not
                // leave the site's real base URLs uncached until the next reload.
                let evicted = if m.len() >= PROFILE_CONTEXTS_MAX && !m.contains_key(&key) {
                    std::mem::take(&mut *m)
                } else {
                    HashMap::new()
                };
                m.insert(key, shared.clone());
                evicted
            }
            Err(_) => HashMap::new(),
        };
        // Dropped outside the lock: freeing a thousand contexts should not stall other renders.
        drop(evicted);
        Some(shared)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
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
            Ok(Templates {
                tera,
                profile_contexts: ProfileContexts::default(),
            })
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

/// Calls `f` with the host's template context (shared by iPXE scripts and kickstarts), made
/// from a reused copy of its profile's cached part.
pub fn with_host_context<R>(
    site: &Site,
    base_url: &str,
    host: &Host,
    profile: &Profile,
    mac: Mac,
    platform: Option<&str>,
    f: impl FnOnce(&Context) -> R,
) -> R {
    let platform = platform.unwrap_or_else(|| default_platform(profile));
    let shared = site
        .templates
        .profile_contexts
        .get_or_build(site, base_url, profile, platform);
    let mut ctx = match &shared {
        Some(s) => s.take(),
        None => profile_context(site, base_url, profile, platform),
    };
    add_request_parts(&mut ctx, site, base_url, host, profile, mac);
    let out = f(&ctx);
    if let Some(s) = shared {
        s.give_back(ctx);
    }
    out
}

fn default_platform(profile: &Profile) -> &'static str {
    match profile.firmware {
        crate::site::profile::Firmware::Bios => "pcbios",
        _ => "efi",
    }
}

/// Sets what differs between hosts of one profile, or between requests: always the same keys,
/// so that a reused copy of the shared context keeps nothing of the previous host.
fn add_request_parts(
    ctx: &mut Context,
    site: &Site,
    base_url: &str,
    host: &Host,
    profile: &Profile,
    mac: Mac,
) {
    let mac_url = mac.hyphenated();
    ctx.insert("host", host);
    ctx.insert("mac", &mac.to_string());
    ctx.insert("ks_url", &format!("{base_url}/ks/{mac_url}"));
    ctx.insert("mac_url", &mac_url);
    // Never cached: a publish moves the store's `current` link without reloading the site.
    ctx.insert(
        "image",
        &crate::images::image_context(site, base_url, profile),
    );
}

/// The part of the host context that depends only on the profile, the base URL and the platform
/// (for a given site), and so can be shared by all of a profile's hosts.
fn profile_context(site: &Site, base_url: &str, profile: &Profile, platform: &str) -> Context {
    let mut ctx = Context::new();
    ctx.insert("base_url", base_url);
    ctx.insert("profile", profile);
    ctx.insert("platform", platform);
    ctx.insert("install", &site.settings.install);
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
            with_host_context(site, base_url, host, profile, mac, platform, |ctx| {
                site.templates
                    .render(ipxe_template_for(Some(host), profile), ctx)
            })
        }
        ScriptChoice::Matched { profile, mac } => {
            let host = matched_host(profile, *mac);
            with_host_context(site, base_url, &host, profile, *mac, platform, |ctx| {
                site.templates.render(ipxe_template_for(None, profile), ctx)
            })
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
    with_host_context(site, base_url, host, profile, mac, None, |ctx| {
        site.templates
            .render(&format!("ks/{}", profile.kickstart), ctx)
    })
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

    /// A host's context as an owned value, through the same cache as the server.
    fn host_context(
        site: &Site,
        base_url: &str,
        host: &Host,
        profile: &Profile,
        mac: Mac,
        platform: Option<&str>,
    ) -> Context {
        with_host_context(site, base_url, host, profile, mac, platform, Context::clone)
    }

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

    /// The repository root is the example site.
    fn example_site() -> Site {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        match Site::load(&root) {
            Ok(s) => s,
            Err(e) => panic!("example site does not load: {:#?}", e.0),
        }
    }

    fn uncached_context(
        site: &Site,
        base_url: &str,
        host: &Host,
        profile: &Profile,
        mac: Mac,
        platform: Option<&str>,
    ) -> Context {
        let platform = platform.unwrap_or_else(|| default_platform(profile));
        let mut ctx = profile_context(site, base_url, profile, platform);
        add_request_parts(&mut ctx, site, base_url, host, profile, mac);
        ctx
    }

    /// The iPXE script and, where there is one, the kickstart a context renders to.
    fn render_all(site: &Site, host: &Host, profile: &Profile, ctx: &Context) -> Vec<String> {
        let known = site.host_by_name(&host.name).is_some();
        let mut out = vec![site
            .templates
            .render(ipxe_template_for(known.then_some(host), profile), ctx)
            .expect("iPXE script renders")];
        if has_kickstart(profile) {
            out.push(
                site.templates
                    .render(&format!("ks/{}", profile.kickstart), ctx)
                    .expect("kickstart renders"),
            );
        }
        out
    }

    /// Every host of the example site and every profile's match-rule stand-in.
    fn all_hosts(site: &Site) -> Vec<(Host, &Profile, Mac)> {
        let mut out: Vec<(Host, &Profile, Mac)> = site
            .hosts
            .iter()
            .filter_map(|h| {
                let p = site.profiles.get(&h.profile)?;
                Some((h.clone(), p, h.macs.first().copied().unwrap_or(Mac([0; 6]))))
            })
            .collect();
        for p in site.profiles.values() {
            let mac = Mac([0x02, 0, 0, 0, 0, 2]);
            out.push((matched_host(p, mac), p, mac));
        }
        out
    }

    #[test]
    fn cache_miss_hit_and_uncached_render_the_same() {
        let site = example_site();
        let hosts = all_hosts(&site);
        assert!(
            hosts.len() > site.profiles.len(),
            "the example site has hosts"
        );
        // A base URL nobody has rendered with yet, so the first round misses.
        for base in ["http://cache-test.example:8080", &offline_base_url(&site)] {
            for (host, profile, mac) in &hosts {
                for platform in [None, Some("pcbios"), Some("efi")] {
                    let reference = uncached_context(&site, base, host, profile, *mac, platform);
                    let miss = host_context(&site, base, host, profile, *mac, platform);
                    let hit = host_context(&site, base, host, profile, *mac, platform);
                    assert_eq!(miss, reference, "{} {platform:?}: miss", host.name);
                    assert_eq!(hit, reference, "{} {platform:?}: hit", host.name);
                    let want = render_all(&site, host, profile, &reference);
                    assert_eq!(render_all(&site, host, profile, &miss), want);
                    assert_eq!(render_all(&site, host, profile, &hit), want);
                }
            }
        }
        // Two base URLs × two platforms per profile; `None` resolves to one of them.
        assert_eq!(
            site.templates.profile_contexts.len(),
            2 * 2 * site.profiles.len()
        );
    }

    /// Reused copies of a profile's context, handed from host to host in every order, hold
    /// exactly what a fresh context holds: nothing of the previous host survives.
    #[test]
    fn reused_contexts_keep_nothing_of_the_previous_host() {
        let site = example_site();
        let hosts = all_hosts(&site);
        let base = offline_base_url(&site);
        let fresh: Vec<Context> = hosts
            .iter()
            .map(|(h, p, m)| uncached_context(&site, &base, h, p, *m, None))
            .collect();
        for round in 0..3 {
            for i in 0..hosts.len() {
                // Forwards, backwards, then interleaved, so each copy meets other hosts.
                let j = match round {
                    0 => i,
                    1 => hosts.len() - 1 - i,
                    _ => (i * 7) % hosts.len(),
                };
                let (host, profile, mac) = &hosts[j];
                let seen =
                    with_host_context(&site, &base, host, profile, *mac, None, |c| c.clone());
                assert_eq!(seen, fresh[j], "{} in round {round}", host.name);
            }
        }
    }

    #[test]
    fn cache_is_bounded_under_many_base_urls() {
        let site = example_site();
        let (host, profile, mac) = all_hosts(&site).swap_remove(0);
        for i in 0..(2 * PROFILE_CONTEXTS_MAX + 7) {
            let base = format!("http://client-{i}.example:8080");
            host_context(&site, &base, &host, profile, mac, None);
            assert!(site.templates.profile_contexts.len() <= PROFILE_CONTEXTS_MAX);
        }
        // After the flood a real base URL is still cached and still right.
        let base = offline_base_url(&site);
        let before = site.templates.profile_contexts.len();
        let ctx = host_context(&site, &base, &host, profile, mac, None);
        assert_eq!(
            ctx,
            uncached_context(&site, &base, &host, profile, mac, None)
        );
        let after = site.templates.profile_contexts.len();
        assert!(after == before + 1 || after == 1, "{before} -> {after}");
    }

    #[test]
    fn image_view_follows_a_publish_on_a_cache_hit() {
        let mut site = example_site();
        let state = tempfile::tempdir().expect("tempdir");
        site.state_dir = state.path().to_path_buf();
        let profile = site
            .profiles
            .get_mut("qemu-bios")
            .expect("qemu-bios profile");
        profile.boot = BootMethod::Diskless;
        profile.image = Some("rescue".into());
        let site = site;
        let host = site.host_by_name("vm-bios-01").expect("vm-bios-01");
        let profile = &site.profiles["qemu-bios"];
        let mac = host.macs[0];
        let dir = state.path().join("images/rescue/qemu-bios");
        let publish = |id: &str| {
            let build = dir.join(id);
            std::fs::create_dir_all(&build).expect("build dir");
            let sums = format!(
                "{}  vmlinuz\n{}  initramfs.img\n",
                "a".repeat(64),
                "b".repeat(64)
            );
            std::fs::write(build.join("SHA256SUMS"), sums).expect("sums");
            let tmp = dir.join("current.tmp");
            std::os::unix::fs::symlink(id, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.join("current")).expect("rename");
        };
        // Loading cached the unmodified profile under the offline base URL; a fresh one keeps
        // this test's edit from meeting those entries.
        let base = "http://publish-test.example";
        let script = || {
            let ctx = host_context(&site, base, host, profile, mac, None);
            site.templates
                .render(ipxe_template_for(Some(host), profile), &ctx)
                .expect("diskless script renders")
        };
        publish("build-1");
        let first = script();
        assert!(first.contains("build build-1"), "{first}");
        let cached = site.templates.profile_contexts.len();
        publish("build-2");
        let second = script();
        assert_eq!(site.templates.profile_contexts.len(), cached, "a cache hit");
        assert!(second.contains("build build-2"), "{second}");
        assert_eq!(second, first.replace("build-1", "build-2"));
    }

    #[test]
    fn a_copy_of_a_profile_is_not_served_the_cached_context() {
        let site = example_site();
        let (host, profile, mac) = all_hosts(&site).swap_remove(0);
        let base = offline_base_url(&site);
        host_context(&site, &base, &host, profile, mac, None);
        let mut changed = profile.clone();
        changed.kernel_args = vec!["pxeforge.cache_test=1".into()];
        let ctx = host_context(&site, &base, &host, &changed, mac, None);
        assert_eq!(
            ctx,
            uncached_context(&site, &base, &host, &changed, mac, None)
        );
    }

    #[test]
    fn a_poisoned_cache_falls_back_to_building_the_context() {
        let site = example_site();
        let (host, profile, mac) = all_hosts(&site).swap_remove(0);
        let cache = &site.templates.profile_contexts.map;
        let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = cache.lock();
            panic!("poisoning the profile context cache on purpose");
        }));
        assert!(poisoned.is_err() && cache.is_poisoned());
        let base = "http://poisoned.example";
        let want = uncached_context(&site, base, &host, profile, mac, Some("efi"));
        for _ in 0..2 {
            let ctx = host_context(&site, base, &host, profile, mac, Some("efi"));
            assert_eq!(ctx, want);
        }
    }
}
