//! The catalog: everything the boot service serves from, loaded and checked as one value per
//! load — the site model, the configuration in force, the compiled templates, the image
//! recipes, and the caches that must not outlive them. A reload builds a new catalog and swaps
//! it in whole, or keeps the old one.

use crate::config::{Config, Overrides};
use crate::contexts::ProfileContexts;
use crate::templates::Templates;
use pxeforge_imagebuilder as ib;
use pxeforge_site::{has_errors, Diagnostic, Site, SiteErrors};
use std::path::Path;

pub struct Catalog {
    pub site: Site,
    /// Resolved with this site's settings, so the state directory that the checks below read is
    /// the one the server serves (`serve --state X` checks X).
    pub config: Config,
    pub templates: Templates,
    pub recipes: Vec<ib::Recipe>,
    /// Cached per-profile template contexts; dropped with the catalog at a reload.
    pub(crate) profile_contexts: ProfileContexts,
    /// Warnings that did not stop the load (shown by `check` and at start).
    pub warnings: Vec<Diagnostic>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("site", &self.site.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Loads the site, resolves the configuration with `overrides`, compiles the templates and
    /// recipes, checks the image store, then runs `check` on the result (the whole-site render
    /// check, `check::check_all`, which `check::load` passes). All or nothing: any error, and
    /// there is no catalog; every problem found is reported.
    pub fn load(
        dir: &Path,
        overrides: &Overrides,
        check: impl FnOnce(&Catalog) -> Vec<Diagnostic>,
    ) -> Result<Catalog, SiteErrors> {
        let site = Site::load(dir);
        let templates = Templates::load(dir);
        let (recipes, recipe_diags) = ib::load_recipes(dir);
        let recipe_diags: Vec<Diagnostic> = recipe_diags
            .into_iter()
            .map(|d| site_relative(dir, d))
            .collect();
        let (site, templates) = match (site, templates) {
            (Ok(site), Ok(t)) if !has_errors(&recipe_diags) => (site, t),
            (site, templates) => {
                let mut all = match site {
                    Ok(s) => s.warnings,
                    Err(e) => e.0,
                };
                if let Err(t) = templates {
                    all.extend(t);
                }
                all.extend(recipe_diags);
                return Err(SiteErrors(all));
            }
        };
        let config = Config::resolve(&site, overrides);
        let mut diags = site.warnings.clone();
        diags.extend(recipe_diags);
        let layers = ib::profile_layers(&site);
        diags.extend(
            ib::check_recipes(dir, &recipes, &layers)
                .into_iter()
                .chain(ib::check_store_limits(&config.state, &layers))
                .map(|d| site_relative(dir, d)),
        );
        let mut catalog = Catalog {
            site,
            config,
            templates,
            recipes,
            profile_contexts: ProfileContexts::default(),
            warnings: Vec::new(),
        };
        diags.extend(check(&catalog));
        if has_errors(&diags) {
            return Err(SiteErrors(diags));
        }
        catalog.warnings = diags;
        Ok(catalog)
    }
}

/// The image builder names files by their full path; messages name them from the site.
fn site_relative(dir: &Path, mut d: Diagnostic) -> Diagnostic {
    if let Ok(rel) = d.file.strip_prefix(dir) {
        d.file = rel.to_path_buf();
    }
    d
}
