//! `POST /events` from installers and `GET /api/hosts`.

use super::scripts::token_from_query;
use super::state::AppState;
use crate::buildstate::{new_token, StateError};
use crate::events::Event;
use crate::lifecycle;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pxeforge_site::Mac;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

pub const STATUSES: &[&str] = &["started", "progress", "finished", "failed", "info"];

/// The body installers send; iPXE can only send form fields, so both encodings are accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    pub mac: String,
    pub stage: String,
    pub status: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ValidEvent {
    pub mac: Mac,
    pub stage: String,
    pub status: String,
    pub message: String,
}

fn word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Pure validation of a decoded body.
pub fn validate(b: EventBody) -> Result<ValidEvent, String> {
    let mac = b.mac.parse::<Mac>().map_err(|e| e.to_string())?;
    if !word(&b.stage) {
        return Err("stage must be 1-32 characters of letters, digits, '-', '_', '.'".into());
    }
    if !STATUSES.contains(&b.status.as_str()) {
        return Err(format!("status must be one of {}", STATUSES.join(", ")));
    }
    if b.message.len() > 4096 {
        return Err("message is longer than 4096 bytes".into());
    }
    Ok(ValidEvent {
        mac,
        stage: b.stage,
        status: b.status,
        message: b
            .message
            .chars()
            .filter(|c| !c.is_control() || *c == '\n')
            .collect(),
    })
}

pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<EventBody, String> {
    let ct = content_type
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        // The same body type as JSON, so both encodings refuse unknown and missing fields.
        serde_urlencoded::from_bytes(body).map_err(|e| format!("malformed form body: {e}"))
    } else {
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))
    }
}

/// `Authorization: Bearer TOKEN`.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

enum Refused {
    Token,
    Unavailable(String),
}

/// The host whose build `token` belongs to, after applying what `status` does to its state
/// (`finished` → installed, `failed` → failed). Refused when no live build has this token.
async fn authorize(
    st: &AppState,
    token: String,
    status: String,
    remote: SocketAddr,
) -> Result<String, Refused> {
    let cat = st.catalog.load_full();
    let policy = super::scripts::policy(&cat);
    let build = st.build.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<Option<String>, StateError> {
        let bs = build
            .state()
            .map_err(|why| StateError::Unreadable(why.to_string()))?;
        let Some(record) = bs.by_token(&token)? else {
            return Ok(None);
        };
        let source = remote.ip().to_string();
        let now = crate::events::now();
        let accepted = build.decide(&record.host, now, |r| {
            match lifecycle::on_event(r, &token, &status, &source, now, &policy, &mut new_token) {
                None => (false, None),
                Some((rec, _)) if rec == *r => (true, None),
                Some(change) => (true, Some(change)),
            }
        })?;
        Ok((accepted == Some(true)).then_some(record.host))
    })
    .await;
    match res {
        Ok(Ok(Some(host))) => Ok(host),
        Ok(Ok(None)) => Err(Refused::Token),
        Ok(Err(e)) => Err(Refused::Unavailable(e.to_string())),
        Err(e) => Err(Refused::Unavailable(e.to_string())),
    }
}

