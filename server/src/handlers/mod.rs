//! The HTTP endpoints of the boot service: one handler per endpoint, the catalog behind an
//! `ArcSwap` so that a reload never blocks or drops a request in flight. The transport
//! (`pxeforge-httpd`) owns the connections (framing, keep-alive, sendfile); the axum `Router`
//! only routes.

pub mod events;
pub mod scripts;
pub mod state;

use crate::ratelimit::RateLimiter;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pxeforge_httpd::files;
pub use state::{AppState, MetricsWriter, Shared};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

pub fn router(state: AppState) -> Router {
    // The event store applies the limits of the catalog in force at each write, so that a
    // reload changes them at once (the store knows nothing of catalogs).
    let catalog = state.catalog.clone();
    state.events.set_limits_source(Arc::new(move || {
        crate::events::Limits::from_settings(&catalog.load().site.settings.install)
    }));
    let limiter = Arc::new(RateLimiter::default());
    let router = Router::new()
        .route("/boot.ipxe", get(scripts::bootstrap))
        .route("/ipxe", get(scripts::host_script))
        .route("/ks", get(scripts::kickstart_by_headers))
        .route("/ks/{mac}", get(scripts::kickstart))
        .route(
            "/events",
            axum::routing::post(events::post_event).route_layer(middleware::from_fn_with_state(
                (state.clone(), limiter),
                limit_events,
            )),
        )
        .route("/assets/{*path}", get(assets))
        .route("/tftp/{*path}", get(tftp_files))
        .route("/images/{recipe}/{profile}/{id}/{*file}", get(images))
        .route("/releases/{release}/{compose}/{*file}", get(releases))
        .route("/healthz", get(|| async { "ok\n" }));
    // The boot network gets the counters only where a site says so; the admin listener
    // always serves them.
    let router = if state.catalog.load().config.admin.metrics_on_boot_listener {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The per-source rate limit of `POST /events` (`install.events_per_minute`, read per request
/// so that a reload applies). It answers before anything else looks at the request: body,
/// token or validity.
async fn limit_events(
    State((st, limiter)): State<(AppState, Arc<RateLimiter>)>,
    req: Request,
    next: Next,
) -> Response {
    let per_minute = st.catalog.load().site.settings.install.events_per_minute;
    // The transport always sets the peer address; without one, every such request shares one
    // bucket rather than going unlimited.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match limiter.check(ip, per_minute, std::time::Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            st.metrics
                .events_rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(remote = %ip, per_minute, "event rate limited");
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, wait.as_secs().to_string())],
                format!("more than {per_minute} events a minute from this address\n"),
            )
                .into_response()
        }
    }
}

/// Counts and logs every request by its route pattern (bounded labels) and status.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let uri = req.uri().clone();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    st.metrics.request(&route, status);
    tracing::info!(
        target: "pxeforge::http",
        %method,
        path = %uri.path(),
        status,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

async fn assets(
    State(st): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    files::serve(&st.assets_dir, &path, &method, &headers)
}

async fn tftp_files(
    State(st): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    files::serve(&st.tftp_root, &path, &method, &headers)
}

async fn images(
    State(st): State<AppState>,
    axum::extract::Path((recipe, profile, id, file)): axum::extract::Path<(
        String,
        String,
        String,
        String,
    )>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    store_file(
        &st.state_dir.join("images"),
        &[&recipe, &profile, &id],
        &file,
        &method,
        &headers,
    )
}

/// Synced boot media: `/releases/<release>/<compose-id>/images/pxeboot/vmlinuz`, ...
async fn releases(
    State(st): State<AppState>,
    axum::extract::Path((release, compose, file)): axum::extract::Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let root = st.state_dir.join(pxeforge_releases::DIR);
    store_file(&root, &[&release, &compose], &file, &method, &headers)
}

/// A file of a published store item: `parts` (keys and item id, or `current`) are single path
/// components, `file` may have several; the server never leaves `root`.
fn store_file(
    root: &std::path::Path,
    parts: &[&str],
    file: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    for part in parts {
        if part.is_empty() || part.starts_with('.') || part.contains(['/', '\\', '\0']) {
            return (StatusCode::BAD_REQUEST, "bad store path\n").into_response();
        }
    }
    // `current` is a relative symlink to an item id inside the same directory, which
    // files::open_confined follows without leaving the store.
    let rel = format!("{}/{file}", parts.join("/"));
    files::serve(root, &rel, method, headers)
}

pub async fn metrics(State(st): State<AppState>) -> Response {
    let mut out = String::new();
    st.metrics.write_prometheus(&mut out);
    for w in st.extra_metrics.iter() {
        w(&mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
