//! `pxeforge build` and `pxeforge images ...`: the CLI edge of the image builder library.

use crate::config::Overrides;
use anyhow::{anyhow, bail, Context, Result};
use pxeforge_imagebuilder::{self as ib, store, Progress};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Recipes to build (images/NAME.toml); default: every recipe
    pub recipes: Vec<String>,
    /// Build only for this hardware profile
    #[arg(long)]
    pub profile: Option<String>,
    /// Site directory
    #[arg(long, default_value = ".")]
    pub site: PathBuf,
    /// State directory holding the image store (default: the site's server.state_dir)
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Rebuild even when a build of the same inputs is already published
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// List published builds (current ones marked with *)
    List,
    /// Re-hash every published file against its SHA256SUMS; exit 1 naming any mismatch
    Verify,
    /// Delete all but the newest N builds of each recipe/profile (never the current one)
    Gc {
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
    /// Site directory
    #[arg(long, default_value = ".", global = true)]
    pub site: PathBuf,
    /// State directory holding the image store (default: the site's server.state_dir)
    #[arg(long, value_name = "DIR", global = true)]
    pub state: Option<PathBuf>,
}

/// A progress bar on a terminal, plain log lines otherwise (CI logs stay readable).
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    label: String,
}

impl Reporter {
    fn new(label: String) -> Reporter {
        let bar = crate::store_cmd::terminal_bar(&label, 12);
        Reporter { bar, label }
    }
}

impl Progress for Reporter {
    fn stage(&self, name: &str) {
        match &self.bar {
            Some(b) => {
                b.set_message(name.to_string());
                b.set_position(0);
            }
            None => eprintln!("pxeforge: {}: {name}", self.label),
        }
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let Some(t) = total {
                b.set_length(t);
            }
            b.set_position(done);
        }
    }
}

fn state_dir(site_dir: &Path, state: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(s) = state {
        return Ok(s.clone());
    }
    let site = pxeforge_site::Site::load(site_dir).map_err(|e| {
        crate::check::print_diagnostics(&e.0);
        anyhow!("{e}")
    })?;
    Ok(site.path(&site.settings.server.state_dir))
}

pub fn build(args: &BuildArgs) -> Result<()> {
    let overrides = Overrides {
        state: args.state.clone(),
        ..Overrides::default()
    };
    let cat = crate::check::load(&args.site, &overrides).map_err(|e| {
        crate::check::print_diagnostics(&e.0);
        anyhow!("{e} in {}: fix it before building", args.site.display())
    })?;
    let state = cat.config.state.clone();
    let site = &cat.site;
    let all_recipes = &cat.recipes;
    let recipes: Vec<&ib::Recipe> = if args.recipes.is_empty() {
        all_recipes.iter().collect()
    } else {
        args.recipes
            .iter()
            .map(|n| {
                all_recipes
                    .iter()
                    .find(|r| &r.name == n)
                    .ok_or_else(|| anyhow!("no recipe {n:?} (images/{n}.toml)"))
            })
            .collect::<Result<_>>()?
    };
    if let Some(p) = &args.profile {
        if !site.profiles.contains_key(p) {
            bail!("no profile {p:?} (profiles/{p}.toml)");
        }
    }
    let mut built = 0;
    for recipe in recipes {
        for profile_name in recipe.spec.profiles.iter().map(|p| p.get_ref()) {
            if args.profile.as_ref().is_some_and(|p| p != profile_name) {
                continue;
            }
            let profile =
                ib::ProfileLayer::from(site.profiles.get(profile_name).ok_or_else(|| {
                    anyhow!(
                        "recipe {} names unknown profile {profile_name}",
                        recipe.name
                    )
                })?);
            let label = format!("{}/{}", recipe.name, profile_name);
            let reporter = Reporter::new(label.clone());
            let started = Instant::now();
            let outcome = ib::build(ib::BuildRequest {
                site_dir: &site.dir,
                state_dir: &state,
                recipe,
                profile: &profile,
                force: args.force,
                progress: &reporter,
            })
            .with_context(|| format!("building {label}"))?;
            if let Some(b) = &reporter.bar {
                b.finish_and_clear();
            }
            built += 1;
            if outcome.skipped {
                println!(
                    "{label}: {} unchanged, not rebuilt ({:.2} s)",
                    outcome.id,
                    started.elapsed().as_secs_f64()
                );
            } else {
                println!(
                    "{label}: built {} in {:.1} s",
                    outcome.id,
                    started.elapsed().as_secs_f64()
                );
            }
            for o in &outcome.outputs {
                println!("  {:<16} {:>12} bytes  sha256 {}", o.file, o.size, o.sha256);
            }
        }
    }
    if built == 0 {
        bail!("nothing to build (no recipe lists the profile asked for)");
    }
    Ok(())
}

/// Returns the process exit code (verify: 1 on any mismatch).
pub fn images(args: &ImagesArgs) -> Result<i32> {
    let state = state_dir(&args.site, args.state.as_ref())?;
    match &args.command {
        ImagesCommand::List => {
            let list = store::list(&state);
            if list.is_empty() {
                println!(
                    "no published images in {}",
                    store::images_dir(&state).display()
                );
            }
            for img in list {
                println!(
                    "{} {}/{}/{}  {} output(s){}",
                    if img.is_current { "*" } else { " " },
                    img.recipe,
                    img.profile,
                    img.id,
                    img.outputs.len(),
                    img.outputs
                        .iter()
                        .map(|o| format!(" {}={}B", o.file, o.size))
                        .collect::<String>()
                );
            }
            Ok(0)
        }
        ImagesCommand::Verify => {
            let mismatches = store::verify(&state).context("verifying the image store")?;
            Ok(crate::store_cmd::report_verify(&mismatches, "files"))
        }
        ImagesCommand::Gc { keep } => {
            let removed = store::gc(&state, *keep).context("collecting old builds")?;
            for r in &removed {
                println!("removed {}", r.display());
            }
            println!("{} build(s) removed", removed.len());
            Ok(0)
        }
    }
}
