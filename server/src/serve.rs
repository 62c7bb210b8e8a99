//! `pxeforge serve`: binds every service, then keeps the catalog current on SIGHUP.

use crate::check::{self, print_diagnostics};
use crate::config::{Config, Overrides};
use crate::events::EventStore;
use crate::handlers::{self, AppState, MetricsWriter};
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use pxeforge_site::settings::DhcpMode;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Raises the soft limit on open files to the hard limit: under systemd's usual soft limit of
/// 1,024 the 16,384 HTTP connections and 4,096 TFTP transfers the services allow could never be
/// reached, and running out of descriptors takes every service down at once.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return;
    }
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = ?lim.current,
            to = ?lim.maximum,
            "raised the open-file limit to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// The TFTP service's limits from `[tftp]` and `limits.exempt` (loopback stays exempt from the
/// per-source rate, as in the TFTP crate's defaults).
fn tftp_config(s: &pxeforge_site::Settings, root: PathBuf) -> pxeforge_tftp::TftpConfig {
    let defaults = pxeforge_tftp::TftpConfig::default();
    let mut exempt = defaults.rate_limit_exempt.clone();
    // The site loader refused anything that does not parse.
    exempt.extend(
        s.limits
            .exempt
            .iter()
            .filter_map(|n| n.parse::<pxeforge_tftp::IpNet>().ok()),
    );
    let t = &s.tftp;
    pxeforge_tftp::TftpConfig {
        root,
        max_timeout: std::time::Duration::from_secs(t.max_timeout.max(1)),
        transfer_deadline: std::time::Duration::from_secs(t.transfer_deadline_secs.max(1)),
        max_transfers: t.max_transfers.max(1),
        max_new_per_source_per_sec: t.new_per_source_per_sec,
        rate_limit_exempt: exempt,
        ..defaults
    }
}

/// The HTTP transport's limits from `[limits]` (fixed for the life of the process: they shape
/// the listener).
fn http_limits(s: &pxeforge_site::Settings) -> pxeforge_httpd::conn::Limits {
    let exempt = s
        .limits
        .exempt
        .iter()
        // The site loader refused anything that does not parse.
        .filter_map(|n| n.parse::<pxeforge_httpd::cidr::Cidr>().ok())
        .collect();
    let secs = |n: u64| std::time::Duration::from_secs(n.max(1));
    pxeforge_httpd::conn::Limits {
        idle: secs(s.limits.http_idle_secs),
        request: secs(s.limits.http_request_secs),
        stall: secs(s.limits.http_stall_secs),
        max_connections: s.limits.http_connections.max(1),
        max_connections_per_addr: s.limits.http_connections_per_addr,
        max_requests: s.limits.http_requests_per_connection,
        exempt,
        ..pxeforge_httpd::conn::Limits::default()
    }
}