pub async fn post_event(
    State(st): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = st.catalog.load().site.settings.server.max_event_bytes;
    let reject = |code: StatusCode, msg: String| {
        st.metrics.events_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%remote, %msg, "event refused");
        (code, format!("{msg}\n")).into_response()
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("event body over {limit} bytes"),
        );
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("event body over {limit} bytes"),
            )
        }
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ev = match decode(ct, &bytes).and_then(validate) {
        Ok(e) => e,
        Err(e) => return reject(StatusCode::BAD_REQUEST, e),
    };
    // Every status needs the build's token, as a bearer token or in the URL the kickstart was
    // given; it is not bound to an address (the installer's changes with a static network).
    let Some(token) = bearer_token(&headers).or_else(|| token_from_query(q.as_deref())) else {
        return reject(StatusCode::FORBIDDEN, "no build token".into());
    };
    let host = match authorize(&st, token, ev.status.clone(), remote).await {
        Ok(host) => Some(host),
        Err(Refused::Token) => {
            return reject(StatusCode::FORBIDDEN, "no valid build token".into());
        }
        Err(Refused::Unavailable(e)) => {
            tracing::error!(error = %e, "build state unavailable: event refused");
            return (StatusCode::SERVICE_UNAVAILABLE, "build state unavailable\n").into_response();
        }
    };
    let event = Event {
        id: 0,
        mac: ev.mac.to_string(),
        host: host.clone(),
        stage: ev.stage,
        status: ev.status,
        message: ev.message,
        at: crate::events::now(),
        remote: remote.ip().to_string(),
    };
    tracing::info!(mac = %event.mac, host = ?host, stage = %event.stage, status = %event.status, message = &*pxeforge_httpd::log_safe(&event.message), "install event");
    let store = st.events.clone();
    let stored = tokio::task::spawn_blocking(move || store.record(&event)).await;
    match stored {
        Ok(Ok(id)) => {
            st.metrics.events_received.fetch_add(1, Ordering::Relaxed);
            (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not store event");
            (StatusCode::SERVICE_UNAVAILABLE, "event store unavailable\n").into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Serialize)]
struct HostView {
    name: String,
    macs: Vec<String>,
    profile: String,
    install: bool,
    last_event: Option<Event>,
}

#[derive(Serialize)]
struct DiscoveredView {
    mac: String,
    profile: Option<String>,
    facts: serde_json::Value,
    seen_at: i64,
    last_event: Option<Event>,
}

/// One page of `/api/hosts`: inventory hosts and discovered machines, paged separately.
#[derive(Serialize)]
struct HostsPage {
    hosts: Vec<HostView>,
    discovered: Vec<DiscoveredView>,
    total_hosts: u64,
    total_discovered: u64,
    limit: u32,
    offset: u64,
}

/// `?limit=N&offset=M&host=NAME|MAC`.
#[derive(Debug, Deserialize)]
pub struct HostsQuery {
    limit: Option<u32>,
    offset: Option<u64>,
    /// An inventory host's name, or a MAC: the host that owns it, or the discovered machine.
    host: Option<String>,
}

pub const HOSTS_PAGE_DEFAULT: u32 = 100;
pub const HOSTS_PAGE_MAX: u32 = 1000;

pub async fn api_hosts(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<HostsQuery>,
) -> Response {
    let cat = st.catalog.load_full();
    let store = st.events.clone();
    let limit = q.limit.unwrap_or(HOSTS_PAGE_DEFAULT).min(HOSTS_PAGE_MAX);
    let offset = q.offset.unwrap_or(0);
    let res = tokio::task::spawn_blocking(move || -> Result<_, crate::events::EventsError> {
        let site = &cat.site;
        // `?host=` with nothing after it selects nothing in particular: the whole list.
        let wanted = q.host.as_deref().filter(|h| !h.is_empty());
        let wanted_mac = wanted.and_then(|h| h.parse::<Mac>().ok());
        let selected: Vec<&pxeforge_site::Host> = site
            .hosts
            .iter()
            .filter(|h| match wanted {
                None => true,
                Some(name) => h.name == name || wanted_mac.is_some_and(|m| h.macs.contains(&m)),
            })
            .collect();
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let page: Vec<&pxeforge_site::Host> = selected
            .iter()
            .skip(skip)
            .take(limit as usize)
            .copied()
            .collect();
        // Discovered machines whose MAC has since joined the inventory are shown as hosts.
        let (discovered, total_discovered) = match (wanted, wanted_mac) {
            (None, _) => {
                let inventory: Vec<String> = site
                    .hosts
                    .iter()
                    .flat_map(|h| h.macs.iter().map(|m| m.to_string()))
                    .collect();
                store.discovered_page(&inventory, limit, offset)?
            }
            (Some(_), Some(m)) if site.host_by_mac(&m).is_none() => {
                let one = store.discovered_one(&m.to_string())?;
                let total = u64::from(one.is_some());
                let shown = one.filter(|_| offset == 0 && limit > 0);
                (shown.into_iter().collect(), total)
            }
            (Some(_), _) => (Vec::new(), 0),
        };
        let macs: Vec<String> = page
            .iter()
            .flat_map(|h| h.macs.iter().map(|m| m.to_string()))
            .chain(discovered.iter().map(|d| d.mac.clone()))
            .collect();
        let mut last = store.last_for_macs(&macs)?;
        let hosts = page
            .iter()
            .map(|h| HostView {
                name: h.name.clone(),
                macs: h.macs.iter().map(|m| m.to_string()).collect(),
                profile: h.profile.clone(),
                install: h.install,
                last_event: h
                    .macs
                    .iter()
                    .filter_map(|m| last.get(&m.to_string()))
                    .max_by_key(|e| e.id)
                    .cloned(),
            })
            .collect();
        let discovered = discovered
            .into_iter()
            .map(|d| DiscoveredView {
                last_event: last.remove(&d.mac),
                facts: serde_json::from_str(&d.facts).unwrap_or(serde_json::Value::Null),
                mac: d.mac,
                profile: d.profile,
                seen_at: d.seen_at,
            })
            .collect();
        Ok(HostsPage {
            hosts,
            discovered,
            total_hosts: selected.len() as u64,
            total_discovered,
            limit,
            offset,
        })
    })
    .await;
    match res {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "event store");
            (StatusCode::SERVICE_UNAVAILABLE, "event store unavailable\n").into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_and_form_bodies() {
        let j = decode(
            Some("application/json"),
            br#"{"mac":"52:54:00:00:00:01","stage":"post","status":"finished"}"#,
        )
        .unwrap();
        assert_eq!(validate(j).unwrap().status, "finished");
        let f = decode(
            Some("application/x-www-form-urlencoded"),
            b"mac=52-54-00-00-00-01&stage=pre&status=started&message=hello+world%21",
        )
        .unwrap();
        let v = validate(f).unwrap();
        assert_eq!(v.message, "hello world!");
        assert!(decode(None, b"{not json").is_err());
        assert!(decode(
            None,
            br#"{"mac":"x","stage":"a","status":"started","extra":1}"#
        )
        .is_err());
        let bad = decode(
            None,
            br#"{"mac":"52:54:00:00:00:01","stage":"a","status":"exploded"}"#,
        )
        .unwrap();
        assert!(validate(bad).is_err());
        let bad = decode(
            None,
            br#"{"mac":"52:54:00:00:00:01","stage":"a b","status":"started"}"#,
        )
        .unwrap();
        assert!(validate(bad).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), form in any::<bool>()) {
            let ct = if form { "application/x-www-form-urlencoded" } else { "application/json" };
            if let Ok(b) = decode(Some(ct), &body) {
                let _ = validate(b);
            }
        }
    }
}
