//! `pxeforge loaders sync|list|verify|gc`: the CLI edge of the loaders store (`loaders.rs`).

use crate::loaders;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum LoadersCommand {
    /// Copy the boot files of [loaders] sources into a new item and point `current` at it
    /// (unchanged files: no new item)
    Sync,
    /// List published items (the current one marked with *) and their files
    List,
    /// Re-hash every published file against its SHA256SUMS; exit 1 naming any mismatch
    Verify,
    /// Delete all but the newest N items (never the current one)
    Gc {
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct LoadersArgs {
    #[command(subcommand)]
    pub command: LoadersCommand,
    /// Site directory (its pxeforge.toml names the sources and the state directory)
    #[arg(long, default_value = ".", global = true)]
    pub site: PathBuf,
    /// State directory holding the loaders store (default: the site's server.state_dir)
    #[arg(long, value_name = "DIR", global = true)]
    pub state: Option<PathBuf>,
}

fn load_site(dir: &Path) -> Result<pxeforge_site::Site> {
    pxeforge_site::Site::load(dir).map_err(|e| {
        crate::check::print_diagnostics(&e.0);
        anyhow!("{e} in {}", dir.display())
    })
}

/// Returns the process exit code (verify: 1 on any mismatch).
pub fn loaders(args: &LoadersArgs) -> Result<i32> {
    let site = load_site(&args.site)?;
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| site.path(&site.settings.server.state_dir));
    let store = loaders::store(&state);
    match &args.command {
        LoadersCommand::Sync => {
            let s = loaders::sync(&site, &state)?;
            for why in &s.skipped {
                eprintln!("pxeforge: warning: {why}");
            }
            println!(
                "{}: {} ({} file(s))",
                s.id,
                if s.new {
                    "published, now current"
                } else {
                    "unchanged, now current"
                },
                s.files.len()
            );
            for f in &s.files {
                println!(
                    "  {:<32} {:>10} bytes  sha256 {}  from {}",
                    f.name, f.size, f.sha256, f.source
                );
            }
            Ok(0)
        }
        LoadersCommand::List => {
            let items = store.list();
            if items.is_empty() {
                println!("no published loaders in {}", store.root().display());
            }
            for it in items {
                let sums = pxeforge_store::read_sums(&it.dir.join(pxeforge_store::SUMS))
                    .with_context(|| format!("reading {}", it.dir.display()))?;
                println!(
                    "{} {}  {} file(s)",
                    if it.is_current { "*" } else { " " },
                    it.id,
                    sums.len()
                );
                for (name, sha) in sums.iter() {
                    println!("    {sha}  {name}");
                }
            }
            Ok(0)
        }
        LoadersCommand::Verify => {
            let items = store.list();
            let mismatches = pxeforge_store::verify_items(items.iter().map(|i| i.dir.as_path()));
            Ok(crate::store_cmd::report_verify(&mismatches, "loaders"))
        }
        LoadersCommand::Gc { keep } => {
            let removed = store
                .gc_all(*keep)
                .context("collecting old loaders items")?;
            for r in &removed {
                println!("removed {}", r.display());
            }
            println!("{} item(s) removed", removed.len());
            Ok(0)
        }
    }
}