pub async fn run(site_dir: PathBuf, overrides: Overrides) -> Result<()> {
    raise_nofile_limit();
    let site_dir = site_dir
        .canonicalize()
        .with_context(|| format!("site directory {}", site_dir.display()))?;
    let catalog = match check::load(&site_dir, &overrides) {
        Ok(c) => c,
        Err(e) => {
            print_diagnostics(&e.0);
            anyhow::bail!("{} in {}: not starting", e, site_dir.display());
        }
    };
    print_diagnostics(&catalog.warnings);
    // Listen addresses and served directories are fixed for the life of the process; a reload
    // changes what is served, not where.
    let eff: Config = catalog.config.clone();
    std::fs::create_dir_all(&eff.state)
        .with_context(|| format!("creating state directory {}", eff.state.display()))?;
    let events = Arc::new(EventStore::open(&eff.state.join("events.db"))?);
    let build = Arc::new(crate::buildstate::Store::open(
        &eff.state.join("buildstate.db"),
    ));
    crate::buildstate::reconcile_site(&build, &catalog.site);
    let metrics = Arc::new(Metrics::default());
    let dhcp_site = Arc::new(ArcSwap::from_pointee(crate::dhcp_view::compile(&catalog)));
    let catalog = Arc::new(ArcSwap::from_pointee(catalog));
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
        let config = tftp_config(&catalog.load().site.settings, eff.tftp_root.clone());
        let server = pxeforge_tftp::TftpServer::bind(addr, config)
            .await
            .with_context(|| format!("binding TFTP on {addr}"))?;
        println!("pxeforge: tftp listening on {}", server.local_addr());
        let m = server.metrics();
        extra_metrics.push(Arc::new(move |out: &mut String| m.write_prometheus(out)));
        let sd = shutdown();
        tasks.spawn(async move { server.run(sd).await.context("TFTP service") });
    }

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

    let state = AppState::new(handlers::Shared {
        catalog: catalog.clone(),
        events,
        build: build.clone(),
        metrics: metrics.clone(),
        assets_dir: eff.assets.clone(),
        tftp_root: eff.tftp_root.clone(),
        state_dir: eff.state.clone(),
        extra_metrics: Arc::new(extra_metrics),
    });
    let listener = pxeforge_httpd::conn::bind(eff.http)
        .with_context(|| format!("binding HTTP on {}", eff.http))?;
    let http_addr = listener.local_addr()?;
    println!("pxeforge: http listening on {http_addr}");
    let app = handlers::router(state);
    let http_metrics: Arc<dyn pxeforge_httpd::Observer> = metrics.clone();
    let http_limits = http_limits(&catalog.load().site.settings);
    let http_shutdown = shutdown_rx.clone();
    let workers = eff.http_workers.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    tasks.spawn(async move {
        pxeforge_httpd::conn::serve_on_threads(
            listener,
            app,
            http_metrics,
            http_limits,
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
        .fixed()
        .map_or_else(|| format!("http://{http_addr}"), str::to_string);
    println!("pxeforge: ready");
    println!("  iPXE bootstrap:  {url}/boot.ipxe   (iPXE: chain {url}/boot.ipxe)");
    println!("  a host's script: {url}/ipxe?mac=MAC");
    println!("  arm a host:      pxeforge reinstall NAME   (a new state store adopts every host as installed)");
    println!(
        "  its kickstart:   the inst.ks= URL in its install script (it carries the build token)"
    );
    println!("  hosts + events:  {url}/api/hosts    metrics: {url}/metrics");
    println!("  reload the site: kill -HUP {}", std::process::id());

    let reload_catalog = catalog.clone();
    let reload_dir = site_dir.clone();
    let reload_metrics = metrics.clone();
    // A reload re-reads the site's settings, but the directories this process serves stay as
    // they were bound, so that the catalog never describes a store the handlers do not serve.
    let reload_overrides = Overrides {
        state: Some(eff.state.clone()),
        assets: Some(eff.assets.clone()),
        tftp_root: Some(eff.tftp_root.clone()),
        ..overrides.clone()
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let dir = reload_dir.clone();
                let started = std::time::Instant::now();
                let o = reload_overrides.clone();
                let loaded = tokio::task::spawn_blocking(move || check::load(&dir, &o)).await;
                let ms = started.elapsed().as_millis() as u64;
                match loaded {
                    Ok(Ok(new)) => {
                        print_diagnostics(&new.warnings);
                        // Before the new site serves: a raised generation arms at this moment.
                        let (b, site_for_state) = (build.clone(), new);
                        let new = match tokio::task::spawn_blocking(move || {
                            crate::buildstate::reconcile_site(&b, &site_for_state.site);
                            site_for_state
                        })
                        .await
                        {
                            Ok(n) => n,
                            Err(e) => {
                                tracing::error!(error = %e, "reload task failed");
                                continue;
                            }
                        };
                        dhcp_site.store(Arc::new(crate::dhcp_view::compile(&new)));
                        tracing::info!(hosts = new.site.hosts.len(), profiles = new.site.profiles.len(), ms, "site reloaded");
                        reload_catalog.store(Arc::new(new));
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
