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
    // The profile as strictly as the site loader reads it (without the checks that need a
    // whole site, so that tests can build from a bare directory).
    let pfile = site.join("profiles").join(format!("{}.toml", args[3]));
    let text = match std::fs::read_to_string(&pfile) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", pfile.display());
            std::process::exit(1);
        }
    };
    let profile = match pxeforge_site::parse_profile_text(&args[3], &text) {
        Ok(p) => ib::ProfileLayer::from(&p),
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
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
