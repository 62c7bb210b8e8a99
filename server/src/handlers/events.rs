//! `POST /events` from installers and `GET /api/hosts`.

use super::state::AppState;
use crate::events::Event;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
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

pub async fn post_event(
    State(st): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
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
    let host = st
        .catalog
        .load()
        .site
        .host_by_mac(&ev.mac)
        .map(|h| h.name.clone());
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
    tracing::info!(mac = %event.mac, host = ?host, stage = %event.stage, status = %event.status, message = %event.message, "install event");
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

pub async fn api_hosts(State(st): State<AppState>) -> Response {
    let cat = st.catalog.load_full();
    let store = st.events.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<_, crate::events::EventsError> {
        let mut last = store.last_by_mac()?;
        let site = &cat.site;
        let hosts: Vec<HostView> = site
            .hosts
            .iter()
            .map(|h| {
                let last_event = h
                    .macs
                    .iter()
                    .filter_map(|m| last.get(&m.to_string()))
                    .max_by_key(|e| e.id)
                    .cloned();
                HostView {
                    name: h.name.clone(),
                    macs: h.macs.iter().map(|m| m.to_string()).collect(),
                    profile: h.profile.clone(),
                    install: h.install,
                    last_event,
                }
            })
            .collect();
        let discovered: Vec<DiscoveredView> = store
            .discovered()?
            .into_iter()
            .filter(|d| {
                d.mac
                    .parse::<Mac>()
                    .map(|m| site.host_by_mac(&m).is_none())
                    .unwrap_or(true)
            })
            .map(|d| DiscoveredView {
                last_event: last.remove(&d.mac),
                facts: serde_json::from_str(&d.facts).unwrap_or(serde_json::Value::Null),
                mac: d.mac,
                profile: d.profile,
                seen_at: d.seen_at,
            })
            .collect();
        Ok(serde_json::json!({ "hosts": hosts, "discovered": discovered }))
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
