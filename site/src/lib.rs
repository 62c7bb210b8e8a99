//! The site model: settings, profiles, hosts and the names of image recipes, loaded and
//! validated as one immutable value. No templates, no sockets: every other crate takes MACs,
//! profiles and boot files from here, so each rule exists once.
//!
//! Loading is all or nothing: any error means no `Site`, so a reload never half-applies.

pub mod diag;
pub mod host;
pub mod mac;
pub mod profile;
pub mod settings;

pub use diag::{has_errors, Diagnostic, FileDiags, Severity};
pub use host::{Host, NetMode, Network};
pub use mac::{Mac, MacError};
pub use profile::{Arch, BootMethod, Firmware, MatchRule, Profile};
pub use settings::Settings;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Site {
    pub dir: PathBuf,
    pub settings: Settings,
    pub profiles: BTreeMap<String, Profile>,
    pub hosts: Vec<Host>,
    pub by_mac: HashMap<Mac, usize>,
    pub by_uuid: HashMap<String, usize>,
    pub by_serial: HashMap<String, usize>,
    /// Names of the image recipes (`images/NAME.toml`): what profiles may name as `image`. The
    /// recipes themselves are parsed and checked by the image builder.
    pub recipe_names: BTreeSet<String>,
    /// Warnings that did not stop the load (shown by `check`).
    pub warnings: Vec<Diagnostic>,
}

/// The result of a failed load: every problem found, not just the first.
#[derive(Debug, thiserror::Error)]
#[error("the site has {} error(s)", .0.iter().filter(|d| d.severity == Severity::Error).count())]
pub struct SiteErrors(pub Vec<Diagnostic>);

impl Site {
    /// Loads and validates the site's own files (settings, profiles, hosts, references between
    /// them). Templates, recipes and the stores are checked by their owners on top of this.
    pub fn load(dir: &Path) -> Result<Site, SiteErrors> {
        let mut diags = Vec::new();
        let settings = load_settings(dir, &mut diags);
        let profiles = load_profiles(dir, &mut diags);
        let hosts = load_hosts(dir, &profiles, &mut diags);
        let recipe_names = toml_files(dir, "images", &mut diags)
            .iter()
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        let settings = settings.unwrap_or_default();
        if has_errors(&diags) {
            return Err(SiteErrors(diags));
        }
        let mut site = Site {
            dir: dir.to_path_buf(),
            profiles,
            by_mac: HashMap::new(),
            by_uuid: HashMap::new(),
            by_serial: HashMap::new(),
            hosts,
            recipe_names,
            settings,
            warnings: Vec::new(),
        };
        site.index();
        site.resolve_releases();
        diags.extend(site.check_references());
        if has_errors(&diags) {
            return Err(SiteErrors(diags));
        }
        site.warnings = diags;
        Ok(site)
    }

