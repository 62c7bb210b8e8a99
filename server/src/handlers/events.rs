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
use serde::Deserialize;
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

/// Whether `token` may post `status` now, and for which host: the same decision that is
/// applied afterwards, taken on the current record without changing it.
async fn check(
    st: &AppState,
    token: String,
    status: String,
    remote: SocketAddr,
) -> Result<String, Refused> {
    run_event_decision(st, token, status, remote, false).await
}

/// Applies what `status` does to the host's state (`finished` → installed, `failed` →
/// failed). Refused when no live build has this token (or the event is not the one that ended
/// the last build, sent again).
async fn authorize(
    st: &AppState,
    token: String,
    status: String,
    remote: SocketAddr,
) -> Result<String, Refused> {
    run_event_decision(st, token, status, remote, true).await
}

async fn run_event_decision(
    st: &AppState,
    token: String,
    status: String,
    remote: SocketAddr,
    apply: bool,
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
        let decide = |r: &crate::lifecycle::Record| {
            lifecycle::on_event(r, &token, &status, &source, now, &policy, &mut new_token)
        };
        if !apply {
            return Ok(decide(&record).is_some().then_some(record.host));
        }
        let accepted = build.decide(&record.host, now, |r| match decide(r) {
            None => (false, None),
            Some((rec, _)) if rec == *r => (true, None),
            Some(change) => (true, Some(change)),
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
    // The event is stored before the state changes, and the change is answered only once both
    // are done: a server killed in between leaves the event stored and the build where it was,
    // and the installer's retry (of an event already applied, too) is answered the same.
    let refused = |r: Refused| match r {
        Refused::Token => reject(StatusCode::FORBIDDEN, "no valid build token".into()),
        Refused::Unavailable(e) => {
            tracing::error!(error = %e, "build state unavailable: event refused");
            (StatusCode::SERVICE_UNAVAILABLE, "build state unavailable\n").into_response()
        }
    };
    let host = match check(&st, token.clone(), ev.status.clone(), remote).await {
        Ok(host) => Some(host),
        Err(r) => return refused(r),
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
    let status = event.status.clone();
    let store = st.events.clone();
    let stored = tokio::task::spawn_blocking(move || store.record(&event)).await;
    let id = match stored {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not store event");
            return (StatusCode::SERVICE_UNAVAILABLE, "event store unavailable\n").into_response();
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Err(r) = authorize(&st, token, status, remote).await {
        // The record changed between the check and now (the token expired, an operator
        // re-armed the host): the event is kept, the change is not made.
        tracing::warn!(id, "event stored, but its build changed meanwhile: refused");
        return refused(r);
    }
    st.metrics.events_received.fetch_add(1, Ordering::Relaxed);
    (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response()
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
