//! `/boot.ipxe`, `/ipxe` and the kickstarts: rendered from the current site on every request,
//! from templates compiled once per load.

use super::{base_url, AppState};
use crate::mac::Mac;
use crate::render::{self, clean_fact, Facts, ScriptChoice};
use crate::select::select;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

const TEXT: &str = "text/plain; charset=utf-8";

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, TEXT)], body).into_response()
}

fn render_failed(e: render::RenderError) -> Response {
    tracing::error!(error = %e, "rendering failed");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

pub async fn bootstrap(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let site = st.site.load();
    let base = base_url(&st, &site, &headers);
    match render::render_bootstrap(&site, &base) {
        Ok(s) => text(s),
        Err(e) => render_failed(e),
    }
}

/// The facts iPXE reports, from the raw query string (form encoding: `+` is a space, `%XX` a
/// byte). Only the known keys are decoded, the last of a repeated key wins, and anything that
/// fails validation is dropped, never echoed; a malformed MAC is an error.
pub fn facts_from_query(raw: &str) -> Result<Facts, String> {
    const KEYS: [&str; 7] = [
        "mac",
        "uuid",
        "serial",
        "manufacturer",
        "product",
        "arch",
        "platform",
    ];
    let mut vals: [Option<Cow<str>>; 7] = Default::default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = form_decode(k);
        if let Some(i) = KEYS.iter().position(|key| *key == k) {
            vals[i] = Some(form_decode(v));
        }
    }
    let [mac, uuid, serial, manufacturer, product, arch, platform] = vals;
    let mac = match mac.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(m) => Some(m.parse::<Mac>().map_err(|e| e.to_string())?),
        None => None,
    };
    let get = |v: Option<Cow<str>>| v.and_then(|v| clean_fact(&v));
    Ok(Facts {
        mac,
        uuid: get(uuid).map(|u| u.to_lowercase()),
        serial: get(serial),
        manufacturer: get(manufacturer),
        product: get(product),
        arch: get(arch),
        platform: get(platform).filter(|p| matches!(p.as_str(), "pcbios" | "efi")),
    })
}

