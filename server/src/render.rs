//! Rendering: the context templates see, and the iPXE scripts and kickstarts made from it.
//!
//! The context is flat and documented in the README; every value in it comes from the site
//! or has been validated, so nothing a client sends is pasted into a script.

use crate::catalog::Catalog;
use crate::media::BootMedia;
use crate::select::{BuildScript, Facts, ScriptChoice};
use crate::templates::{RenderError, BOOTSTRAP, DISCOVER, DISKLESS, INSTALL, LOCAL, WAIT};
use pxeforge_site::settings::UnknownHostPolicy;
use pxeforge_site::{BootMethod, Firmware, Host, Mac, Profile, Site};
use tera::Context;

/// Calls `f` with the host's template context (shared by iPXE scripts and kickstarts), made
/// from a reused copy of its profile's cached part.
// Every argument is one thing a host's context depends on; a struct of them would only be
// built to be taken apart here.
#[allow(clippy::too_many_arguments)]
pub fn with_host_context<R>(
    cat: &Catalog,
    base_url: &str,
    host: &Host,
    profile: &Profile,
    mac: Mac,
    platform: Option<&str>,
    token: &str,
    media: &BootMedia,
    f: impl FnOnce(&Context) -> R,
) -> R {
    let platform = platform.unwrap_or_else(|| default_platform(profile));
    // The key names the profile, so it must be this site's profile of that name; anything else
    // (a caller's modified copy) would be served another profile's context.
    let ours = cat
        .site
        .profiles
        .get(&profile.name)
        .is_some_and(|p| std::ptr::eq(p, profile));
    let shared = ours
        .then(|| {
            cat.profile_contexts
                .get_or_build(&profile.name, base_url, platform, || {
                    profile_context(&cat.site, base_url, profile, platform)
                })
        })
        .flatten();
    let mut ctx = match &shared {
        Some(s) => s.take(),
        None => profile_context(&cat.site, base_url, profile, platform),
    };
    add_request_parts(&mut ctx, cat, base_url, host, profile, mac, token, media);
    let out = f(&ctx);
    if let Some(s) = shared {
        s.give_back(ctx);
    }
    out
}

fn default_platform(profile: &Profile) -> &'static str {
    match profile.firmware {
        Firmware::Bios => "pcbios",
        _ => "efi",
    }
}

/// The boot media of a host of `profile`: its build's (pinned at arming) or the release's
/// current ones, worked out per request, since a sync moves `current` without reloading the
/// site. Without `enforce`, a release that must be synced and is not shows its upstream (what
/// `render` and kickstarts show); with it, that is an error (an armed host's install script).
fn media_of(
    cat: &Catalog,
    profile: &Profile,
    pinned: Option<&str>,
    base_url: &str,
    enforce: bool,
) -> Result<BootMedia, crate::media::MediaError> {
    crate::media::boot_media(
        &cat.config.state,
        &cat.site,
        profile,
        pinned,
        base_url,
        enforce,
    )
}

/// Sets what differs between hosts of one profile, or between requests: always the same keys,
/// so that a reused copy of the shared context keeps nothing of the previous host.
#[allow(clippy::too_many_arguments)]
fn add_request_parts(
    ctx: &mut Context,
    cat: &Catalog,
    base_url: &str,
    host: &Host,
    profile: &Profile,
    mac: Mac,
    token: &str,
    m: &BootMedia,
) {
    ctx.insert("kernel_url", &m.kernel_url);
    ctx.insert("initrd_url", &m.initrd_url);
    ctx.insert("stage2_url", &m.stage2_url);
    ctx.insert("media", m.media.as_deref().unwrap_or_default());
    let mac_url = mac.hyphenated();
    ctx.insert("host", host);
    ctx.insert("mac", &mac.to_string());
    // Host names are DNS labels and tokens hex: nothing here needs escaping.
    ctx.insert(
        "ks_url",
        &format!("{base_url}/ks/{}?token={token}", host.name),
    );
    ctx.insert("token", token);
    ctx.insert("mac_url", &mac_url);
    // Never cached: a publish moves the store's `current` link without reloading the site.
    ctx.insert(
        "image",
        &crate::images::image_context(&cat.config.state, base_url, profile),
    );
}

