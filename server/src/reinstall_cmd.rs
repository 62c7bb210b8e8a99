//! `pxeforge reinstall`: arm hosts again, in the state store a running server reads at every
//! request (so no restart is needed).

use crate::buildstate::{self, BuildState};
use crate::config::Overrides;
use crate::lifecycle::{self, State};
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ReinstallArgs {
    /// Hosts to arm (their names in hosts/*.toml)
    pub hosts: Vec<String>,
    /// Arm every installable host of this profile (needs --yes)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Arm every installable host of the site (needs --yes)
    #[arg(long)]
    pub all: bool,
    /// Confirm arming a whole profile or site
    #[arg(long)]
    pub yes: bool,
    /// Site directory
    #[arg(long, default_value = ".")]
    pub site: PathBuf,
    /// State directory (default: the site's server.state_dir)
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

pub fn reinstall(args: &ReinstallArgs) -> Result<()> {
    let overrides = Overrides {
        state: args.state.clone(),
        ..Overrides::default()
    };
    let cat = crate::check::load(&args.site, &overrides).map_err(|e| {
        crate::check::print_diagnostics(&e.0);
        anyhow!("{e} in {}", args.site.display())
    })?;
    let site = &cat.site;
    let tracked = |name: &str| {
        site.host_by_name(name)
            .and_then(|h| site.profiles.get(&h.profile).map(|p| (h, p)))
            .is_some_and(|(h, p)| crate::select::tracked(h, p))
    };
    let mut names: Vec<String> = args.hosts.clone();
    for n in &names {
        if site.host_by_name(n).is_none() {
            bail!("no host {n:?} in {}", args.site.display());
        }
        if !tracked(n) {
            bail!("host {n:?} is not installed from a kickstart (install = false, or its profile boots diskless or local)");
        }
    }
    let many: Vec<String> = site
        .hosts
        .iter()
        .filter(|h| args.all || args.profile.as_deref() == Some(h.profile.as_str()))
        .filter(|h| tracked(&h.name))
        .map(|h| h.name.clone())
        .collect();
    if let Some(p) = &args.profile {
        if !site.profiles.contains_key(p) {
            bail!("no profile {p:?} (profiles/{p}.toml)");
        }
    }
    if (args.all || args.profile.is_some()) && !args.yes {
        bail!(
            "this would arm {} host(s) ({}): add --yes to do it",
            many.len(),
            many.join(", ")
        );
    }
    names.extend(many);
    names.sort();
    names.dedup();
    if names.is_empty() {
        bail!("name the hosts to arm, or --profile NAME --yes, or --all --yes");
    }
    std::fs::create_dir_all(&cat.config.state)
        .with_context(|| format!("creating {}", cat.config.state.display()))?;
    let store = BuildState::open(&cat.config.state.join("buildstate.db"))?;
    let now = crate::events::now();
    // A first start adopts the fleet as installed before anything is armed on purpose.
    store.reconcile(&buildstate::inventory(site), now, |_| {})?;
    // Who asked, as far as the environment says (sudo keeps the operator's name).
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown user".into());
    let source = format!("pxeforge reinstall by {who}");
    for name in &names {
        let from = store.decide(name, now, |r| {
            let (next, t) = lifecycle::rearm(r, &source);
            (r.state, Some((next, vec![t])))
        })?;
        let Some(from) = from else {
            bail!("host {name} has no build-state record");
        };
        let (from, to) = (from.as_str(), State::Armed.as_str());
        println!("{name}: {from} -> {to}: installs at its next network boot");
    }
    Ok(())
}
