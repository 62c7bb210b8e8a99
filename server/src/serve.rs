//! `pxeforge serve`: binds every service, then keeps the site current on SIGHUP.

use crate::events::EventStore;
use crate::http::{self, AppState, MetricsWriter};
use crate::metrics::Metrics;
use crate::site::settings::DhcpMode;
use crate::site::Site;
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Command-line values that take precedence over `pxeforge.toml`, on start and on every reload.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// HTTP listen address (port 0 picks a free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// TFTP listen address (port 0 picks a free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub tftp: Option<SocketAddr>,
    /// Directory served over TFTP (and at /tftp/ over HTTP)
    #[arg(long, value_name = "DIR")]
    pub tftp_root: Option<PathBuf>,
    /// Directory served at /assets/
    #[arg(long, value_name = "DIR")]
    pub assets: Option<PathBuf>,
    /// DHCP mode
    #[arg(long, value_enum)]
    pub dhcp: Option<DhcpMode>,
    /// Interface DHCP listens on
    #[arg(long, value_name = "NAME")]
    pub dhcp_interface: Option<String>,
    /// State directory (event and lease databases, image store)
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// URL hosts are told to fetch from (default: the Host header of each request)
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Disable TFTP
    #[arg(long)]
    pub no_tftp: bool,
    /// HTTP worker threads (default: one per CPU)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub http_workers: Option<u16>,
}

/// The settings in force: the site's, with the overrides applied and paths made absolute.
pub struct Effective {
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    pub tftp_root: PathBuf,
    pub assets: PathBuf,
    pub state: PathBuf,
    pub dhcp: DhcpMode,
    pub dhcp_interface: Option<String>,
    pub base_url: Option<String>,
}

pub fn effective(site: &Site, o: &Overrides) -> Effective {
    let s = &site.settings;
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            site.dir.join(p)
        }
    };
    let iface = o
        .dhcp_interface
        .clone()
        .or_else(|| (!s.dhcp.interface.is_empty()).then(|| s.dhcp.interface.clone()));
    Effective {
        http: o.http.unwrap_or(s.server.http),
        tftp: if o.no_tftp || !s.tftp.enabled && o.tftp.is_none() {
            None
        } else {
            Some(o.tftp.unwrap_or(s.tftp.listen))
        },
        tftp_root: o.tftp_root.clone().unwrap_or_else(|| abs(&s.tftp.root)),
        assets: o
            .assets
            .clone()
            .unwrap_or_else(|| abs(&s.server.assets_dir)),
        state: o.state.clone().unwrap_or_else(|| abs(&s.server.state_dir)),
        dhcp: o.dhcp.unwrap_or(s.dhcp.mode),
        dhcp_interface: iface,
        base_url: o
            .base_url
            .clone()
            .map(|b| b.trim_end_matches('/').to_string()),
    }
}

