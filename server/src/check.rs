//! `pxeforge check` and `pxeforge render`: the same loading, selection and rendering code as
//! `serve`, and the whole-site check that every load runs.

use crate::catalog::Catalog;
use crate::config::Overrides;
use crate::render::{render_bootstrap, render_ipxe, render_kickstart, TOKEN_PLACEHOLDER};
use crate::select::{self, BuildScript, Facts, KickstartChoice, ScriptChoice};
use anyhow::{anyhow, bail, Result};
use pxeforge_site::{BootMethod, Diagnostic, Mac, Severity};
use std::path::{Path, PathBuf};

/// Loads the catalog and renders every script and kickstart for every host: what `serve`,
/// `check`, `render` and `build` all start from.
pub fn load(dir: &Path, overrides: &Overrides) -> Result<Catalog, pxeforge_site::SiteErrors> {
    Catalog::load(dir, overrides, check_all)
}

/// Prints each diagnostic as `file:line: severity: message` on stderr.
pub fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// Renders every script and kickstart for every host (and every profile's match-rule
/// stand-in), turning failures into diagnostics that name the host's file and line.
pub fn check_all(cat: &Catalog) -> Vec<Diagnostic> {
    let site = &cat.site;
    let base = cat.config.base_url.offline().to_string();
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
    if let Err(e) = render_bootstrap(cat, &base) {
        fail("templates/boot.ipxe:0", e.to_string());
    }
    let unknown = Facts {
        mac: Some(Mac([0x02, 0, 0, 0, 0, 1])),
        ..Facts::default()
    };
    if let Err(e) = render_ipxe(cat, &base, &ScriptChoice::Unknown, &unknown) {
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
            if let Err(e) = render_ipxe(
                cat,
                &base,
                &ScriptChoice::Host {
                    host,
                    profile,
                    build: BuildScript::Untracked,
                },
                &facts,
            ) {
                fail(
                    &host.origin,
                    format!("host {:?}: iPXE script: {e}", host.name),
                );
            }
        }
        if profile.boot == BootMethod::Image
            && crate::images::image_context(&cat.config.state, &base, profile)
                .is_none_or(|i| i.tarball.is_none())
        {
            unbuilt.insert(profile.name.clone());
            continue;
        }
        if select::has_kickstart(profile) && host.install {
            if let Err(e) =
                render_kickstart(cat, &base, host, profile, mac, None, TOKEN_PLACEHOLDER)
            {
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
        // Before approval: what an unknown machine gets.
        let choice = ScriptChoice::Matched { profile, mac };
        if let Err(e) = render_ipxe(cat, &base, &choice, &unknown) {
            fail(
                &origin,
                format!("profile {:?} (matched machine): {e}", profile.name),
            );
        }
        // Once approved: a host of the profile.
        let host = select::approved_host(
            &select::default_name(mac),
            &profile.name,
            mac,
            origin.clone(),
        );
        let choice = ScriptChoice::Host {
            host: &host,
            profile,
            build: select::BuildScript::Untracked,
        };
        if let Err(e) = render_ipxe(cat, &base, &choice, &unknown) {
            fail(
                &origin,
                format!("profile {:?} (approved machine): {e}", profile.name),
            );
        }
        if select::has_kickstart(profile) {
            if let Err(e) =
                render_kickstart(cat, &base, &host, profile, mac, None, TOKEN_PLACEHOLDER)
            {
                fail(
                    &origin,
                    format!(
                        "profile {:?} (approved machine) kickstart: {e}",
                        profile.name
                    ),
                );
            }
        }
    }
    out.extend(warnings);
    out
}

/// Prints every problem as `file:line: severity: message`; returns the number of errors.
pub fn check(site_dir: &Path) -> usize {
    match load(site_dir, &Overrides::default()) {
        Ok(site) => {
            for d in &site.warnings {
                println!("{d}");
            }
            let warnings = site
                .warnings
                .iter()
                .filter(|d| d.severity == Severity::Warning)
                .count();
            println!(
                "{}: ok: {} profiles, {} hosts, {} image recipes{}",
                site_dir.display(),
                site.site.profiles.len(),
                site.site.hosts.len(),
                site.recipes.len(),
                if warnings > 0 {
                    format!(", {warnings} warning(s)")
                } else {
                    String::new()
                }
            );
            // Zero-touch is a choice an operator must see: these wipe unknown machines.
            for p in site.site.profiles.values().filter(|p| p.auto_install) {
                println!(
                    "profile {}: auto_install = true: an unknown machine its match rules claim is installed without approval",
                    p.name
                );
            }
            0
        }
        Err(errs) => {
            for d in &errs.0 {
                println!("{d}");
            }
            let n = errs
                .0
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            println!("{}: {n} error(s)", site_dir.display());
            n
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum What {
    /// The per-host iPXE script (what /ipxe?mac=MAC returns)
    Ipxe,
    /// The kickstart (what /ks/MAC returns)
    Kickstart,
    /// The bootstrap script (/boot.ipxe)
    Bootstrap,
}

/// `pxeforge render`: what `serve` would send, through the handlers' own selection and
/// rendering. The state directory matters: a machine a match rule claimed is remembered there.
pub fn render_one(
    site_dir: &Path,
    what: What,
    mac: Option<&str>,
    platform: Option<&str>,
    overrides: &Overrides,
) -> Result<String> {
    let cat = load(site_dir, overrides).map_err(|e| {
        print_diagnostics(&e.0);
        anyhow!("{e}")
    })?;
    let base = cat.config.base_url.offline().to_string();
    let mac = || -> Result<Mac> { Ok(mac.ok_or_else(|| anyhow!("--mac is required"))?.parse()?) };
    match what {
        What::Bootstrap => Ok(render_bootstrap(&cat, &base)?),
        What::Ipxe => {
            let facts = Facts {
                mac: Some(mac()?),
                platform: platform.map(str::to_string),
                ..Default::default()
            };
            let claims = offline_claims(&cat.config.state);
            let choice = select::select(&cat.site, &claims, &facts);
            Ok(render_ipxe(&cat, &base, &choice, &facts)?)
        }
        What::Kickstart => {
            let mac = mac()?;
            let claims = offline_claims(&cat.config.state);
            match select::select_kickstart(&cat.site, &claims, mac) {
                // What a host's installer is served, with `TOKEN` where its build's token goes.
                KickstartChoice::Host { host, profile } => Ok(render_kickstart(
                    &cat,
                    &base,
                    host,
                    profile,
                    mac,
                    None,
                    TOKEN_PLACEHOLDER,
                )?),
                KickstartChoice::NotInstalled { host } => bail!(
                    "host {} is not installed from a kickstart (install = false or profile boot = {:?})",
                    host.name,
                    cat.site.profiles.get(&host.profile).map(|p| p.boot)
                ),
                KickstartChoice::Unknown => {
                    bail!("no host with MAC {mac} in {}, and no machine approved with it", site_dir.display())
                }
            }
        }
    }
}

/// The approved and rejected machines in the state directory's build-state store, read without
/// creating or changing it (`render` must not write); none when there is no store.
fn offline_claims(state: &Path) -> select::Claims {
    match crate::buildstate::claims_read_only(&state.join("buildstate.db")) {
        Ok(rows) => crate::buildstate::claims_of(&rows),
        Err(_) => select::Claims::default(),
    }
}