    /// A path from the settings, relative to the site directory unless absolute: the one rule
    /// for every path a site names.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn index(&mut self) {
        for (i, h) in self.hosts.iter().enumerate() {
            for m in &h.macs {
                self.by_mac.insert(*m, i);
            }
            if let Some(u) = &h.uuid {
                self.by_uuid.insert(u.to_lowercase(), i);
            }
            if let Some(s) = &h.serial {
                self.by_serial.insert(s.clone(), i);
            }
        }
    }

    /// A wave-1 `release = 9` names the release called "9" when there is one, else the one
    /// release of that version for the profile's architecture.
    fn resolve_releases(&mut self) {
        let releases = &self.settings.install.releases;
        for p in self.profiles.values_mut() {
            let Some(v) = p.release_by_version else {
                continue;
            };
            if releases.contains_key(&v.to_string()) {
                continue;
            }
            let mut fits = releases
                .iter()
                .filter(|(_, r)| r.version == Some(v) && r.arch() == p.arch);
            if let (Some((name, _)), None) = (fits.next(), fits.next()) {
                p.release = Some(name.clone());
            }
        }
    }

    /// Cross-file checks that need the whole site: profiles naming recipes, release settings
    /// that profiles rely on.
    fn check_references(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for p in self.profiles.values() {
            let mut err = |message: String| {
                out.push(Diagnostic {
                    file: p.file.clone(),
                    line: 0,
                    message,
                    severity: Severity::Error,
                })
            };
            match p.boot {
                BootMethod::Install | BootMethod::Image => match &p.release {
                    None => err(format!(
                        "profile {:?} boots with {:?} and needs `release` (an [install.releases.NAME])",
                        p.name, p.boot
                    )),
                    Some(r) => match self.settings.install.releases.get(r) {
                        None => err(format!(
                            "profile {:?} uses release {r}, but pxeforge.toml has no [install.releases.{r}]{}",
                            p.name,
                            if p.release_by_version.is_some() { " and no single release of that version for its arch" } else { "" }
                        )),
                        Some(rel) if rel.arch() != p.arch => err(format!(
                            "profile {:?} is {} but release {r} is an {} tree",
                            p.name,
                            p.arch.as_str(),
                            rel.arch().as_str()
                        )),
                        Some(_) => {}
                    },
                },
                _ => {}
            }
            if matches!(p.boot, BootMethod::Image | BootMethod::Diskless) {
                match &p.image {
                    None => err(format!(
                        "profile {:?} boots with {:?} and needs `image` (a recipe under images/)",
                        p.name, p.boot
                    )),
                    Some(img) if !self.recipe_names.contains(img) => err(format!(
                        "profile {:?} names image {img:?}, but there is no images/{img}.toml",
                        p.name
                    )),
                    _ => {}
                }
            }
        }
        out
    }

    pub fn host_by_mac(&self, mac: &Mac) -> Option<&Host> {
        self.by_mac.get(mac).map(|&i| &self.hosts[i])
    }

    pub fn host_by_name(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

fn read(dir: &Path, path: &Path, diags: &mut Vec<Diagnostic>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            diags.push(Diagnostic {
                file: path.strip_prefix(dir).unwrap_or(path).to_path_buf(),
                line: 0,
                message: format!("cannot read: {e}"),
                severity: Severity::Error,
            });
            None
        }
    }
}

/// `*.toml` directly in `dir/sub`, sorted so that messages and precedence are stable.
fn toml_files(dir: &Path, sub: &str, diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let d = dir.join(sub);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            diags.push(Diagnostic {
                file: PathBuf::from(sub),
                line: 0,
                message: format!("cannot list: {e}"),
                severity: Severity::Error,
            });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    files
}

/// `[install.releases.*]`: names usable as store keys, sane values, and the wave-1 form mapped
/// onto the new keys (`version` from a numeric name, `arch` x86_64, `upstream` from `boot_tree`
/// or `repo`), each with a warning that names the key to write.
fn check_releases(
    releases: &mut BTreeMap<String, settings::ReleaseSettings>,
    text: &str,
    fd: &mut FileDiags,
) {
    for (name, r) in releases.iter_mut() {
        let header = format!("[install.releases.{name}]");
        let off = text
            .find(&header)
            .or_else(|| text.find(&format!("[install.releases.\"{name}\"]")))
            .unwrap_or(0);
        let line = fd.line_of(off);
        let at = format!("install.releases.{name}");
        if !pxeforge_store::valid_name(name) {
            fd.error_at(off, format!("{at}: a release name is letters, digits, '-', '_' and '.' (it names a folder of the releases store)"));
        }
        match r.version {
            Some(9 | 10) => {}
            Some(v) => fd.error_at(off, format!("{at}: version {v}: CentOS Stream 9 or 10")),
            None => match name.parse::<u32>() {
                Ok(v @ (9 | 10)) => {
                    r.version = Some(v);
                    fd.push(line, Severity::Warning, format!("{at}: the version is read from the name (wave-1 form): write version = {v}"));
                }
                _ => fd.error_at(off, format!("{at}: needs version (9 or 10)")),
            },
        }
        if r.arch.is_none() {
            fd.push(
                line,
                Severity::Warning,
                format!("{at}: no arch, x86_64 assumed (wave-1 form): write arch = \"x86_64\""),
            );
        }
        if r.upstream.is_none() {
            match (&r.boot_tree, &r.repo) {
                (Some(_), _) => fd.push(line, Severity::Warning, format!("{at}: boot_tree is read as upstream (wave-1 form): write upstream = the install tree's URL")),
                (None, Some(_)) => fd.push(line, Severity::Warning, format!("{at}: repo is read as upstream, the install tree (wave-1 form): write upstream = the install tree's URL")),
                (None, None) => fd.error_at(off, format!("{at}: needs upstream, the install tree's URL")),
            }
        } else if r.boot_tree.is_some() {
            fd.error_at(
                off,
                format!("{at}: boot_tree is the wave-1 name of upstream: keep only upstream"),
            );
        }
        if let Some(sum) = &r.treeinfo_sha256 {
            if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                fd.error_at(off, format!("{at}: treeinfo_sha256 must be 64 hex digits"));
            }
        }
        let u = r.upstream();
        if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("{base_url}")) {
            fd.error_at(off, format!("{at}: upstream {u:?} must be an http:// or https:// URL (or start with {{base_url}})"));
        }
    }
}