pub fn print_diagnostics(diags: &[crate::site::Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

pub async fn run(site_dir: PathBuf, overrides: Overrides) -> Result<()> {
    let site_dir = site_dir
        .canonicalize()
        .with_context(|| format!("site directory {}", site_dir.display()))?;
    let site = match Site::load(&site_dir) {
        Ok(s) => s,
        Err(e) => {
            print_diagnostics(&e.0);
            anyhow::bail!("{} in {}: not starting", e, site_dir.display());
        }
    };
    print_diagnostics(&site.warnings);
    let mut site = site;
    let eff = effective(&site, &overrides);
    site.state_dir = eff.state.clone();
    std::fs::create_dir_all(&eff.state)
        .with_context(|| format!("creating state directory {}", eff.state.display()))?;
    let events = Arc::new(EventStore::open(&eff.state.join("events.db"))?);
    let metrics = Arc::new(Metrics::default());
    let site = Arc::new(ArcSwap::from_pointee(site));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown_watch = shutdown_rx.clone();
    let shutdown = move || {
        let mut rx = shutdown_watch.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };

    let mut extra_metrics: Vec<MetricsWriter> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(addr) = eff.tftp {
        let config = pxeforge_tftp::TftpConfig {
            root: eff.tftp_root.clone(),
            ..Default::default()
        };
        let server = pxeforge_tftp::TftpServer::bind(addr, config)
            .await
            .with_context(|| format!("binding TFTP on {addr}"))?;
        println!("pxeforge: tftp listening on {}", server.local_addr());
        let m = server.metrics();
        extra_metrics.push(Arc::new(move |out: &mut String| m.write_prometheus(out)));
        let sd = shutdown();
        tasks.spawn(async move { server.run(sd).await.context("TFTP service") });
    }

    let dhcp_site = Arc::new(ArcSwap::from_pointee(crate::dhcp_view::compile(
        &site.load(),
        &eff,
    )));
    if eff.dhcp != DhcpMode::Off {
        let config = crate::dhcp_view::config(&eff);
        let server = pxeforge_dhcp::DhcpServer::bind(config, dhcp_site.clone())
            .await
            .context("starting DHCP")?;
        for a in server.local_addrs() {
            println!(
                "pxeforge: dhcp {} listening on {a} (interface {})",
                format!("{:?}", eff.dhcp).to_lowercase(),
                eff.dhcp_interface.as_deref().unwrap_or("any")
            );
        }
        let m = server.metrics();
        extra_metrics.push(Arc::new(move |out: &mut String| m.write_prometheus(out)));
        let sd = shutdown();
        tasks.spawn(async move { server.run(sd).await.context("DHCP service") });
    }

    let state = AppState::new(http::Shared {
        site: site.clone(),
        events,
        metrics: metrics.clone(),
        assets_dir: eff.assets.clone(),
        tftp_root: eff.tftp_root.clone(),
        state_dir: eff.state.clone(),
        base_url_override: eff.base_url.clone(),
        extra_metrics: Arc::new(extra_metrics),
    });
    let listener =
        http::conn::bind(eff.http).with_context(|| format!("binding HTTP on {}", eff.http))?;
    let http_addr = listener.local_addr()?;
    println!("pxeforge: http listening on {http_addr}");
    let app = http::router(state);
    let http_metrics = metrics.clone();
    let http_shutdown = shutdown_rx.clone();
    let workers = overrides.http_workers.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    tasks.spawn(async move {
        http::conn::serve_on_threads(
            listener,
            app,
            http_metrics,
            http::conn::Limits::default(),
            http_shutdown,
            workers,
        )
        .await
        .context("HTTP service")
    });

    // Before "ready": a SIGHUP sent as soon as a script sees that line must reload, not kill.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let url = eff
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));
    println!("pxeforge: ready");
    println!("  iPXE bootstrap:  {url}/boot.ipxe   (iPXE: chain {url}/boot.ipxe)");
    println!("  a host's script: {url}/ipxe?mac=MAC");
    println!("  its kickstart:   {url}/ks/MAC");
    println!("  hosts + events:  {url}/api/hosts    metrics: {url}/metrics");
    println!("  reload the site: kill -HUP {}", std::process::id());

    let reload_site = site.clone();
    let reload_dir = site_dir.clone();
    let reload_metrics = metrics.clone();
    let reload_overrides = overrides.clone();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let dir = reload_dir.clone();
                let started = std::time::Instant::now();
                let loaded = tokio::task::spawn_blocking(move || Site::load(&dir)).await;
                let ms = started.elapsed().as_millis() as u64;
                match loaded {
                    Ok(Ok(mut new_site)) => {
                        print_diagnostics(&new_site.warnings);
                        let e = effective(&new_site, &reload_overrides);
                        new_site.state_dir = e.state.clone();
                        dhcp_site.store(Arc::new(crate::dhcp_view::compile(&new_site, &e)));
                        tracing::info!(hosts = new_site.hosts.len(), profiles = new_site.profiles.len(), ms, "site reloaded");
                        reload_site.store(Arc::new(new_site));
                        reload_metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(errors)) => {
                        for d in &errors.0 {
                            tracing::error!(target: "pxeforge::site", "{d}");
                        }
                        tracing::error!(ms, "reload refused ({errors}); still serving the last good site");
                        reload_metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!(error = %e, "reload task failed"),
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(done) = tasks.join_next() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => anyhow::bail!("a service task failed: {e}"),
                }
            }
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    Ok(())
}