/// The part of the host context that depends only on the profile, the base URL and the platform
/// (for a given site), and so can be shared by all of a profile's hosts.
fn profile_context(site: &Site, base_url: &str, profile: &Profile, platform: &str) -> Context {
    let mut ctx = Context::new();
    ctx.insert("base_url", base_url);
    ctx.insert("profile", profile);
    ctx.insert("platform", platform);
    ctx.insert("install", &site.settings.install);
    ctx.insert("events_url", &format!("{base_url}/events"));
    let release = profile.release.clone();
    let rel = release
        .as_ref()
        .and_then(|r| site.settings.install.releases.get(r));
    let repo = rel
        .map(|r| r.repo().replace("{base_url}", base_url))
        .unwrap_or_default();
    let extra_repos: std::collections::BTreeMap<String, String> = rel
        .map(|r| {
            r.extra_repos
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("{base_url}", base_url)))
                .collect()
        })
        .unwrap_or_default();
    ctx.insert("release", &release.unwrap_or_default());
    ctx.insert(
        "release_version",
        &rel.and_then(|r| r.version).unwrap_or_default(),
    );
    ctx.insert("repo", &repo);
    ctx.insert("extra_repos", &extra_repos);
    let mut args: Vec<String> = Vec::new();
    if let Some(c) = &profile.console {
        args.push(format!("console={c}"));
    }
    args.extend(profile.kernel_args.iter().cloned());
    ctx.insert("kernel_args", &args.join(" "));
    ctx
}

pub fn ipxe_template_for(host: Option<&Host>, profile: &Profile) -> &'static str {
    if host.is_some_and(|h| !h.install) {
        return LOCAL;
    }
    match profile.boot {
        BootMethod::Install | BootMethod::Image => INSTALL,
        BootMethod::Diskless => DISKLESS,
        BootMethod::Local => LOCAL,
    }
}

/// Where the token goes when there is none to give (`check`, `pxeforge render`).
pub const TOKEN_PLACEHOLDER: &str = "TOKEN";

pub fn render_ipxe(
    cat: &Catalog,
    base_url: &str,
    choice: &ScriptChoice,
    facts: &Facts,
) -> Result<String, RenderError> {
    let platform = facts
        .platform
        .as_deref()
        .filter(|p| matches!(*p, "pcbios" | "efi"));
    match choice {
        ScriptChoice::Host {
            host,
            profile,
            build,
        } => {
            let mac = facts
                .mac
                .or_else(|| host.macs.first().copied())
                .unwrap_or(Mac([0; 6]));
            let (template, token, media) = match build {
                BuildScript::Local => (LOCAL, TOKEN_PLACEHOLDER, None),
                BuildScript::Wait => {
                    let mut ctx = Context::new();
                    ctx.insert("base_url", base_url);
                    ctx.insert("host", host);
                    ctx.insert("retry_secs", &cat.site.settings.install.discover_retry_secs);
                    return cat.templates.render(WAIT, &ctx);
                }
                BuildScript::Install { token, media } => (
                    ipxe_template_for(Some(host), profile),
                    &token[..],
                    media.as_deref(),
                ),
                BuildScript::Untracked => (
                    ipxe_template_for(Some(host), profile),
                    TOKEN_PLACEHOLDER,
                    None,
                ),
            };
            // Under require_synced, an install must not boot anything but synced media.
            let enforce = matches!(build, BuildScript::Install { .. }) && template == INSTALL;
            let media = media_of(cat, profile, media, base_url, enforce).map_err(|e| {
                RenderError::Template {
                    name: template.to_string(),
                    message: e.to_string(),
                }
            })?;
            with_host_context(
                cat,
                base_url,
                host,
                profile,
                mac,
                platform,
                token,
                &media,
                |ctx| cat.templates.render(template, ctx),
            )
        }
        // A machine a match rule only suggested a profile for gets what an unknown machine
        // gets until an operator approves it: nothing of that profile is served yet.
        ScriptChoice::Matched { .. } | ScriptChoice::Unknown | ScriptChoice::Rejected { .. } => {
            let mut ctx = Context::new();
            ctx.insert("base_url", base_url);
            ctx.insert("facts", facts);
            ctx.insert("mac", &facts.mac.map(|m| m.to_string()).unwrap_or_default());
            ctx.insert("retry_secs", &cat.site.settings.install.discover_retry_secs);
            if let ScriptChoice::Matched { profile, .. } = choice {
                ctx.insert("suggested_profile", &profile.name);
            }
            let name = match (choice, cat.site.settings.install.unknown_hosts) {
                (ScriptChoice::Rejected { .. }, _) | (_, UnknownHostPolicy::Local) => LOCAL,
                (_, UnknownHostPolicy::Discover) => DISCOVER,
            };
            cat.templates.render(name, &ctx)
        }
    }
}

