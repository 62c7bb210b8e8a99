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
    // Synced releases: never synced (warning, or error under require_synced), tree's arch.
    out.extend(crate::releases_cmd::check(&cat.config.state, site));
    out.extend(warnings);
    out
}

/// Prints every problem as `file:line: severity: message`; returns the number of errors.
pub fn check(site_dir: &Path) -> usize {
    match load(site_dir, &Overrides::default())
        .map_err(|e| e.0)
        .and_then(|mut site| {
            site.warnings.extend(boot_file_diagnostics(&site));
            if site.warnings.iter().any(|d| d.severity == Severity::Error) {
                Err(std::mem::take(&mut site.warnings))
            } else {
                Ok(site)
            }
        }) {
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
            for d in &errs {
                println!("{d}");
            }
            let n = errs
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            println!("{}: {n} error(s)", site_dir.display());
            n
        }
    }
}

/// The boot file of each firmware class (`dhcp.boot_files`) must be a readable regular file of
/// what TFTP and `/tftp/` serve (see [`crate::loaders::Served`]): an error for a class some
/// profile uses (`firmware` bios/uefi/both, `arch`), a warning for the others. Only `check` and
/// `serve`'s start run it, never a load: a missing file is not a broken site, and a reload must
/// not be refused for it.
pub fn boot_file_diagnostics(cat: &Catalog) -> Vec<Diagnostic> {
    use pxeforge_site::{Arch, Firmware};
    let site = &cat.site;
    let f = &site.settings.dhcp.boot_files;
    // Which profiles boot through a class, as the DHCP service picks them (dhcp/src/decide.rs):
    // BIOS ones, UEFI ones of an arch (PXE and HTTP boot), or none (no profile arch is 32-bit).
    let uefi = |a: Arch| Some((Some(a), [Firmware::Uefi, Firmware::Both]));
    let bios = Some((None, [Firmware::Bios, Firmware::Both]));
    let classes = [
        ("bios", f.bios.as_str(), bios),
        ("efi_x64", &f.efi_x64, uefi(Arch::X86_64)),
        ("http_boot", &f.http_boot, uefi(Arch::X86_64)),
        ("efi_ia32", &f.efi_ia32, None),
        ("arm64", &f.arm64, uefi(Arch::Aarch64)),
        (
            "http_boot_arm64",
            f.http_boot_arm64.as_deref().unwrap_or(&f.arm64),
            uefi(Arch::Aarch64),
        ),
    ];
    // One diagnostic per file, naming every class that uses it.
    let mut by_file: std::collections::BTreeMap<
        &str,
        (Vec<&str>, std::collections::BTreeSet<&str>),
    > = Default::default();
    for (class, file, by) in classes {
        let e = by_file.entry(file).or_default();
        e.0.push(class);
        let Some((arch, firmware)) = by else {
            continue;
        };
        e.1.extend(
            site.profiles
                .values()
                .filter(|p| arch.is_none_or(|a| p.arch == a) && firmware.contains(&p.firmware))
                .map(|p| p.name.as_str()),
        );
    }
    let served = crate::loaders::Served::of(cat);
    let settings_file = PathBuf::from("pxeforge.toml");
    let mut out = Vec::new();
    for (file, (classes, users)) in by_file {
        let Err(why) = served.lookup(file) else {
            continue;
        };
        let classes = classes
            .iter()
            .map(|c| format!("dhcp.boot_files.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let head = format!(
            "boot file {file:?} ({classes}) {why} ({})",
            served.describe()
        );
        out.push(if users.is_empty() {
            Diagnostic::warning(
                &settings_file,
                0,
                format!("{head}; no profile boots through it"),
            )
        } else {
            Diagnostic::error(
                &settings_file,
                0,
                format!(
                    "{head}; profiles {} boot through it: {}",
                    users.into_iter().collect::<Vec<_>>().join(", "),
                    served.hint()
                ),
            )
        });
    }
    out
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