fn load_settings(dir: &Path, diags: &mut Vec<Diagnostic>) -> Option<Settings> {
    let path = dir.join("pxeforge.toml");
    if !path.exists() {
        diags.push(Diagnostic {
            file: PathBuf::from("pxeforge.toml"),
            line: 0,
            message: format!(
                "no pxeforge.toml in {}: is --site the site directory?",
                dir.display()
            ),
            severity: Severity::Error,
        });
        return None;
    }
    let text = read(dir, &path, diags)?;
    let mut fd = FileDiags::new(dir, &path, &text);
    let parsed = toml::from_str::<Settings>(&text);
    let out = match parsed {
        Ok(s) => {
            if let Some(pool) = &s.dhcp.pool {
                let off = text.find("[dhcp.pool]").unwrap_or(0);
                if u32::from(pool.start) > u32::from(pool.end) || !(1..=32).contains(&pool.prefix) {
                    fd.error_at(
                        off,
                        "dhcp pool: start must not be above end, prefix 1 to 32",
                    );
                }
                let line = fd.line_of(off);
                fd.push(
                    line,
                    Severity::Warning,
                    "[dhcp.pool] is read as one [[dhcp.subnet]] (network = start/prefix): \
                     write it as [[dhcp.subnet]] with network, start and end",
                );
            }
            check_dhcp_subnets(&s.dhcp, &text, &mut fd);
            let mut s = s;
            check_releases(&mut s.install.releases, &text, &mut fd);
            for n in &s.limits.exempt {
                if !settings::valid_network(n) {
                    let off = text.find(n.as_str()).unwrap_or(0);
                    fd.error_at(
                        off,
                        format!("limits.exempt: {n:?} is not an address or a network (10.0.0.0/8, fd00::/8)"),
                    );
                }
            }
            if s.admin.tls_cert.is_some() != s.admin.tls_key.is_some() {
                let off = text.find("tls_").unwrap_or(0);
                fd.error_at(
                    off,
                    "admin: tls_cert and tls_key go together (both, or neither)",
                );
            }
            let b = &s.server.base_url;
            if !(b.is_empty() || b.starts_with("http://") || b.starts_with("https://")) {
                let off = text.find("base_url").unwrap_or(0);
                fd.error_at(off, "server.base_url must start with http:// or https://");
            }
            Some(s)
        }
        Err(e) => {
            fd.toml_error(&e);
            None
        }
    };
    diags.append(&mut fd.out);
    out
}

