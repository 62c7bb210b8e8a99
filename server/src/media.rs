//! Where a host's install boots its kernel, initrd and stage2 from: the compose of its release
//! pinned when it was armed, else the release's current synced compose, else (with a warning at
//! load, or an error under `require_synced`) the release's upstream tree.

use pxeforge_site::{Profile, Site};
use std::path::Path;

/// The boot media URLs of one render.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootMedia {
    pub kernel_url: String,
    pub initrd_url: String,
    /// `inst.stage2=`: the synced tree on this server; empty when booting from upstream (then
    /// `inst.repo=` also finds the stage2 image).
    pub stage2_url: String,
    /// `<release>/<compose-id>` when served from the releases store.
    pub media: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("release {0} has require_synced = true but was never synced (run: pxeforge releases sync {0})")]
    NotSynced(String),
}

/// The media of a host of `profile`, pinned to `pinned` when it names a compose of the
/// profile's release. One readlink when nothing is pinned. `enforce`: a `require_synced`
/// release that is not synced is an error (what an armed host is served); otherwise (`check`
/// and `render`, which show a script, and report the release once) the upstream tree.
pub fn boot_media(
    state: &Path,
    site: &Site,
    profile: &Profile,
    pinned: Option<&str>,
    base_url: &str,
    enforce: bool,
) -> Result<BootMedia, MediaError> {
    let Some((name, rel)) = profile
        .release
        .as_ref()
        .and_then(|n| site.settings.install.releases.get_key_value(n))
    else {
        return Ok(BootMedia::default());
    };
    let pinned = pinned
        .and_then(pxeforge_releases::parse_media_id)
        .filter(|(n, _)| n == name)
        .map(|(_, c)| c.to_string());
    if let Some(compose) = pinned.or_else(|| pxeforge_releases::current_compose(state, name)) {
        let tree = format!("{base_url}/{}/{name}/{compose}", pxeforge_releases::DIR);
        return Ok(BootMedia {
            kernel_url: format!("{tree}/images/pxeboot/vmlinuz"),
            initrd_url: format!("{tree}/images/pxeboot/initrd.img"),
            stage2_url: tree,
            media: Some(pxeforge_releases::media_id(name, &compose)),
        });
    }
    if rel.require_synced && enforce {
        return Err(MediaError::NotSynced(name.clone()));
    }
    let tree = rel.upstream().replace("{base_url}", base_url);
    Ok(BootMedia {
        kernel_url: format!("{tree}/images/pxeboot/vmlinuz"),
        initrd_url: format!("{tree}/images/pxeboot/initrd.img"),
        stage2_url: String::new(),
        media: None,
    })
}

/// The releases that profiles use and that were never synced: `check` warns about them and
/// `serve` says at each load that their hosts boot from upstream.
pub fn unsynced(state: &Path, site: &Site) -> Vec<String> {
    let used: std::collections::BTreeSet<&String> = site
        .profiles
        .values()
        .filter_map(|p| p.release.as_ref())
        .collect();
    used.into_iter()
        .filter(|n| pxeforge_releases::current_compose(state, n).is_none())
        .cloned()
        .collect()
}

/// What the build state pins an armed host to: its profile's release's current compose, for
/// the hosts of `site` (a snapshot: set again at every load).
pub fn pinner(state: &Path, site: &Site) -> crate::buildstate::Pinner {
    let releases: std::collections::HashMap<String, String> = site
        .hosts
        .iter()
        .filter_map(|h| {
            let r = site.profiles.get(&h.profile)?.release.clone()?;
            Some((h.name.clone(), r))
        })
        .collect();
    let state = state.to_path_buf();
    std::sync::Arc::new(move |host: &str| {
        pxeforge_releases::current_media(&state, releases.get(host)?)
    })
}
