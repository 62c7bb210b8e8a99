//! `/boot.ipxe`, `/ipxe` and the kickstarts: rendered from the current site on every request,
//! from templates compiled once per load.

use super::state::{base_url, AppState};
use crate::buildstate::new_token;
use crate::catalog::Catalog;
use crate::lifecycle::{self, Kickstart, Policy, Script};
use crate::render::{self, KsAccess};
use crate::select::{self, facts_from_query, BuildScript, Facts, KickstartChoice, ScriptChoice};
use crate::templates::RenderError;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pxeforge_site::settings::UnknownHostPolicy;
use pxeforge_site::{Host, Mac};
use std::net::SocketAddr;

const TEXT: &str = "text/plain; charset=utf-8";

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, TEXT)], body).into_response()
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
    let mut choice = select::select(&cat.site, &facts);
    if let ScriptChoice::Host {
        host,
        profile,
        build,
    } = &mut choice
    {
        if select::tracked(host, profile) {
            *build = build_script(&st, &cat, host, &facts, remote).await;
        }
    }
    let outcome = match &choice {
        ScriptChoice::Host { .. } => "host",
        ScriptChoice::Matched { .. } => "matched",
        ScriptChoice::Unknown => match cat.site.settings.install.unknown_hosts {
            UnknownHostPolicy::Local => "unknown_local",
            UnknownHostPolicy::Discover => "unknown_discover",
        },
    };
    if let ScriptChoice::Host {
        host,
        profile,
        build,
    } = &choice
    {
        let script = match build {
            BuildScript::Install { .. } => "install",
            BuildScript::Local => "local",
            BuildScript::Untracked => "by profile",
        };
        tracing::info!(mac = ?facts.mac, host = %host.name, profile = %profile.name, script, "host script");
    } else {
        let matched = match &choice {
            ScriptChoice::Matched { profile, .. } => Some(profile.name.clone()),
            _ => None,
        };
        tracing::info!(mac = ?facts.mac, manufacturer = ?facts.manufacturer, product = ?facts.product, profile = ?matched, "unknown machine");
        if let Some(mac) = facts.mac {
            remember_unknown(&st, mac, matched.as_deref(), &facts).await;
        }
    }
    match render::render_ipxe(&cat, &base, &choice, &facts) {
        Ok(s) => {
            st.metrics.script(outcome);
            text(s)
        }
        Err(e) => {
            st.metrics.script("error");
            render_failed(e)
        }
    }
}

/// What an inventory host's build state makes of its script request: the install script with
/// its token while armed, the local one otherwise (and whenever the store cannot be read).
async fn build_script(
    st: &AppState,
    cat: &Catalog,
    host: &Host,
    facts: &Facts,
    remote: SocketAddr,
) -> BuildScript {
    let policy = policy(cat);
    let name = host.name.clone();
    let (mac, platform) = (facts.mac.map(|m| m.to_string()), facts.platform.clone());
    let build = st.build.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let source = remote.ip().to_string();
        let now = crate::events::now();
        build.decide(&name, now, |r| {
            let (script, mut change) =
                lifecycle::on_script(r, now, &policy, &source, &mut new_token);
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
            (script, change)
        })
    })
    .await;
    match decided {
        Ok(Ok(Some(Script::Install { token }))) => BuildScript::Install { token },
        Ok(Ok(Some(Script::Local))) => BuildScript::Local,
        Ok(Ok(None)) => {
            tracing::warn!(host = %host.name, "no build-state record (the store is reconciled at every load): local boot");
            BuildScript::Local
        }
        Ok(Err(e)) => {
            tracing::error!(host = %host.name, error = %e, "build state unavailable: local boot");
            BuildScript::Local
        }
        Err(e) => {
            tracing::error!(host = %host.name, error = %e, "build-state task failed: local boot");
            BuildScript::Local
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
async fn remember_unknown(st: &AppState, mac: Mac, profile: Option<&str>, facts: &Facts) {
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
            remote: String::new(),
        })
    })
    .await;
    if let Ok(Err(e)) = res {
        tracing::error!(error = %e, "could not record discovered machine");
    }
}

/// The kickstart of a machine that a profile's match rule claimed, by its MAC (as
/// `pxeforge render` does). Inventory hosts are not served here: their kickstart URL names the
/// host and carries its build's token.
async fn kickstart_by_mac(st: &AppState, mac: Mac, headers: &HeaderMap) -> Response {
    let cat = st.catalog.load_full();
    let base = base_url(&cat, headers);
    // Only an unknown MAC needs the store: the claim a match rule made when it asked for /ipxe.
    let claimed = if cat.site.host_by_mac(&mac).is_none() {
        let store = st.events.clone();
        let key = mac.to_string();
        tokio::task::spawn_blocking(move || store.discovered_profile(&key))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
    } else {
        None
    };
    match select::select_kickstart(&cat.site, mac, || claimed) {
        KickstartChoice::Host { host, .. } => (
            StatusCode::FORBIDDEN,
            format!(
                "host {} gets its kickstart at the URL of its install script, with its build token\n",
                host.name
            ),
        )
            .into_response(),
        KickstartChoice::Claimed { host, profile } => {
            match render::render_kickstart(&cat, &base, &host, profile, mac, None, KsAccess::Mac) {
                Ok(s) => kickstart_text(s),
                Err(e) => render_failed(e),
            }
        }
        KickstartChoice::NotInstalled { host } => (
            StatusCode::NOT_FOUND,
            format!(
                "host {} is not to be installed from a kickstart\n",
                host.name
            ),
        )
            .into_response(),
        KickstartChoice::Unknown => {
            (StatusCode::NOT_FOUND, format!("no host with MAC {mac}\n")).into_response()
        }
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
        Ok(m) => kickstart_by_mac(&st, m, &headers).await,
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
    let forbidden = || (StatusCode::FORBIDDEN, "no valid token\n").into_response();
    let Some(host) = cat.site.host_by_name(name) else {
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
    let ks = KsAccess::Token(token);
    match render::render_kickstart(
        &cat,
        &base,
        host,
        profile,
        mac,
        record.platform.as_deref(),
        ks,
    ) {
        Ok(s) => kickstart_text(s),
        Err(e) => render_failed(e),
    }
}

/// `/ks` with Anaconda's `inst.ks.sendmac` headers: for machines a match rule claimed. An
/// inventory host named by them is refused: its kickstart needs its build token.
pub async fn kickstart_by_headers(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let macs = select::macs_from_sendmac(
        headers
            .iter()
            .map(|(name, v)| (name.as_str(), v.as_bytes())),
    );
    let chosen = select::sendmac_choice(&st.catalog.load().site, &macs);
    match chosen {
        Some(mac) => kickstart_by_mac(&st, mac, &headers).await,
        None => (
            StatusCode::BAD_REQUEST,
            "no X-RHN-Provisioning-MAC-N header: boot with inst.ks.sendmac or use /ks/MAC\n",
        )
            .into_response(),
    }
}