pub fn render_bootstrap(cat: &Catalog, base_url: &str) -> Result<String, RenderError> {
    let mut ctx = Context::new();
    ctx.insert("base_url", base_url);
    cat.templates.render(BOOTSTRAP, &ctx)
}

/// The kickstart of `host`, booted from `mac` on `platform` (as its token record remembers).
pub fn render_kickstart(
    cat: &Catalog,
    base_url: &str,
    host: &Host,
    profile: &Profile,
    mac: Mac,
    platform: Option<&str>,
    token: &str,
) -> Result<String, RenderError> {
    // The kickstart names no boot media: the release's current ones fill the context.
    let template = format!("ks/{}", profile.kickstart);
    let media =
        media_of(cat, profile, None, base_url, false).map_err(|e| RenderError::Template {
            name: template.clone(),
            message: e.to_string(),
        })?;
    with_host_context(
        cat,
        base_url,
        host,
        profile,
        mac,
        platform,
        token,
        &media,
        |ctx| cat.templates.render(&template, ctx),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Overrides;
    use crate::select::{approved_host, default_name};
    use std::path::Path;

    /// A host's context as an owned value, through the same cache as the server.
    fn host_context(
        site: &Catalog,
        base_url: &str,
        host: &Host,
        profile: &Profile,
        mac: Mac,
        platform: Option<&str>,
    ) -> Context {
        // A per-host token, so that a context reused for another host would show it.
        let ks = &host.name;
        with_host_context(
            site,
            base_url,
            host,
            profile,
            mac,
            platform,
            ks,
            &media_of(site, profile, None, base_url, false).unwrap(),
            Context::clone,
        )
    }

    /// The repository root is the example site.
    fn example_site() -> Catalog {
        example_site_with(&Overrides::default())
    }

    fn example_site_with(o: &Overrides) -> Catalog {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        match crate::check::load(&root, o) {
            Ok(s) => s,
            Err(e) => panic!("example site does not load: {:#?}", e.0),
        }
    }

    fn uncached_context(
        site: &Catalog,
        base_url: &str,
        host: &Host,
        profile: &Profile,
        mac: Mac,
        platform: Option<&str>,
    ) -> Context {
        let platform = platform.unwrap_or_else(|| default_platform(profile));
        let mut ctx = profile_context(&site.site, base_url, profile, platform);
        add_request_parts(
            &mut ctx,
            site,
            base_url,
            host,
            profile,
            mac,
            &host.name,
            &media_of(site, profile, None, base_url, false).unwrap(),
        );
        ctx
    }

    /// The iPXE script and, where there is one, the kickstart a context renders to.
    fn render_all(site: &Catalog, host: &Host, profile: &Profile, ctx: &Context) -> Vec<String> {
        let known = site.site.host_by_name(&host.name).is_some();
        let mut out = vec![site
            .templates
            .render(ipxe_template_for(known.then_some(host), profile), ctx)
            .expect("iPXE script renders")];
        if crate::select::has_kickstart(profile) {
            out.push(
                site.templates
                    .render(&format!("ks/{}", profile.kickstart), ctx)
                    .expect("kickstart renders"),
            );
        }
        out
    }

    /// Every host of the example site, and a machine approved for each profile.
    fn all_hosts(site: &Catalog) -> Vec<(Host, &Profile, Mac)> {
        let site = &site.site;
        let mut out: Vec<(Host, &Profile, Mac)> = site
            .hosts
            .iter()
            .filter_map(|h| {
                let p = site.profiles.get(&h.profile)?;
                Some((h.clone(), p, h.macs.first().copied().unwrap_or(Mac([0; 6]))))
            })
            .collect();
        for p in site.profiles.values() {
            let mac = Mac([0x02, 0, 0, 0, 0, 2]);
            let host = approved_host(&default_name(mac), &p.name, mac, "test".into());
            out.push((host, p, mac));
        }
        out
    }

    #[test]
    fn cache_miss_hit_and_uncached_render_the_same() {
        let site = example_site();
        let hosts = all_hosts(&site);
        assert!(
            hosts.len() > site.site.profiles.len(),
            "the example site has hosts"
        );
        // A base URL nobody has rendered with yet, so the first round misses.
        for base in [
            "http://cache-test.example:8080",
            site.config.base_url.offline(),
        ] {
            for (host, profile, mac) in &hosts {
                for platform in [None, Some("pcbios"), Some("efi")] {
                    let reference = uncached_context(&site, base, host, profile, *mac, platform);
                    let miss = host_context(&site, base, host, profile, *mac, platform);
                    let hit = host_context(&site, base, host, profile, *mac, platform);
                    assert_eq!(miss, reference, "{} {platform:?}: miss", host.name);
                    assert_eq!(hit, reference, "{} {platform:?}: hit", host.name);
                    let want = render_all(&site, host, profile, &reference);
                    assert_eq!(render_all(&site, host, profile, &miss), want);
                    assert_eq!(render_all(&site, host, profile, &hit), want);
                }
            }
        }
        // Two base URLs × two platforms per profile; `None` resolves to one of them.
        assert_eq!(
            site.profile_contexts.len(),
            2 * 2 * site.site.profiles.len()
        );
    }

    /// Reused copies of a profile's context, handed from host to host in every order, hold
    /// exactly what a fresh context holds: nothing of the previous host survives.
    #[test]
    fn reused_contexts_keep_nothing_of_the_previous_host() {
        let site = example_site();
        let hosts = all_hosts(&site);
        let base = site.config.base_url.offline().to_string();
        let fresh: Vec<Context> = hosts
            .iter()
            .map(|(h, p, m)| uncached_context(&site, &base, h, p, *m, None))
            .collect();
        for round in 0..3 {
            for i in 0..hosts.len() {
                // Forwards, backwards, then interleaved, so each copy meets other hosts.
                let j = match round {
                    0 => i,
                    1 => hosts.len() - 1 - i,
                    _ => (i * 7) % hosts.len(),
                };
                let (host, profile, mac) = &hosts[j];
                let ks = &host.name;
                let seen = with_host_context(
                    &site,
                    &base,
                    host,
                    profile,
                    *mac,
                    None,
                    ks,
                    &media_of(&site, profile, None, &base, false).unwrap(),
                    |c| c.clone(),
                );
                assert_eq!(seen, fresh[j], "{} in round {round}", host.name);
            }
        }
    }

    #[test]
    fn cache_is_bounded_under_many_base_urls() {
        let site = example_site();
        let (host, profile, mac) = all_hosts(&site).swap_remove(0);
        for i in 0..(2 * crate::contexts::PROFILE_CONTEXTS_MAX + 7) {
            let base = format!("http://client-{i}.example:8080");
            host_context(&site, &base, &host, profile, mac, None);
            assert!(site.profile_contexts.len() <= crate::contexts::PROFILE_CONTEXTS_MAX);
        }
        // After the flood a real base URL is still cached and still right.
        let base = site.config.base_url.offline().to_string();
        let before = site.profile_contexts.len();
        let ctx = host_context(&site, &base, &host, profile, mac, None);
        assert_eq!(
            ctx,
            uncached_context(&site, &base, &host, profile, mac, None)
        );
        let after = site.profile_contexts.len();
        assert!(after == before + 1 || after == 1, "{before} -> {after}");
    }

    #[test]
    fn image_view_follows_a_publish_on_a_cache_hit() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut site = example_site_with(&Overrides {
            state: Some(state.path().to_path_buf()),
            ..Overrides::default()
        });
        let profile = site
            .site
            .profiles
            .get_mut("qemu-bios")
            .expect("qemu-bios profile");
        profile.boot = BootMethod::Diskless;
        profile.image = Some("rescue".into());
        let site = site;
        let host = site.site.host_by_name("vm-bios-01").expect("vm-bios-01");
        let profile = &site.site.profiles["qemu-bios"];
        let mac = host.macs[0];
        let dir = state.path().join("images/rescue/qemu-bios");
        let publish = |id: &str| {
            let build = dir.join(id);
            std::fs::create_dir_all(&build).expect("build dir");
            let sums = format!(
                "{}  vmlinuz\n{}  initramfs.img\n",
                "a".repeat(64),
                "b".repeat(64)
            );
            std::fs::write(build.join("SHA256SUMS"), sums).expect("sums");
            // A published build holds the files its sums list (the store checks).
            for f in ["vmlinuz", "initramfs.img"] {
                std::fs::write(build.join(f), id).expect("file");
            }
            let tmp = dir.join("current.tmp");
            std::os::unix::fs::symlink(id, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.join("current")).expect("rename");
        };
        // Loading cached the unmodified profile under the offline base URL; a fresh one keeps
        // this test's edit from meeting those entries.
        let base = "http://publish-test.example";
        let script = || {
            let ctx = host_context(&site, base, host, profile, mac, None);
            site.templates
                .render(ipxe_template_for(Some(host), profile), &ctx)
                .expect("diskless script renders")
        };
        publish("build-1");
        let first = script();
        assert!(first.contains("build build-1"), "{first}");
        let cached = site.profile_contexts.len();
        publish("build-2");
        let second = script();
        assert_eq!(site.profile_contexts.len(), cached, "a cache hit");
        assert!(second.contains("build build-2"), "{second}");
        assert_eq!(second, first.replace("build-1", "build-2"));
    }

    #[test]
    fn a_copy_of_a_profile_is_not_served_the_cached_context() {
        let site = example_site();
        let (host, profile, mac) = all_hosts(&site).swap_remove(0);
        let base = site.config.base_url.offline().to_string();
        host_context(&site, &base, &host, profile, mac, None);
        let mut changed = profile.clone();
        changed.kernel_args = vec!["pxeforge.cache_test=1".into()];
        let ctx = host_context(&site, &base, &host, &changed, mac, None);
        assert_eq!(
            ctx,
            uncached_context(&site, &base, &host, &changed, mac, None)
        );
    }

    #[test]
    fn a_poisoned_cache_falls_back_to_building_the_context() {
        let site = example_site();
        let (host, profile, mac) = all_hosts(&site).swap_remove(0);
        site.profile_contexts.poison_for_test();
        let base = "http://poisoned.example";
        let want = uncached_context(&site, base, &host, profile, mac, Some("efi"));
        for _ in 0..2 {
            let ctx = host_context(&site, base, &host, profile, mac, Some("efi"));
            assert_eq!(ctx, want);
        }
    }
}
