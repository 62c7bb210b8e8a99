//! The admin API: the inventory with its build state, the events, the discovered machines, and
//! every state change an operator makes (arm, cancel, approve, adopt, reject, pause). It has a
//! listener of its own, apart from the boot network, and every request carries the bearer token
//! of `admin.token_file`.

pub mod listener;
pub mod token;

use crate::buildstate::{StateError, TransitionRow};
use crate::catalog::Catalog;
use crate::events::{Event, EventsError};
use crate::handlers::AppState;
use crate::lifecycle;
use crate::select;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pxeforge_site::{Host, Mac};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

pub use listener::{serve, AdminPeer};

/// Page sizes of `/api/hosts` and `/api/events`.
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 1000;

pub fn router(state: AppState, token: Arc<String>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/hosts", get(hosts))
        .route("/api/hosts/{name}", get(host_one))
        .route("/api/hosts/{name}/cancel", post(cancel))
        .route("/api/events", get(events))
        .route("/api/reinstall", post(reinstall))
        .route("/api/discovered/{mac}/approve", post(approve))
        .route("/api/discovered/{mac}/adopt", post(adopt))
        .route("/api/discovered/{mac}/reject", post(reject))
        .route("/api/pause", post(pause))
        .route("/api/resume", post(resume))
        .route("/metrics", get(crate::handlers::metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .layer(middleware::from_fn_with_state(token, authenticate))
        .with_state(state)
}

/// Every request needs `Authorization: Bearer TOKEN`, compared in constant time.
async fn authenticate(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    match given {
        Some(t) if lifecycle::token_matches(Some(token.as_str()), &t) => next.run(req).await,
        _ => {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<AdminPeer>>();
            tracing::warn!(peer = ?peer.map(|p| p.0 .0), path = %pxeforge_httpd::log_safe(req.uri().path()), "admin API: missing or wrong token");
            let mut resp =
                error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

/// An API error: its status and a message, answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> ApiError {
    ApiError {
        code,
        message: message.to_string(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin API: store unavailable");
    error(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// Who made a change, as the transitions record it: the admin peer and, when the command line
/// said so, the operator's user name (cleaned: it reaches the logs).
fn source(peer: &AdminPeer, headers: &HeaderMap) -> String {
    let user = headers
        .get("x-pxeforge-operator")
        .and_then(|v| v.to_str().ok())
        .and_then(select::clean_fact);
    match user {
        Some(u) => format!("admin API from {} by {u}", peer.0.ip()),
        None => format!("admin API from {}", peer.0.ip()),
    }
}

/// Runs store work off the async threads and answers with its JSON, or its error; a panic
/// in it is a 500.
async fn answer<T: Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin API task failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn state_err(e: StateError) -> ApiError {
    match e {
        StateError::Refused(why) => error(StatusCode::CONFLICT, why),
        other => unavailable(other),
    }
}

fn events_err(e: EventsError) -> ApiError {
    unavailable(e)
}

/// A host as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub name: String,
    pub macs: Vec<String>,
    pub profile: String,
    pub install: bool,
    /// `site` (hosts/*.toml) or `approved` (by an operator, or a profile's `auto_install`).
    pub source: &'static str,
    pub state: Option<&'static str>,
    pub since: Option<i64>,
    /// The boot media its build is pinned to (`<release>/<compose-id>`), while armed or
    /// installing from synced media.
    pub media: Option<String>,
    pub last_event: Option<Event>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiscoveredView {
    pub mac: String,
    /// The profile a match rule suggests.
    pub profile: Option<String>,
    /// `discovered` or `rejected`.
    pub status: &'static str,
    pub facts: serde_json::Value,
    pub seen_at: Option<i64>,
    pub last_event: Option<Event>,
}

/// Inventory hosts, then approved machines not (yet) in the inventory.
fn all_hosts<'a>(cat: &'a Catalog, claims: &'a select::Claims) -> Vec<(&'a Host, &'static str)> {
    let mut out: Vec<(&Host, &'static str)> = cat.site.hosts.iter().map(|h| (h, "site")).collect();
    let mut approved: Vec<&Host> = claims
        .approved
        .iter()
        .filter(|(mac, h)| {
            cat.site.host_by_mac(mac).is_none() && cat.site.host_by_name(&h.name).is_none()
        })
        .map(|(_, h)| h)
        .collect();
    approved.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(approved.into_iter().map(|h| (h, "approved")));
    out
}

/// Whether `h` has a build state: installed from a kickstart (the rest have no install to
/// track, and show none).
fn tracked(cat: &Catalog, h: &Host) -> bool {
    cat.site
        .profiles
        .get(&h.profile)
        .is_some_and(|p| select::tracked(h, p))
}

fn host_view(
    h: &Host,
    source: &'static str,
    states: &States,
    last: &HashMap<String, Event>,
    tracked: bool,
) -> HostView {
    let st = states.get(&h.name).filter(|_| tracked);
    HostView {
        name: h.name.clone(),
        macs: h.macs.iter().map(|m| m.to_string()).collect(),
        profile: h.profile.clone(),
        install: h.install,
        source,
        state: st.map(|(s, _, _)| s.as_str()),
        since: st.map(|(_, t, _)| *t),
        media: st.and_then(|(_, _, m)| m.clone()),
        last_event: h
            .macs
            .iter()
            .filter_map(|m| last.get(&m.to_string()))
            .max_by_key(|e| e.id)
            .cloned(),
    }
}

/// Build state by host name: state, since when, pinned media.
type States = HashMap<String, (lifecycle::State, i64, Option<String>)>;

fn states_of(st: &AppState) -> Result<States, ApiError> {
    let bs = st.build.state().map_err(unavailable)?;
    let list = bs.list_since().map_err(state_err)?;
    Ok(list
        .into_iter()
        .map(|(r, since)| (r.host, (r.state, since, r.media)))
        .collect())
}

#[derive(Debug, Serialize)]
struct Status {
    paused: bool,
    installing: u32,
    max_installing: u32,
    stuck: u32,
    hosts: usize,
    discovered: u64,
}

async fn status(State(st): State<AppState>) -> Response {
    answer(move || {
        let cat = st.catalog.load_full();
        let bs = st.build.state().map_err(unavailable)?;
        let install = &cat.site.settings.install;
        let stuck = stuck_hosts(&st, &cat)?.len();
        let claims = st.build.claims();
        let inventory = inventory_macs(&cat, &claims);
        let (_, discovered) = st
            .events
            .discovered_page(&inventory, 0, 0)
            .map_err(events_err)?;
        Ok(Status {
            paused: st.build.paused(),
            installing: bs.count_installing().map_err(state_err)?,
            max_installing: install.max_installing,
            stuck: u32::try_from(stuck).unwrap_or(u32::MAX),
            hosts: all_hosts(&cat, &claims).len(),
            discovered,
        })
    })
    .await
}

/// Hosts `installing` for longer than `install.stuck_after_secs`.
pub fn stuck_hosts(st: &AppState, cat: &Catalog) -> Result<Vec<(String, i64)>, ApiError> {
    let after = cat.site.settings.install.stuck_after_secs;
    if after == 0 {
        return Ok(Vec::new());
    }
    let bs = st.build.state().map_err(unavailable)?;
    let before = crate::events::now().saturating_sub(i64::try_from(after).unwrap_or(i64::MAX));
    bs.installing_since_before(before).map_err(state_err)
}

/// MACs of every host (inventory and approved): they are not listed as discovered.
fn inventory_macs(cat: &Catalog, claims: &select::Claims) -> Vec<String> {
    cat.site
        .hosts
        .iter()
        .flat_map(|h| h.macs.iter())
        .chain(claims.approved.keys())
        .map(|m| m.to_string())
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct HostsQuery {
    limit: Option<u32>,
    offset: Option<u64>,
    /// A host's name or one of its MACs, or a discovered machine's MAC.
    host: Option<String>,
    /// A build state, or `discovered` / `rejected`.
    state: Option<String>,
}

#[derive(Debug, Serialize)]
struct HostsPage {
    hosts: Vec<HostView>,
    discovered: Vec<DiscoveredView>,
    total_hosts: u64,
    total_discovered: u64,
    limit: u32,
    offset: u64,
}

const STATE_FILTERS: [&str; 6] = [
    "armed",
    "installing",
    "installed",
    "failed",
    "discovered",
    "rejected",
];

async fn hosts(State(st): State<AppState>, Query(q): Query<HostsQuery>) -> Response {
    if let Some(s) = q.state.as_deref() {
        if !STATE_FILTERS.contains(&s) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("state {s:?}: one of {}", STATE_FILTERS.join(", ")),
            )
            .into_response();
        }
    }
    answer(move || hosts_page(&st, q)).await
}

fn discovered_view(
    d: crate::events::Discovered,
    status: &'static str,
    last: &mut HashMap<String, Event>,
) -> DiscoveredView {
    DiscoveredView {
        last_event: last.remove(&d.mac),
        facts: serde_json::from_str(&d.facts).unwrap_or(serde_json::Value::Null),
        mac: d.mac,
        profile: d.profile,
        status,
        seen_at: Some(d.seen_at),
    }
}

fn hosts_page(st: &AppState, q: HostsQuery) -> Result<HostsPage, ApiError> {
    let cat = st.catalog.load_full();
    let claims = st.build.claims();
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).min(PAGE_MAX);
    let offset = q.offset.unwrap_or(0);
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    let states = states_of(st)?;
    let wanted = q.host.as_deref().filter(|h| !h.is_empty());
    let wanted_mac = wanted.and_then(|h| h.parse::<Mac>().ok());
    let filter = q.state.as_deref();
    let host_states = filter.is_none_or(|f| !matches!(f, "discovered" | "rejected"));
    let selected: Vec<(&Host, &'static str)> = all_hosts(&cat, &claims)
        .into_iter()
        .filter(|_| host_states)
        .filter(|(h, _)| match wanted {
            None => true,
            Some(name) => h.name == name || wanted_mac.is_some_and(|m| h.macs.contains(&m)),
        })
        .filter(|(h, _)| match filter {
            None => true,
            Some(f) => {
                tracked(&cat, h) && states.get(&h.name).is_some_and(|(s, _, _)| s.as_str() == f)
            }
        })
        .collect();
    let page: Vec<(&Host, &'static str)> = selected
        .iter()
        .skip(skip)
        .take(limit as usize)
        .copied()
        .collect();
    let inventory = inventory_macs(&cat, &claims);
    let discovered_states = filter.is_none_or(|f| matches!(f, "discovered" | "rejected"));
    let status_of = |mac: &str| match mac.parse::<Mac>() {
        Ok(m) if claims.rejected.contains(&m) => "rejected",
        _ => "discovered",
    };
    let (found, total_discovered): (Vec<crate::events::Discovered>, u64) = if !discovered_states {
        (Vec::new(), 0)
    } else if let Some(name) = wanted {
        match wanted_mac {
            Some(m) if !inventory.contains(&m.to_string()) => {
                let one = st
                    .events
                    .discovered_one(&m.to_string())
                    .map_err(events_err)?;
                let total = u64::from(one.is_some());
                (
                    one.filter(|_| offset == 0 && limit > 0)
                        .into_iter()
                        .collect(),
                    total,
                )
            }
            _ => {
                let _ = name;
                (Vec::new(), 0)
            }
        }
    } else if filter.is_none() {
        st.events
            .discovered_page(&inventory, limit, offset)
            .map_err(events_err)?
    } else {
        // One status: the discovered machines are paged by MAC in SQL, the rejected ones are
        // few (an operator named each).
        let rejected: Vec<String> = claims.rejected.iter().map(|m| m.to_string()).collect();
        if filter == Some("discovered") {
            let mut exclude = inventory.clone();
            exclude.extend(rejected);
            st.events
                .discovered_page(&exclude, limit, offset)
                .map_err(events_err)?
        } else {
            let mut all = Vec::new();
            for mac in &rejected {
                match st.events.discovered_one(mac).map_err(events_err)? {
                    Some(d) => all.push(d),
                    None => all.push(crate::events::Discovered {
                        mac: mac.clone(),
                        profile: None,
                        facts: "null".into(),
                        seen_at: 0,
                    }),
                }
            }
            all.sort_by(|a, b| a.mac.cmp(&b.mac));
            let total = all.len() as u64;
            (
                all.into_iter().skip(skip).take(limit as usize).collect(),
                total,
            )
        }
    };
    let macs: Vec<String> = page
        .iter()
        .flat_map(|(h, _)| h.macs.iter().map(|m| m.to_string()))
        .chain(found.iter().map(|d| d.mac.clone()))
        .collect();
    let mut last = st.events.last_for_macs(&macs).map_err(events_err)?;
    let hosts = page
        .iter()
        .map(|(h, src)| host_view(h, src, &states, &last, tracked(&cat, h)))
        .collect();
    let discovered = found
        .into_iter()
        .map(|d| {
            let status = status_of(&d.mac);
            discovered_view(d, status, &mut last)
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
}

#[derive(Debug, Serialize)]
struct HostDetail {
    host: Option<HostView>,
    discovered: Option<DiscoveredView>,
    history: Vec<TransitionRow>,
    events: Vec<Event>,
}

/// `GET /api/hosts/NAME|MAC`: a host (inventory or approved) with its history and last events,
/// or a discovered machine with its events.
async fn host_one(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    answer(move || {
        let cat = st.catalog.load_full();
        let claims = st.build.claims();
        let mac = name.parse::<Mac>().ok();
        let found = all_hosts(&cat, &claims)
            .into_iter()
            .find(|(h, _)| h.name == name || mac.is_some_and(|m| h.macs.contains(&m)));
        if let Some((h, src)) = found {
            let states = states_of(&st)?;
            let mut events = Vec::new();
            for m in &h.macs {
                events.extend(st.events.for_mac(&m.to_string(), 50).map_err(events_err)?);
            }
            events.sort_by_key(|e| std::cmp::Reverse(e.id));
            events.truncate(50);
            let last: HashMap<String, Event> = events
                .first()
                .map(|e| (e.mac.clone(), e.clone()))
                .into_iter()
                .collect();
            let history = st
                .build
                .state()
                .map_err(unavailable)?
                .history(&h.name, 50)
                .map_err(state_err)?;
            return Ok(HostDetail {
                host: Some(host_view(h, src, &states, &last, tracked(&cat, h))),
                discovered: None,
                history,
                events,
            });
        }
        let Some(mac) = mac else {
            return Err(error(StatusCode::NOT_FOUND, format!("no host {name:?}")));
        };
        let key = mac.to_string();
        let events = st.events.for_mac(&key, 50).map_err(events_err)?;
        let seen = st.events.discovered_one(&key).map_err(events_err)?;
        let rejected = claims.rejected.contains(&mac);
        if seen.is_none() && events.is_empty() && !rejected {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("no host or discovered machine with MAC {mac}"),
            ));
        }
        let status = if rejected { "rejected" } else { "discovered" };
        let mut last = HashMap::new();
        let discovered = seen.map(|d| discovered_view(d, status, &mut last));
        Ok(HostDetail {
            host: None,
            discovered,
            history: Vec::new(),
            events,
        })
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    host: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/events?host=&after=&limit=`: oldest first from `after`.
async fn events(State(st): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    answer(move || {
        let limit = q.limit.unwrap_or(PAGE_DEFAULT).min(PAGE_MAX);
        let after = q.after.unwrap_or(0);
        let macs: Option<Vec<String>> = match q.host.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(h) => {
                let cat = st.catalog.load_full();
                let claims = st.build.claims();
                let mac = h.parse::<Mac>().ok();
                let host = select::host_by_name(&cat.site, &claims, h);
                match (host, mac) {
                    (Some(host), _) => Some(host.macs.iter().map(|m| m.to_string()).collect()),
                    (None, Some(m)) => Some(vec![m.to_string()]),
                    (None, None) => {
                        return Err(error(StatusCode::NOT_FOUND, format!("no host {h:?}")))
                    }
                }
            }
        };
        let events = st
            .events
            .after(macs.as_deref(), after, limit)
            .map_err(events_err)?;
        let last_id = events.last().map_or(after, |e| e.id);
        Ok(serde_json::json!({ "events": events, "last_id": last_id }))
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReinstallBody {
    hosts: Vec<String>,
    profile: Option<String>,
    all: bool,
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct Skipped {
    host: String,
    why: String,
}

/// `POST /api/reinstall`: arm hosts by name, by profile, or all of them.
async fn reinstall(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
    body: Result<Json<ReinstallBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let source = source(&peer, &headers);
    answer(move || {
        let cat = st.catalog.load_full();
        let claims = st.build.claims();
        let plan = crate::operate::plan_reinstall(
            &cat.site,
            &claims,
            &body.hosts,
            body.profile.as_deref(),
            body.all,
        )
        .map_err(|e| match e {
            crate::operate::PlanError::UnknownHost(_) => error(StatusCode::NOT_FOUND, e),
            other => error(StatusCode::BAD_REQUEST, other),
        })?;
        let mut skipped: Vec<Skipped> = plan
            .skipped
            .into_iter()
            .map(|(host, why)| Skipped { host, why })
            .collect();
        if body.dry_run {
            return Ok(
                serde_json::json!({ "armed": plan.arm, "skipped": skipped, "dry_run": true }),
            );
        }
        let mut armed = Vec::new();
        let bs = st.build.state().map_err(unavailable)?;
        for name in plan.arm {
            match crate::operate::arm(bs, &name, &source) {
                Ok(_) => armed.push(name),
                Err(e) => skipped.push(Skipped {
                    host: name,
                    why: e.to_string(),
                }),
            }
        }
        Ok(serde_json::json!({ "armed": armed, "skipped": skipped, "dry_run": false }))
    })
    .await
}

/// `POST /api/hosts/NAME/cancel`.
async fn cancel(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let source = source(&peer, &headers);
    answer(move || {
        let cat = st.catalog.load_full();
        let claims = st.build.claims();
        let Some(host) = select::host_by_name(&cat.site, &claims, &name) else {
            return Err(error(StatusCode::NOT_FOUND, format!("no host {name:?}")));
        };
        let now = crate::events::now();
        let done = st
            .build
            .decide(&host.name, now, |r| match lifecycle::cancel(r, &source) {
                Some((rec, t)) => (true, Some((rec, vec![t]))),
                None => (false, None),
            })
            .map_err(state_err)?;
        match done {
            Some(true) => Ok(serde_json::json!({ "host": host.name, "state": "installed" })),
            Some(false) => Err(error(
                StatusCode::CONFLICT,
                format!(
                    "{} is not armed or installing: nothing to cancel",
                    host.name
                ),
            )),
            None => Err(error(
                StatusCode::CONFLICT,
                format!("{} has no build-state record", host.name),
            )),
        }
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApproveBody {
    name: Option<String>,
    profile: Option<String>,
}

async fn approve(
    st: State<AppState>,
    peer: axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
    mac: Path<String>,
    body: Option<Json<ApproveBody>>,
) -> Response {
    claim(st, peer, headers, mac, body, true).await
}

async fn adopt(
    st: State<AppState>,
    peer: axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
    mac: Path<String>,
    body: Option<Json<ApproveBody>>,
) -> Response {
    claim(st, peer, headers, mac, body, false).await
}

/// Approval (`install`) or adoption of a discovered machine as a host.
async fn claim(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Option<Json<ApproveBody>>,
    install: bool,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let source = source(&peer, &headers);
    answer(move || {
        let mac: Mac = mac
            .parse()
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{mac:?}: {e}")))?;
        let cat = st.catalog.load_full();
        let claims = st.build.claims();
        let seen = st
            .events
            .discovered_one(&mac.to_string())
            .map_err(events_err)?;
        let plan = crate::operate::plan_claim(
            &cat.site,
            &claims,
            mac,
            seen.as_ref(),
            body.name.as_deref(),
            body.profile.as_deref(),
            install,
        )
        .map_err(|e| match e {
            crate::operate::PlanError::NeverSeen(_) => error(StatusCode::NOT_FOUND, e),
            crate::operate::PlanError::Taken(_) => error(StatusCode::CONFLICT, e),
            other => error(StatusCode::BAD_REQUEST, other),
        })?;
        st.build
            .approve(
                &mac.to_string(),
                &plan.name,
                &plan.profile,
                install,
                &source,
            )
            .map_err(state_err)?;
        let claims = st.build.claims();
        let states = states_of(&st)?;
        let host = claims
            .approved
            .get(&mac)
            .map(|h| host_view(h, "approved", &states, &HashMap::new(), tracked(&cat, h)));
        Ok(serde_json::json!({ "host": host }))
    })
    .await
}

async fn reject(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    let source = source(&peer, &headers);
    answer(move || {
        let mac: Mac = mac
            .parse()
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{mac:?}: {e}")))?;
        let cat = st.catalog.load_full();
        if let Some(h) = cat.site.host_by_mac(&mac) {
            return Err(error(
                StatusCode::CONFLICT,
                format!(
                    "{mac} is host {} of the inventory: remove it from hosts/ instead",
                    h.name
                ),
            ));
        }
        st.build
            .reject(&mac.to_string(), &source)
            .map_err(state_err)?;
        Ok(serde_json::json!({ "mac": mac.to_string(), "status": "rejected" }))
    })
    .await
}

async fn pause(
    st: State<AppState>,
    peer: axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
) -> Response {
    set_paused(st, peer, headers, true).await
}

async fn resume(
    st: State<AppState>,
    peer: axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
) -> Response {
    set_paused(st, peer, headers, false).await
}

async fn set_paused(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<AdminPeer>,
    headers: HeaderMap,
    paused: bool,
) -> Response {
    let source = source(&peer, &headers);
    answer(move || {
        st.build.set_paused(paused, &source).map_err(state_err)?;
        Ok(serde_json::json!({ "paused": st.build.paused() }))
    })
    .await
}