/// `[[dhcp.subnet]]`: a network with no host bits, a range inside it, and no two subnets
/// overlapping (a link must pick exactly one pool). Also the DHCP limits that must not be 0.
fn check_dhcp_subnets(d: &settings::DhcpSettings, text: &str, fd: &mut FileDiags) {
    let subnets = d.subnets();
    for (i, sn) in d.subnet.iter().enumerate() {
        let off = text.find(&sn.network).unwrap_or(0);
        let Some((net, prefix)) = sn.parse_network() else {
            fd.error_at(
                off,
                format!(
                    "dhcp.subnet: network {:?} is not A.B.C.D/N (1-32, no host bits)",
                    sn.network
                ),
            );
            continue;
        };
        if !sn.contains(sn.start) || !sn.contains(sn.end) || sn.start > sn.end {
            fd.error_at(off, format!("dhcp.subnet {net}/{prefix}: start and end must be inside it, start not above end"));
        }
        let others = subnets.iter().skip(i + usize::from(d.pool.is_some()) + 1);
        for o in others {
            if let Some((onet, _)) = o.parse_network() {
                if sn.contains(onet) || o.contains(net) {
                    fd.error_at(
                        off,
                        format!("dhcp.subnet {net}/{prefix} overlaps {}", o.network),
                    );
                }
            }
        }
    }
    if let Some(p) = &d.pool {
        for sn in &d.subnet {
            if sn.contains(p.start) {
                let off = text.find("[dhcp.pool]").unwrap_or(0);
                fd.error_at(
                    off,
                    format!("[dhcp.pool] is on subnet {} as well", sn.network),
                );
            }
        }
    }
    if d.ping_timeout_ms == 0 || d.offer_hold_secs == 0 {
        let off = text.find("[dhcp]").unwrap_or(0);
        fd.error_at(
            off,
            "dhcp.ping_timeout_ms and dhcp.offer_hold_secs must be at least 1",
        );
    }
}

fn load_profiles(dir: &Path, diags: &mut Vec<Diagnostic>) -> BTreeMap<String, Profile> {
    let mut out = BTreeMap::new();
    for path in toml_files(dir, "profiles", diags) {
        let Some(text) = read(dir, &path, diags) else {
            continue;
        };
        let mut fd = FileDiags::new(dir, &path, &text);
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(p) = parse_profile(Some(dir), &name, &text, &mut fd) {
            out.insert(name, p);
        }
        diags.append(&mut fd.out);
    }
    out
}

/// Parses one profile as strictly as the site loader does, without the checks that need the
/// site directory (paths that must exist): for the image builder's tools and tests.
pub fn parse_profile_text(name: &str, text: &str) -> Result<Profile, Vec<Diagnostic>> {
    let path = PathBuf::from(format!("profiles/{name}.toml"));
    let mut fd = FileDiags::new(Path::new(""), &path, text);
    let p = parse_profile(None, name, text, &mut fd);
    match p {
        Some(p) if !has_errors(&fd.out) => Ok(p),
        _ => Err(fd.out),
    }
}

