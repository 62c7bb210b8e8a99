//! `pxeforge reinstall`: arm hosts again. Normally a client of the running server's admin API
//! (`POST /api/reinstall`, see `cli`); with `--state DIR` it writes that state store itself, for
//! when no server runs (a running one reads the store at every request, so it sees the change).

use crate::buildstate::{self, BuildState};
use crate::cli::{self, AdminArgs, Selection};
use crate::config::Overrides;
use crate::lifecycle::State;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The long help of `pxeforge reinstall` (main.rs puts it on the command).
pub const LONG_ABOUT: &str = "Arm hosts: each installs at its next network boot (the install script with a \
                  new build token), then boots its local disk again.\n\n\
                  Asks the running server through its admin API (see --server, --token-file). \
                  Naming hosts arms them at once; a whole profile or the whole site needs --yes: \
                  without it, the command prints what it would arm, changes nothing and exits 1.\n\n\
                  With --state DIR it works offline instead: it writes the build-state store in \
                  DIR itself, as it did before the admin API (for a server that is not running; \
                  one that runs on DIR sees the change at its next request).";

#[derive(Debug, clap::Args)]
pub struct ReinstallArgs {
    /// Hosts to arm (their names in hosts/*.toml, or approved hosts)
    #[arg(value_name = "NAME", conflicts_with_all = ["profile", "all"])]
    pub hosts: Vec<String>,
    /// Arm every installable host of this profile (needs --yes)
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub profile: Option<String>,
    /// Arm every installable host of the site (needs --yes)
    #[arg(long)]
    pub all: bool,
    /// Confirm arming a whole profile or site
    #[arg(long)]
    pub yes: bool,
    /// Offline: write the build-state store of this state directory directly, without a server
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub fn reinstall(args: &ReinstallArgs) -> Result<ExitCode> {
    match &args.state {
        Some(state) => offline(args, state),
        None => {
            let sel = if args.all {
                Selection::All
            } else if let Some(p) = &args.profile {
                Selection::Profile(p.clone())
            } else if !args.hosts.is_empty() {
                Selection::Hosts(args.hosts.clone())
            } else {
                bail!("name the hosts to arm, or --profile NAME --yes, or --all --yes");
            };
            cli::reinstall(&args.admin, &sel, args.yes)
        }
    }
}

/// Arms in the store of `state` itself (the offline mode).
fn offline(args: &ReinstallArgs, state: &Path) -> Result<ExitCode> {
    let site_dir = &args.admin.site;
    let overrides = Overrides {
        state: Some(state.to_path_buf()),
        ..Overrides::default()
    };
    let cat = crate::check::load(site_dir, &overrides).map_err(|e| {
        crate::check::print_diagnostics(&e.0);
        anyhow!("{e} in {}", site_dir.display())
    })?;
    let site = &cat.site;
    std::fs::create_dir_all(&cat.config.state)
        .with_context(|| format!("creating {}", cat.config.state.display()))?;
    let store = BuildState::open(&cat.config.state.join("buildstate.db"))?;
    let claims = buildstate::claims_of(&store.claims()?);
    // The same decision as the admin API's: which hosts, and which are skipped.
    let plan = crate::operate::plan_reinstall(
        site,
        &claims,
        &args.hosts,
        args.profile.as_deref(),
        args.all,
    )
    .map_err(|e| anyhow!("{e} in {}", site_dir.display()))?;
    if (args.all || args.profile.is_some()) && !args.yes {
        println!(
            "this would arm {} host(s) (nothing changed: add --yes to do it):",
            plan.arm.len()
        );
        for n in &plan.arm {
            println!("  {n}");
        }
        for (n, why) in &plan.skipped {
            println!("  {n}: skipped: {why}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let now = crate::events::now();
    // A first start adopts the fleet as installed before anything is armed on purpose.
    store.set_pinner(crate::media::pinner(&cat.config.state, site));
    store.reconcile(&buildstate::inventory(site), now, |_| {})?;
    // Who asked, as far as the environment says (sudo keeps the operator's name).
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown user".into());
    let source = format!("pxeforge reinstall by {who}");
    for name in &plan.arm {
        let from = crate::operate::arm(&store, name, &source)?;
        let (from, to) = (from.as_str(), State::Armed.as_str());
        println!("{name}: {from} -> {to}: installs at its next network boot");
    }
    Ok(ExitCode::SUCCESS)
}
