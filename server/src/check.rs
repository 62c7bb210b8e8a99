//! `pxeforge check` and `pxeforge render`: the same loading and rendering code as `serve`.

use crate::mac::Mac;
use crate::render;
use crate::site::{Severity, Site};
use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// Prints every problem as `file:line: severity: message`; returns the number of errors.
pub fn check(site_dir: &Path) -> usize {
    match Site::load(site_dir) {
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
                site.profiles.len(),
                site.hosts.len(),
                site.recipes.len(),
                if warnings > 0 {
                    format!(", {warnings} warning(s)")
                } else {
                    String::new()
                }
            );
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

pub fn render_one(
    site_dir: &Path,
    what: What,
    mac: Option<&str>,
    platform: Option<&str>,
    base_url: Option<&str>,
) -> Result<String> {
    let site = Site::load(site_dir).map_err(|e| {
        crate::serve::print_diagnostics(&e.0);
        anyhow!("{e}")
    })?;
    let base = base_url
        .map(|b| b.trim_end_matches('/').to_string())
        .unwrap_or_else(|| render::offline_base_url(&site));
    let mac = || -> Result<Mac> { Ok(mac.ok_or_else(|| anyhow!("--mac is required"))?.parse()?) };
    match what {
        What::Bootstrap => Ok(render::render_bootstrap(&site, &base)?),
        What::Ipxe => {
            let facts = render::Facts {
                mac: Some(mac()?),
                platform: platform.map(str::to_string),
                ..Default::default()
            };
            let choice = crate::select::select(&site, &facts);
            Ok(render::render_ipxe(&site, &base, &choice, &facts)?)
        }
        What::Kickstart => {
            let mac = mac()?;
            let Some(host) = site.host_by_mac(&mac) else {
                bail!("no host with MAC {mac} in {}", site_dir.display());
            };
            let profile = site
                .profiles
                .get(&host.profile)
                .ok_or_else(|| anyhow!("host {} has no profile", host.name))?;
            if !host.install || !render::has_kickstart(profile) {
                bail!("host {} is not installed from a kickstart (install = false or profile boot = {:?})", host.name, profile.boot);
            }
            Ok(render::render_kickstart(&site, &base, host, profile, mac)?)
        }
    }
}