/// One profile file: schema and value checks; with `dir`, also that the paths it names exist in
/// the site.
fn parse_profile(
    dir: Option<&Path>,
    name: &str,
    text: &str,
    fd: &mut FileDiags,
) -> Option<Profile> {
    let p = match toml::from_str::<profile::ProfileFile>(text) {
        Err(e) => {
            fd.toml_error(&e);
            return None;
        }
        Ok(p) => p,
    };
    if let Some(r) = &p.release {
        match r.get_ref() {
            profile::ReleaseRef::Version(9 | 10) => fd.push(
                fd.line_of(r.span().start),
                Severity::Warning,
                "release = <number> is the wave-1 form: name an [install.releases.NAME] with release = \"NAME\"",
            ),
            profile::ReleaseRef::Version(_) => {
                fd.error_at(r.span().start, "release must name an [install.releases.NAME]")
            }
            profile::ReleaseRef::Name(n) if n.is_empty() => {
                fd.error_at(r.span().start, "release must name an [install.releases.NAME]")
            }
            profile::ReleaseRef::Name(_) => {}
        }
    }
    let disk = p.disk.get_ref();
    if !disk.starts_with("/dev/") {
        fd.error_at(
            p.disk.span().start,
            format!("disk {disk:?} must be a device path such as /dev/disk/by-path/... or /dev/disk/by-id/nvme-*"),
        );
    }
    if disk
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        fd.error_at(
            p.disk.span().start,
            "disk must not contain spaces or quotes",
        );
    }
    let mut match_rules = Vec::new();
    for m in p.match_rules {
        let at = m.span().start;
        let mut r = m.into_inner();
        if r.manufacturer.is_none() && r.product.is_none() {
            fd.error_at(at, "a [[match]] rule needs manufacturer and/or product");
        }
        if let Err(e) = r.compile() {
            fd.error_at(at, e);
        }
        match_rules.push(r);
    }
    for arg in p.kernel_args.iter().chain(p.console.iter()) {
        if arg.chars().any(|c| c.is_control()) {
            fd.push(
                0,
                Severity::Error,
                "kernel_args and console must be single-line",
            );
        }
    }
    if let Some(l) = &p.layer {
        check_inside_site(dir, l.get_ref(), l.span().start, "layer", fd);
    }
    for f in &p.firmware_files {
        check_inside_site(dir, f.get_ref(), f.span().start, "firmware_files", fd);
    }
    let kickstart = p
        .kickstart
        .as_ref()
        .map(|k| k.get_ref().clone())
        .unwrap_or_else(|| "centos-stream.ks".to_string());
    if dir.is_some_and(|d| !d.join("kickstarts").join(&kickstart).is_file()) {
        let off = p.kickstart.as_ref().map(|k| k.span().start).unwrap_or(0);
        fd.error_at(
            off,
            format!("kickstart template kickstarts/{kickstart} does not exist"),
        );
    }
    Some(Profile {
        name: name.to_string(),
        description: p.description,
        arch: p.arch,
        firmware: p.firmware,
        memory_mib: p.memory_mib,
        console: p.console,
        kernel_args: p.kernel_args,
        disk: p.disk.into_inner(),
        interface: p.interface,
        drivers: p.drivers,
        firmware_files: p
            .firmware_files
            .into_iter()
            .map(|f| f.into_inner())
            .collect(),
        boot: p.boot,
        release_by_version: match p.release.as_ref().map(|r| r.get_ref()) {
            Some(profile::ReleaseRef::Version(v)) => Some(*v),
            _ => None,
        },
        release: p.release.map(|r| match r.into_inner() {
            profile::ReleaseRef::Name(n) => n,
            profile::ReleaseRef::Version(v) => v.to_string(),
        }),
        kickstart,
        image: p.image.map(|i| i.into_inner()),
        layer: p.layer.map(|l| l.into_inner()),
        match_rules,
        generation: p.generation,
        auto_install: p.auto_install,
        file: fd.file.clone(),
    })
}

/// A path a profile names: never outside the site, and (with the site directory) existing.
fn check_inside_site(
    dir: Option<&Path>,
    rel: &Path,
    offset: usize,
    what: &str,
    fd: &mut FileDiags,
) {
    let escapes = rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        fd.error_at(
            offset,
            format!("{what} path {} must stay inside the site", rel.display()),
        );
    } else if dir.is_some_and(|d| !d.join(rel).exists()) {
        fd.error_at(
            offset,
            format!("{what} path {} does not exist", rel.display()),
        );
    }
}

