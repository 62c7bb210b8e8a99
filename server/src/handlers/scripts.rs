//! `/boot.ipxe`, `/ipxe` and the kickstarts: rendered from the current site on every request,
//! from templates compiled once per load.

use super::state::{base_url, AppState};
use crate::buildstate::new_token;
use crate::catalog::Catalog;
use crate::lifecycle::{self, Kickstart, Policy, Script, State as BuildStateKind};
use crate::render;
use crate::script_cache::{Entry, Key, Platform};
use crate::select::{self, facts_from_query, BuildScript, Facts, KickstartChoice, ScriptChoice};
use crate::templates::RenderError;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use pxeforge_site::settings::UnknownHostPolicy;
use pxeforge_site::{Host, Mac};
use std::net::SocketAddr;

const TEXT: &str = "text/plain; charset=utf-8";

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, TEXT)], body).into_response()
}

fn text_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, TEXT)], body).into_response()
}

/// The cache key of a request whose MAC is an inventory host's (with its profile loaded): only
/// then does the MAC alone decide which host it is (`select` tries the MAC first).
fn cache_key(cat: &Catalog, facts: &Facts, base: &str) -> Option<Key> {
    let mac = facts.mac?;
    let &i = cat.site.by_mac.get(&mac)?;
    let host = cat.site.hosts.get(i)?;
    cat.site.profiles.get(&host.profile)?;
    Some(Key {
        mac,
        platform: Platform::of(facts.platform.as_deref()),
        base_url: base.to_string(),
    })
}

