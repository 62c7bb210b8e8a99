//! Builds one recipe for one profile of a site, printing progress:
//! `cargo run -p pxeforge-imagebuilder --example build -- SITE STATE RECIPE PROFILE [--force]`
//! The profile is read from SITE/profiles/PROFILE.toml (image-relevant keys only).

use pxeforge_imagebuilder as ib;
use std::path::PathBuf;

struct Log;

impl ib::Progress for Log {
    fn stage(&self, name: &str) {
        println!("stage {name}");
    }
    fn bytes(&self, _done: u64, _total: Option<u64>) {}
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: build SITE STATE RECIPE PROFILE [--force]");
        std::process::exit(2);
    }
    let site = PathBuf::from(&args[0]);
    let state = PathBuf::from(&args[1]);
    let force = args.iter().any(|a| a == "--force");
    let (recipes, diags) = ib::load_recipes(&site);
    for d in &diags {
        eprintln!("{d}");
    }
    let Some(recipe) = recipes.iter().find(|r| r.name == args[2]) else {
        eprintln!("no recipe {}", args[2]);
        std::process::exit(1);
    };
    let pfile = site.join("profiles").join(format!("{}.toml", args[3]));
    let text = std::fs::read_to_string(&pfile).unwrap_or_default();
    let profile = match ib::profile_layer_from_toml(&args[3], &text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {e}", pfile.display());
            std::process::exit(1);
        }
    };
    let req = ib::BuildRequest {
        site_dir: &site,
        state_dir: &state,
        recipe,
        profile: &profile,
        force,
        progress: &Log,
    };
    match ib::build(req) {
        Ok(o) => {
            println!(
                "{} {} {}",
                if o.skipped { "skipped" } else { "built" },
                o.id,
                o.dir.display()
            );
            for f in o.outputs {
                println!("{}  {}  {}", f.sha256, f.size, f.file);
            }
        }
        Err(e) => {
            eprintln!("build failed: {e}");
            std::process::exit(1);
        }
    }
}