fn load_hosts(
    dir: &Path,
    profiles: &BTreeMap<String, Profile>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Host> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut seen_mac: HashMap<Mac, String> = HashMap::new();
    let mut seen_name: HashMap<String, String> = HashMap::new();
    let mut seen_uuid: HashMap<String, String> = HashMap::new();
    for path in toml_files(dir, "hosts", diags) {
        let Some(text) = read(dir, &path, diags) else {
            continue;
        };
        let mut fd = FileDiags::new(dir, &path, &text);
        let file = match toml::from_str::<host::HostsFile>(&text) {
            Ok(f) => f,
            Err(e) => {
                fd.toml_error(&e);
                diags.append(&mut fd.out);
                continue;
            }
        };
        for entry in file.host {
            let entry_line = fd.line_of(entry.span().start);
            let h = entry.into_inner();
            let here = |span: std::ops::Range<usize>, fd: &FileDiags| {
                format!("{}:{}", fd.file.display(), fd.line_of(span.start))
            };
            let name = h.name.get_ref().clone();
            if !valid_hostname(&name) {
                fd.error_at(
                    h.name.span().start,
                    format!("host name {name:?} must be a DNS label: letters, digits and '-', at most 63"),
                );
            }
            if let Some(prev) = seen_name.insert(name.clone(), here(h.name.span(), &fd)) {
                fd.error_at(
                    h.name.span().start,
                    format!("duplicate host name {name:?} (first at {prev})"),
                );
            }
            let mac_off = h.mac.span().start;
            let raw_macs: Vec<String> = match h.mac.into_inner() {
                toml::Value::String(m) => vec![m],
                toml::Value::Array(v) => v
                    .into_iter()
                    .filter_map(|m| match m {
                        toml::Value::String(s) => Some(s),
                        other => {
                            fd.error_at(
                                mac_off,
                                format!("host {name:?}: MAC {other} is not a string"),
                            );
                            None
                        }
                    })
                    .collect(),
                other => {
                    fd.error_at(
                        mac_off,
                        format!(
                            "host {name:?}: mac must be a string or a list of strings, not {}",
                            other.type_str()
                        ),
                    );
                    Vec::new()
                }
            };
            let mut macs = Vec::new();
            for m in raw_macs {
                match m.parse::<Mac>() {
                    Ok(mac) => {
                        if let Some(prev) = seen_mac.insert(
                            mac,
                            format!("{}:{}", fd.file.display(), fd.line_of(mac_off)),
                        ) {
                            fd.error_at(mac_off, format!("duplicate MAC {mac} (first at {prev})"));
                        }
                        macs.push(mac);
                    }
                    Err(e) => fd.error_at(mac_off, format!("host {name:?}: {e}")),
                }
            }
            let profile = h.profile.get_ref().clone();
            if !profiles.contains_key(&profile) {
                let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
                fd.error_at(
                    h.profile.span().start,
                    format!("host {name:?} names profile {profile:?}, which does not exist (profiles: {})", known.join(", ")),
                );
            }
            let uuid = h.uuid.map(|u| {
                let v = u.get_ref().trim().to_lowercase();
                if !is_uuid(&v) {
                    fd.error_at(u.span().start, format!("uuid {v:?} is not a UUID"));
                }
                if let Some(prev) = seen_uuid.insert(v.clone(), here(u.span(), &fd)) {
                    fd.error_at(
                        u.span().start,
                        format!("duplicate uuid {v:?} (first at {prev})"),
                    );
                }
                v
            });
            let serial = h.serial.map(|s| s.into_inner());
            let network = match h.network {
                None => Network::default(),
                Some(n) => {
                    let off = n.span().start;
                    compile_network(n.into_inner(), off, &name, &mut fd)
                }
            };
            hosts.push(Host {
                name,
                macs,
                profile,
                uuid,
                serial,
                install: h.install,
                network,
                vars: h.vars,
                generation: h.generation,
                origin: format!("{}:{}", fd.file.display(), entry_line),
            });
        }
        diags.append(&mut fd.out);
    }
    hosts
}

fn compile_network(n: host::NetworkEntry, off: usize, name: &str, fd: &mut FileDiags) -> Network {
    let mut net = Network {
        mode: n.mode,
        gateway: n.gateway,
        dns: n.dns,
        domain: n.domain,
        ..Network::default()
    };
    match (&n.mode, &n.address) {
        (NetMode::Static, None) => fd.error_at(
            off,
            format!("host {name:?}: static network needs `address` (CIDR)"),
        ),
        (_, Some(a)) => match host::parse_cidr(a) {
            Ok((addr, prefix)) => {
                net.address = Some(addr);
                net.prefix = Some(prefix);
                net.netmask = Some(host::netmask(prefix));
            }
            Err(e) => fd.error_at(off, format!("host {name:?}: {e}")),
        },
        _ => {}
    }
    if let Some(d) = &net.domain {
        if !d.split('.').all(valid_hostname) {
            fd.error_at(
                off,
                format!("host {name:?}: domain {d:?} is not a DNS name"),
            );
        }
    }
    net
}

pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}
