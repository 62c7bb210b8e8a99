//! What every handler sees: the current catalog, the stores, the counters.

use crate::catalog::Catalog;
use crate::events::EventStore;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use axum::http::{header, HeaderMap};
use std::path::PathBuf;
use std::sync::Arc;

/// Something else that has metrics to show at `/metrics` (TFTP, DHCP).
pub type MetricsWriter = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What every handler sees. axum clones the state for each request, so it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub events: Arc<EventStore>,
    /// Host build state (armed, installing, installed, failed) and the build tokens.
    pub build: Arc<crate::buildstate::Store>,
    pub metrics: Arc<Metrics>,
    /// Resolved at startup: the directories a running server serves stay fixed across reloads.
    pub assets_dir: PathBuf,
    pub tftp_root: PathBuf,
    pub state_dir: PathBuf,
    pub extra_metrics: Arc<Vec<MetricsWriter>>,
    /// Rendered `/ipxe` scripts of inventory hosts, with what drops them.
    pub scripts: Arc<crate::script_cache::ScriptCache>,
}

/// The URL hosts are told to come back to, by the catalog's base-URL policy.
pub fn base_url(cat: &Catalog, headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    cat.config.base_url.for_request(host)
}