/// Decodes one form-encoded key or value; invalid UTF-8 becomes U+FFFD, which no fact allows.
fn form_decode(v: &str) -> Cow<'_, str> {
    if !v.contains(['%', '+']) {
        return Cow::Borrowed(v);
    }
    let spaced = v.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
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
    let site = st.site.load();
    let base = base_url(&st, &site, &headers);
    let choice = select(&site, &facts);
    let outcome = match &choice {
        ScriptChoice::Host { .. } => "host",
        ScriptChoice::Matched { .. } => "matched",
        ScriptChoice::Unknown => match site.settings.install.unknown_hosts {
            crate::site::settings::UnknownHostPolicy::Local => "unknown_local",
            crate::site::settings::UnknownHostPolicy::Discover => "unknown_discover",
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
    match render::render_ipxe(&site, &base, &choice, &facts) {
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

async fn kickstart_for(st: &AppState, mac: Mac, headers: &HeaderMap) -> Response {
    let site = st.site.load();
    let base = base_url(st, &site, headers);
    if let Some(host) = site.host_by_mac(&mac) {
        let Some(profile) = site.profiles.get(&host.profile) else {
            return (StatusCode::NOT_FOUND, "no profile\n").into_response();
        };
        if !host.install || !render::has_kickstart(profile) {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "host {} is not to be installed from a kickstart\n",
                    host.name
                ),
            )
                .into_response();
        }
        return match render::render_kickstart(&site, &base, host, profile, mac) {
            Ok(s) => text(s),
            Err(e) => render_failed(e),
        };
    }
    let store = st.events.clone();
    let key = mac.to_string();
    let matched = tokio::task::spawn_blocking(move || store.discovered_profile(&key))
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    if let Some(profile) = matched.and_then(|p| site.profiles.get(&p)) {
        if render::has_kickstart(profile) {
            let host = render::matched_host(profile, mac);
            return match render::render_kickstart(&site, &base, &host, profile, mac) {
                Ok(s) => text(s),
                Err(e) => render_failed(e),
            };
        }
    }
    (StatusCode::NOT_FOUND, format!("no host with MAC {mac}\n")).into_response()
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

/// Anaconda with `inst.ks.sendmac` sends `X-RHN-Provisioning-MAC-0: eth0 52:54:00:12:34:56`,
/// one header per interface; the first that names a known host decides.
pub fn macs_from_headers(headers: &HeaderMap) -> Vec<Mac> {
    let mut found: Vec<(u32, Mac)> = headers
        .iter()
        .filter_map(|(name, v)| {
            let n = name.as_str().strip_prefix("x-rhn-provisioning-mac-")?;
            let idx: u32 = n.parse().ok()?;
            let v = v.to_str().ok()?;
            let mac = v.split_whitespace().last()?.parse::<Mac>().ok()?;
            Some((idx, mac))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, m)| m).collect()
}

pub async fn kickstart_by_headers(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let macs = macs_from_headers(&headers);
    if macs.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "no X-RHN-Provisioning-MAC-N header: boot with inst.ks.sendmac or use /ks/MAC\n",
        )
            .into_response();
    }
    let site = st.site.load();
    let known = macs.iter().find(|m| site.host_by_mac(m).is_some()).copied();
    drop(site);
    kickstart_for(&st, known.unwrap_or(macs[0]), &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendmac_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "X-RHN-Provisioning-MAC-1",
            "eth1 52:54:00:00:00:02".parse().unwrap(),
        );
        h.insert(
            "X-RHN-Provisioning-MAC-0",
            "eth0 52:54:00:00:00:01".parse().unwrap(),
        );
        h.insert("X-RHN-Provisioning-MAC-2", "eth2 garbage".parse().unwrap());
        let macs = macs_from_headers(&h);
        assert_eq!(macs.len(), 2);
        assert_eq!(macs[0].to_string(), "52:54:00:00:00:01");
    }

    #[test]
    fn query_facts() {
        let f = facts_from_query(
            "mac=52-54-00-AA-BB-CC&manufacturer=QEMU&product=x%0Akernel+evil&platform=efi&x=1",
        )
        .unwrap();
        assert_eq!(f.mac.unwrap().to_string(), "52:54:00:aa:bb:cc");
        assert_eq!(f.manufacturer.as_deref(), Some("QEMU"));
        assert_eq!(f.product, None);
        assert_eq!(f.platform.as_deref(), Some("efi"));
        let f = facts_from_query("manufacturer=Dell+Inc.&product=PowerEdge%20R650&mac=").unwrap();
        assert_eq!(f.manufacturer.as_deref(), Some("Dell Inc."));
        assert_eq!(f.product.as_deref(), Some("PowerEdge R650"));
        assert_eq!(f.mac, None);
        // The last of a repeated key wins; a key may be encoded too.
        let f = facts_from_query("serial=a&%73erial=b").unwrap();
        assert_eq!(f.serial.as_deref(), Some("b"));
        assert!(facts_from_query("mac=zz").is_err());
        assert!(facts_from_query("platform=bios&&=&mac").is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_query_parses_or_refuses_without_panicking(q in "\\PC{0,200}") {
            let _ = facts_from_query(&q);
        }

        #[test]
        fn encoded_facts_come_back(
            manufacturer in "[A-Za-z0-9 .,()/+_-]{1,40}",
            serial in "[A-Za-z0-9]{1,20}",
        ) {
            let enc = |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
            let q = format!("serial={}&manufacturer={}", enc(&serial), enc(&manufacturer));
            let f = facts_from_query(&q).unwrap();
            proptest::prop_assert_eq!(f.serial.as_deref(), Some(serial.as_str()));
            proptest::prop_assert_eq!(f.manufacturer, clean_fact(&manufacturer));
        }
    }
}