fn render_failed(e: RenderError) -> Response {
    tracing::error!(error = %e, "rendering failed");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

pub async fn bootstrap(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let cat = st.catalog.load();
    let base = base_url(&cat, &headers);
    match render::render_bootstrap(&cat, &base) {
        Ok(s) => text(s),
        Err(e) => render_failed(e),
    }
}

pub async fn host_script(
    State(st): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let facts = match facts_from_query(q.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => {
            st.metrics.script("error");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let cat = st.catalog.load();
    let base = base_url(&cat, &headers);
    // A host that boots again gets the script it got last time, while nothing it depends on
    // changed (see `script_cache`): no selection, build state or template work.
    let key = cache_key(&cat, &facts, &base);
    if let Some(key) = &key {
        let epoch = st
            .scripts
            .epoch(&cat, &st.build.claims(), st.build.paused());
        if let Some(e) = st.scripts.get(&epoch, key) {
            tracing::info!(mac = ?facts.mac, host = %e.host, profile = %e.profile, script = e.script, "host script");
            st.metrics.script("host");
            return text_bytes(e.body.clone());
        }
    }
    // A zero-touch profile claims an unknown machine for good on its first request.
    let auto = match select::select(&cat.site, &st.build.claims(), &facts) {
        ScriptChoice::Matched { profile, mac } if profile.auto_install => {
            Some((mac, profile.name.clone()))
        }
        _ => None,
    };
    if let Some((mac, profile)) = auto {
        auto_approve(&st, mac, profile, remote).await;
    }
    let claims = st.build.claims();
    let paused = st.build.paused();
    // Read before the build state is, so that a change made while this request decides and
    // renders keeps its script out of the cache.
    let epoch = st.scripts.epoch(&cat, &claims, paused);
    // Whether the script is one this request did not change and that stays the same while the
    // epoch does (see `script_cache`).
    let mut keep = true;
    let mut choice = select::select(&cat.site, &claims, &facts);
    if let ScriptChoice::Host {
        host,
        profile,
        build,
    } = &mut choice
    {
        if select::tracked(host, profile) {
            *build = if paused {
                BuildScript::Local
            } else {
                let (b, stable) = build_script(&st, &cat, host, &facts, remote).await;
                keep = stable && epoch.store_watched();
                b
            };
        }
    }
    let outcome = match &choice {
        ScriptChoice::Host { .. } => "host",
        ScriptChoice::Matched { .. } => "matched",
        ScriptChoice::Rejected { .. } => "rejected",
        ScriptChoice::Unknown => match cat.site.settings.install.unknown_hosts {
            UnknownHostPolicy::Local => "unknown_local",
            UnknownHostPolicy::Discover => "unknown_discover",
        },
    };
    match &choice {
        ScriptChoice::Host {
            host,
            profile,
            build,
        } => {
            let script = match build {
                BuildScript::Install { .. } => "install",
                BuildScript::Local if paused => "local (installs paused)",
                BuildScript::Local => "local",
                BuildScript::Wait => "wait (install cap)",
                BuildScript::Untracked => "by profile",
            };
            tracing::info!(mac = ?facts.mac, host = %host.name, profile = %profile.name, script, "host script");
        }
        ScriptChoice::Rejected { mac } => {
            tracing::info!(%mac, "rejected machine: local boot");
        }
        ScriptChoice::Matched { .. } | ScriptChoice::Unknown => {
            let matched = match &choice {
                ScriptChoice::Matched { profile, .. } => Some(profile.name.clone()),
                _ => None,
            };
            tracing::info!(mac = ?facts.mac, manufacturer = ?facts.manufacturer, product = ?facts.product, suggested_profile = ?matched, "unknown machine: waits for approval");
            if let Some(mac) = facts.mac {
                remember_unknown(&st, mac, matched.as_deref(), &facts, remote).await;
            }
        }
    }
    match render::render_ipxe(&cat, &base, &choice, &facts) {
        Ok(s) => {
            st.metrics.script(outcome);
            let kept = match (&choice, key) {
                (
                    ScriptChoice::Host {
                        host,
                        profile,
                        build: build @ (BuildScript::Local | BuildScript::Untracked),
                    },
                    Some(key),
                ) if keep && epoch.files_watched() => Some((host, profile, build, key)),
                _ => None,
            };
            let Some((host, profile, build, key)) = kept else {
                return text(s);
            };
            let body = Bytes::from(s);
            let entry = Entry {
                body: body.clone(),
                host: host.name.clone(),
                profile: profile.name.clone(),
                script: match build {
                    BuildScript::Local if paused => "local (installs paused)",
                    BuildScript::Local => "local",
                    _ => "by profile",
                },
            };
            let now = st
                .scripts
                .epoch(&st.catalog.load(), &st.build.claims(), st.build.paused());
            let cap = cat.site.settings.limits.script_cache_entries;
            st.scripts
                .insert(epoch, now, &cat, &claims, key, entry, cap);
            text_bytes(body)
        }
        Err(e) => {
            st.metrics.script("error");
            render_failed(e)
        }
    }
}

/// Approves an unknown machine for a profile with `auto_install`, under its default name; the
/// claim is recorded with the address that asked. A refusal (the name is taken) leaves it
/// discovered, for an operator.
async fn auto_approve(st: &AppState, mac: Mac, profile: String, remote: SocketAddr) {
    let build = st.build.clone();
    let res = tokio::task::spawn_blocking(move || {
        let name = select::default_name(mac);
        let source = format!(
            "auto_install of profile {profile}, requested from {}",
            remote.ip()
        );
        build
            .approve(&mac.to_string(), &name, &profile, true, &source)
            .map(|_| name)
    })
    .await;
    match res {
        Ok(Ok(name)) => {
            tracing::warn!(%mac, host = %name, "unknown machine approved by auto_install: it installs now")
        }
        Ok(Err(e)) => tracing::error!(%mac, error = %e, "auto_install: not approved"),
        Err(e) => tracing::error!(%mac, error = %e, "auto_install task failed"),
    }
}

/// What an inventory host's build state makes of its script request: the install script with
/// its token while armed, the local one otherwise (and whenever the store cannot be read).
/// With it, whether the answer is stable: decided from a record that the request did not change
/// and whose build is not under way (installed, failed), for which `lifecycle::on_script`
/// reads neither the clock nor the install cap, so it stays the same until the record changes.
async fn build_script(
    st: &AppState,
    cat: &Catalog,
    host: &Host,
    facts: &Facts,
    remote: SocketAddr,
) -> (BuildScript, bool) {
    let policy = policy(cat);
    let name = host.name.clone();
    let (mac, platform) = (facts.mac.map(|m| m.to_string()), facts.platform.clone());
    let build = st.build.clone();
    let cap = cat.site.settings.install.max_installing;
    // What a new build of this host is pinned to: its release's current compose.
    let pin = cat
        .site
        .profiles
        .get(&host.profile)
        .and_then(|p| p.release.clone())
        .map(|r| (cat.config.state.clone(), r));
    let decided = tokio::task::spawn_blocking(move || {
        let source = remote.ip().to_string();
        let now = crate::events::now();
        build.decide_capped(&name, now, cap, |r, room| {
            let (script, mut change) =
                lifecycle::on_script(r, now, &policy, &source, &mut new_token, room, &mut || {
                    pin.as_ref().and_then(|(state, release)| {
                        pxeforge_releases::current_media(state, release)
                    })
                });
            // The record keeps the MAC and platform the host booted with, for its kickstart.
            if matches!(script, Script::Install { .. }) {
                let base = change.as_ref().map_or(r, |(rec, _)| rec);
                if base.boot_mac != mac || base.platform != platform {
                    let mut rec = base.clone();
                    rec.boot_mac = mac.clone();
                    rec.platform = platform.clone();
                    let ts = change.map(|(_, t)| t).unwrap_or_default();
                    change = Some((rec, ts));
                }
            }
            let stable = change.is_none()
                && !matches!(r.state, BuildStateKind::Armed | BuildStateKind::Installing);
            ((script, stable), change)
        })
    })
    .await;
    match decided {
        Ok(Ok(Some((Script::Install { token, media }, _)))) => {
            (BuildScript::Install { token, media }, false)
        }
        Ok(Ok(Some((Script::Local, stable)))) => (BuildScript::Local, stable),
        Ok(Ok(Some((Script::Wait, _)))) => (BuildScript::Wait, false),
        Ok(Ok(None)) => {
            tracing::warn!(host = %host.name, "no build-state record (the store is reconciled at every load): local boot");
            (BuildScript::Local, false)
        }
        Ok(Err(e)) => {
            tracing::error!(host = %host.name, error = %e, "build state unavailable: local boot");
            (BuildScript::Local, false)
        }
        Err(e) => {
            tracing::error!(host = %host.name, error = %e, "build-state task failed: local boot");
            (BuildScript::Local, false)
        }
    }
}

pub fn policy(cat: &Catalog) -> Policy {
    let i = &cat.site.settings.install;
    Policy {
        token_ttl_secs: i64::try_from(i.token_ttl_secs).unwrap_or(i64::MAX),
        on_failure: i.on_failure,
    }
}

/// An unknown machine's facts become an event (the discovery report) and, when a match rule
/// claimed it, the profile is remembered so `/ks/MAC` works for it, across restarts too.
async fn remember_unknown(
    st: &AppState,
    mac: Mac,
    profile: Option<&str>,
    facts: &Facts,
    remote: SocketAddr,
) {
    let store = st.events.clone();
    let facts_json = serde_json::to_string(facts).unwrap_or_default();
    let profile = profile.map(str::to_string);
    let now = crate::events::now();
    let res = tokio::task::spawn_blocking(move || {
        // A machine that asks again with the same facts is only seen again: a `discovery`
        // event per request would let one machine fill its share of the store with copies.
        if !store.remember_discovered(&mac.to_string(), profile.as_deref(), &facts_json, now)? {
            return Ok(0);
        }
        store.record(&crate::events::Event {
            id: 0,
            mac: mac.to_string(),
            host: None,
            stage: "discovery".into(),
            status: if profile.is_some() {
                "matched".into()
            } else {
                "unknown".into()
            },
            message: facts_json,
            at: now,
            // Who made the claim: anyone can send any facts for any MAC.
            remote: remote.ip().to_string(),
        })
    })
    .await;
    if let Ok(Err(e)) = res {
        tracing::error!(error = %e, "could not record discovered machine");
    }
}

/// `/ks/MAC` and `/ks` with sendmac headers: no kickstart is served by MAC. A host (in the
/// inventory, or approved) gets its kickstart at the URL of its install script, with its
/// build's token; a machine that is neither gets none, whatever profile its facts suggest.
async fn kickstart_by_mac(st: &AppState, mac: Mac) -> Response {
    let cat = st.catalog.load_full();
    let claims = st.build.claims();
    match select::select_kickstart(&cat.site, &claims, mac) {
        KickstartChoice::Host { host, .. } => (
            StatusCode::FORBIDDEN,
            format!(
                "host {} gets its kickstart at the URL of its install script, with its build token\n",
                host.name
            ),
        )
            .into_response(),
        KickstartChoice::NotInstalled { host } => (
            StatusCode::NOT_FOUND,
            format!(
                "host {} is not to be installed from a kickstart\n",
                host.name
            ),
        )
            .into_response(),
        KickstartChoice::Unknown => (
            StatusCode::NOT_FOUND,
            format!("no host with MAC {mac}: an unknown machine is installed only once an operator approves it\n"),
        )
            .into_response(),
    }
}

/// Kickstarts may hold what a host needs to join the site: never kept by a cache on the way.
fn kickstart_text(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, TEXT),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `/ks/HOST?token=T` (an inventory host, with its build's token), or `/ks/MAC` (a machine a
/// match rule claimed).
pub async fn kickstart(
    State(st): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = token_from_query(q.as_deref()) {
        return host_kickstart(&st, &name, &token, remote, &headers).await;
    }
    match name.parse::<Mac>() {
        Ok(m) => kickstart_by_mac(&st, m).await,
        Err(_) => (StatusCode::FORBIDDEN, "no valid token\n").into_response(),
    }
}

/// The `token` query parameter, if any.
pub fn token_from_query(q: Option<&str>) -> Option<String> {
    form_urlencoded::parse(q?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

async fn host_kickstart(
    st: &AppState,
    name: &str,
    token: &str,
    remote: SocketAddr,
    headers: &HeaderMap,
) -> Response {
    let cat = st.catalog.load_full();
    let claims = st.build.claims();
    let forbidden = || (StatusCode::FORBIDDEN, "no valid token\n").into_response();
    let Some(host) = select::host_by_name(&cat.site, &claims, name) else {
        return forbidden();
    };
    let Some(profile) = cat.site.profiles.get(&host.profile) else {
        return forbidden();
    };
    if !select::tracked(host, profile) {
        return forbidden();
    }
    let policy = policy(&cat);
    let build = st.build.clone();
    let (hname, token_owned) = (host.name.clone(), token.to_string());
    let addr = remote.ip().to_string();
    let decided = tokio::task::spawn_blocking(move || {
        let mut record = None;
        let now = crate::events::now();
        let answer = build.decide(&hname, now, |r| {
            record = Some(r.clone());
            let (k, change) = lifecycle::on_kickstart(r, &token_owned, &addr, now, &policy);
            (k, change.map(|(rec, t)| (rec, vec![t])))
        });
        (answer, record)
    })
    .await;
    let (answer, record) = match decided {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "build-state task failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    match answer {
        Ok(Some(Kickstart::Serve)) => {}
        Ok(Some(Kickstart::Forbidden(why))) => {
            tracing::warn!(host = %host.name, %remote, why, "kickstart refused");
            return forbidden();
        }
        Ok(None) => return forbidden(),
        Err(e) => {
            tracing::error!(host = %host.name, error = %e, "build state unavailable: kickstart refused");
            return (StatusCode::SERVICE_UNAVAILABLE, "build state unavailable\n").into_response();
        }
    }
    // `decide` answered, so it saw a record: the one the answer was decided from.
    let Some(record) = record else {
        return forbidden();
    };
    let mac = record
        .boot_mac
        .as_deref()
        .and_then(|m| m.parse::<Mac>().ok())
        .or_else(|| host.macs.first().copied())
        .unwrap_or_default();
    let base = base_url(&cat, headers);
    match render::render_kickstart(
        &cat,
        &base,
        host,
        profile,
        mac,
        record.platform.as_deref(),
        token,
    ) {
        Ok(s) => kickstart_text(s),
        Err(e) => render_failed(e),
    }
}

/// `/ks` with Anaconda's `inst.ks.sendmac` headers: never a kickstart (see
/// `kickstart_by_mac`), but an answer that says where the host's kickstart is.
pub async fn kickstart_by_headers(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let macs = select::macs_from_sendmac(
        headers
            .iter()
            .map(|(name, v)| (name.as_str(), v.as_bytes())),
    );
    let chosen = select::sendmac_choice(&st.catalog.load().site, &macs);
    match chosen {
        Some(mac) => kickstart_by_mac(&st, mac).await,
        None => (
            StatusCode::BAD_REQUEST,
            "no X-RHN-Provisioning-MAC-N header: boot with inst.ks.sendmac or use /ks/MAC\n",
        )
            .into_response(),
    }
}
