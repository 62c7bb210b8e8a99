//! `/boot.ipxe`, `/ipxe` and the kickstarts: rendered from the current site on every request,
//! from templates compiled once per load.

use super::state::{base_url, AppState};
use crate::render;
use crate::select::{self, facts_from_query, Facts, KickstartChoice, ScriptChoice};
use crate::templates::RenderError;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pxeforge_site::settings::UnknownHostPolicy;
use pxeforge_site::Mac;

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
    let choice = select::select(&cat.site, &facts);
    let outcome = match &choice {
        ScriptChoice::Host { .. } => "host",
        ScriptChoice::Matched { .. } => "matched",
        ScriptChoice::Unknown => match cat.site.settings.install.unknown_hosts {
            UnknownHostPolicy::Local => "unknown_local",
            UnknownHostPolicy::Discover => "unknown_discover",
        },
    };
    if let ScriptChoice::Host { host, profile } = &choice {
        tracing::info!(mac = ?facts.mac, host = %host.name, profile = %profile.name, "host script");
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

/// An unknown machine's facts become an event (the discovery report) and, when a match rule
/// claimed it, the profile is remembered so `/ks/MAC` works for it, across restarts too.
async fn remember_unknown(st: &AppState, mac: Mac, profile: Option<&str>, facts: &Facts) {
    let store = st.events.clone();
    let facts_json = serde_json::to_string(facts).unwrap_or_default();
    let profile = profile.map(str::to_string);
    let now = crate::events::now();
    let res = tokio::task::spawn_blocking(move || {
        store.remember_discovered(&mac.to_string(), profile.as_deref(), &facts_json, now)?;
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

/// The kickstart of MAC, chosen by `select::select_kickstart` (as `pxeforge render` does).
async fn kickstart_for(st: &AppState, mac: Mac, headers: &HeaderMap) -> Response {
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
        KickstartChoice::Host { host, profile } => {
            match render::render_kickstart(&cat, &base, host, profile, mac) {
                Ok(s) => text(s),
                Err(e) => render_failed(e),
            }
        }
        KickstartChoice::Claimed { host, profile } => {
            match render::render_kickstart(&cat, &base, &host, profile, mac) {
                Ok(s) => text(s),
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

pub async fn kickstart(
    State(st): State<AppState>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    match mac.parse::<Mac>() {
        Ok(m) => kickstart_for(&st, m, &headers).await,
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// `/ks` with Anaconda's `inst.ks.sendmac` headers: the first MAC that names a known host.
pub async fn kickstart_by_headers(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let macs = select::macs_from_sendmac(
        headers
            .iter()
            .map(|(name, v)| (name.as_str(), v.as_bytes())),
    );
    let chosen = select::sendmac_choice(&st.catalog.load().site, &macs);
    match chosen {
        Some(mac) => kickstart_for(&st, mac, &headers).await,
        None => (
            StatusCode::BAD_REQUEST,
            "no X-RHN-Provisioning-MAC-N header: boot with inst.ks.sendmac or use /ks/MAC\n",
        )
            .into_response(),
    }
}
