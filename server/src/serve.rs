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

/// Descriptors kept for the process itself: listeners, the databases and their journals, DHCP
/// sockets, logs, the image store, the admin API.
const FD_RESERVE: u64 = 256;

/// How the open-file limit is shared between the services, so that one client filling one
/// service cannot take the descriptors another needs: an HTTP connection may hold two (its
/// socket and a file being sent), a TFTP transfer two (its socket and its file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    pub http_connections: usize,
    pub tftp_transfers: usize,
}

/// The budget under a soft limit of `nofile` (`None`: unlimited) for the wanted numbers. What
/// fits is granted; otherwise both are cut in proportion to what was asked, at least 1 each.
pub fn fd_budget(nofile: Option<u64>, http: usize, tftp: usize) -> FdBudget {
    let wanted = FdBudget {
        http_connections: http,
        tftp_transfers: tftp,
    };
    let Some(nofile) = nofile else {
        return wanted;
    };
    let reserve = FD_RESERVE.min(nofile / 4);
    let slots = nofile.saturating_sub(reserve) / 2;
    let asked = http as u64 + tftp as u64;
    if asked <= slots {
        return wanted;
    }
    let share = |n: usize| -> usize {
        if n == 0 {
            return 0;
        }
        let s = (u128::from(slots) * n as u128 / u128::from(asked.max(1))) as usize;
        s.clamp(1, n)
    };
    FdBudget {
        http_connections: share(http),
        tftp_transfers: share(tftp),
    }
}

/// The budget for this process's soft limit, said in the log when it cuts a setting.
fn budget_for(s: &pxeforge_site::Settings, tftp: bool) -> FdBudget {
    use rustix::process::{getrlimit, Resource};
    let nofile = getrlimit(Resource::Nofile).current;
    let wanted_tftp = if tftp { s.tftp.max_transfers.max(1) } else { 0 };
    let b = fd_budget(nofile, s.limits.http_connections.max(1), wanted_tftp);
    if b.http_connections < s.limits.http_connections || (tftp && b.tftp_transfers < wanted_tftp) {
        tracing::warn!(
            open_files = ?nofile,
            http_connections = b.http_connections,
            tftp_transfers = b.tftp_transfers,
            "the open-file limit is too low for limits.http_connections and tftp.max_transfers: both are cut to fit (raise LimitNOFILE)"
        );
    }
    b
}

/// The TFTP service's limits from `[tftp]` and `limits.exempt` (loopback stays exempt from the
/// per-source rate, as in the TFTP crate's defaults).
fn tftp_config(
    s: &pxeforge_site::Settings,
    root: PathBuf,
    budget: FdBudget,
) -> pxeforge_tftp::TftpConfig {
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
        max_transfers: t.max_transfers.max(1).min(budget.tftp_transfers.max(1)),
        max_new_per_source_per_sec: t.new_per_source_per_sec,
        max_transfers_per_addr: t.max_transfers_per_addr,
        lockstep_slice: std::time::Duration::from_micros(t.lockstep_slice_us),
        rate_limit_exempt: exempt,
        ..defaults
    }
}

/// The HTTP transport's limits from `[limits]` (fixed for the life of the process: they shape
/// the listener).
fn http_limits(s: &pxeforge_site::Settings, budget: FdBudget) -> pxeforge_httpd::conn::Limits {
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
        max_connections: s
            .limits
            .http_connections
            .max(1)
            .min(budget.http_connections.max(1)),
        max_connections_per_addr: s.limits.http_connections_per_addr,
        max_requests: s.limits.http_requests_per_connection,
        exempt,
        ..pxeforge_httpd::conn::Limits::default()
    }
}

/// The lock file that keeps a state directory to one `serve`, holding the server's pid.
const SERVE_LOCK: &str = "serve.lock";

/// One server per state directory: two would hand out the same pool addresses from one lease
/// file (each keeps its own index of free addresses) and race on every store. The DHCP socket
/// does not keep a second one out (it binds with SO_REUSEADDR), so the state directory holds an
/// exclusive lock for as long as the returned value lives. Commands that change the state
/// offline (`reinstall --state`, `releases sync`) do not take it: the stores are safe for them.
fn lock_state_dir(state: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::Write;
    let path = state.join(SERVE_LOCK);
    let Some(lock) = pxeforge_store::try_lock_file(&path)? else {
        // Written by the holder below; a holder that is still starting may not have written it.
        let pid = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = match pid.trim() {
            "" => String::new(),
            pid => format!(" (pid {pid})"),
        };
        anyhow::bail!(
            "state directory {} is in use by another pxeforge serve{holder}: it holds {}; \
             stop that server, or give this one its own --state",
            state.display(),
            path.display()
        );
    };
    let mut f: &std::fs::File = &lock;
    f.set_len(0)
        .and_then(|()| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(lock)
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
    let _one_server = lock_state_dir(&eff.state)?;
    // Before TFTP binds: its default root is the loaders store's `current`, filled here if empty.
    crate::loaders::at_start(&catalog);
    let metrics = Arc::new(Metrics::default());
    let events = Arc::new(EventStore::open(&eff.state.join("events.db"))?);
    if events.moved_aside().is_some() {
        metrics.moved_aside("events");
    }
    let build = Arc::new(crate::buildstate::Store::open(
        &eff.state.join("buildstate.db"),
    ));
    crate::buildstate::reconcile_site(&build, &catalog.site, &eff.state);
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

    let budget = budget_for(&catalog.load().site.settings, eff.tftp.is_some());
    {
        let b = budget;
        extra_metrics.push(Arc::new(move |out: &mut String| {
            let mut w = pxeforge_promtext::Writer::new(out);
            let mut f = w.family(
                "pxeforge_fd_budget",
                pxeforge_promtext::Kind::Gauge,
                "What each service may hold at once under the open-file limit.",
            );
            f.sample(
                &[("service", &"http_connections")],
                b.http_connections as u64,
            );
            f.sample(&[("service", &"tftp_transfers")], b.tftp_transfers as u64);
        }));
    }
    if let Some(addr) = eff.tftp {
        let config = tftp_config(&catalog.load().site.settings, eff.tftp_root.clone(), budget);
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
        let config = crate::dhcp_view::config(&eff).tuned(&catalog.load().site.settings.dhcp);
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

    let scripts = Arc::new(crate::script_cache::ScriptCache::new(&eff.state));
    {
        let s = scripts.clone();
        extra_metrics.push(Arc::new(move |out: &mut String| s.write_prometheus(out)));
    }
    let installs = Arc::new(InstallGauges::default());
    {
        let (g, b) = (installs.clone(), build.clone());
        extra_metrics.push(Arc::new(move |out: &mut String| g.write(out, b.paused())));
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
        scripts,
    });
    let listener = pxeforge_httpd::conn::bind(eff.http)
        .with_context(|| format!("binding HTTP on {}", eff.http))?;
    let http_addr = listener.local_addr()?;
    println!("pxeforge: http listening on {http_addr}");
    let app = handlers::router(state.clone());
    let token = crate::admin::token::load_or_create(&eff.admin.token_file)?;
    let admin_app = crate::admin::router(state.clone(), Arc::new(token));
    let (admin_addr, admin_tls, admin_task) =
        crate::admin::serve(&eff.admin, admin_app, shutdown()).await?;
    println!(
        "pxeforge: admin listening on {admin_addr} ({}, token file {})",
        if admin_tls { "https" } else { "http" },
        eff.admin.token_file.display()
    );
    tasks.spawn(async move {
        match admin_task.await {
            Ok(r) => r.context("admin API"),
            Err(e) => Err(anyhow::anyhow!("admin API task: {e}")),
        }
    });
    {
        let (st, g) = (state.clone(), installs.clone());
        tasks.spawn(async move {
            watch_installs(st, g).await;
            Ok(())
        });
    }
    let http_metrics: Arc<dyn pxeforge_httpd::Observer> = metrics.clone();
    let http_limits = http_limits(&catalog.load().site.settings, budget);
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

    // Every port is bound: the rest runs without root.
    let user = overrides
        .user
        .clone()
        .unwrap_or_else(|| catalog.load().site.settings.server.user.clone());
    if !user.is_empty() {
        if nix::unistd::geteuid().is_root() {
            crate::privileges::drop_to(&user, &eff.state)?;
        } else {
            tracing::info!(user, "not started as root: server.user is not needed");
        }
    }
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
    let scheme = if admin_tls { "https" } else { "http" };
    println!("  admin API:       {scheme}://{admin_addr}/api/hosts   (pxeforge hosts; bearer token in {})", eff.admin.token_file.display());
    println!("  reload the site: kill -HUP {}", std::process::id());
    // systemd's Type=notify: the services are bound and serving. Outside systemd (no
    // NOTIFY_SOCKET) this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not tell systemd that pxeforge is ready");
    }

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
                            let state = site_for_state.config.state.clone();
                            crate::buildstate::reconcile_site(&b, &site_for_state.site, &state);
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
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    Ok(())
}

/// Installs under way and stuck ones, as `/metrics` shows them; refreshed by `watch_installs`.
#[derive(Default)]
struct InstallGauges {
    installing: std::sync::atomic::AtomicU64,
    stuck: std::sync::atomic::AtomicU64,
}

impl InstallGauges {
    fn write(&self, out: &mut String, paused: bool) {
        let mut w = pxeforge_promtext::Writer::new(out);
        w.gauge(
            "pxeforge_installs_paused",
            "1 while installs are paused (pxeforge pause): every host boots its local disk.",
            u64::from(paused),
        );
        w.gauge(
            "pxeforge_installs_in_progress",
            "Hosts in state installing.",
            self.installing.load(Ordering::Relaxed),
        );
        w.gauge(
            "pxeforge_installs_stuck",
            "Hosts installing for longer than install.stuck_after_secs.",
            self.stuck.load(Ordering::Relaxed),
        );
    }
}

/// Every 30 s (sooner when `install.stuck_after_secs` is under a minute): counts the installs under way and reports each host that has been installing
/// longer than `install.stuck_after_secs` (once per host and install).
async fn watch_installs(st: AppState, gauges: Arc<InstallGauges>) {
    let mut reported: std::collections::HashSet<(String, i64)> = Default::default();
    // Every 30 s, or sooner when the stuck time itself is shorter (a site that tests it).
    let every = st
        .catalog
        .load()
        .site
        .settings
        .install
        .stuck_after_secs
        .clamp(1, 60)
        / 2;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every.max(1)));
    loop {
        tick.tick().await;
        let s = st.clone();
        let found = tokio::task::spawn_blocking(move || {
            let cat = s.catalog.load_full();
            let installing = s.build.state().ok().and_then(|b| b.count_installing().ok());
            (installing, crate::admin::stuck_hosts(&s, &cat).ok())
        })
        .await;
        let Ok((installing, stuck)) = found else {
            continue;
        };
        if let Some(n) = installing {
            gauges.installing.store(u64::from(n), Ordering::Relaxed);
        }
        let Some(stuck) = stuck else {
            continue;
        };
        gauges.stuck.store(stuck.len() as u64, Ordering::Relaxed);
        let now = crate::events::now();
        for (host, since) in &stuck {
            if reported.insert((host.clone(), *since)) {
                tracing::warn!(host = %host, minutes = now.saturating_sub(*since) / 60, "install stuck: the host has been installing longer than install.stuck_after_secs");
            }
        }
        reported.retain(|r| stuck.contains(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grants_what_fits_and_cuts_both_in_proportion_otherwise() {
        let all = fd_budget(Some(1 << 20), 16_384, 4096);
        assert_eq!((all.http_connections, all.tftp_transfers), (16_384, 4096));
        assert_eq!(
            fd_budget(None, 7, 9),
            FdBudget {
                http_connections: 7,
                tftp_transfers: 9
            }
        );
        // systemd's usual soft limit of 1,024: 256 reserved, 384 slots of two descriptors.
        let b = fd_budget(Some(1024), 16_384, 4096);
        assert_eq!(b.http_connections + b.tftp_transfers, 384 - 1);
        assert!(b.tftp_transfers >= 70, "{b:?}");
        assert!(2 * (b.http_connections + b.tftp_transfers) as u64 + 256 <= 1024);
        // Tiny limits still leave each service one.
        let b = fd_budget(Some(8), 100, 100);
        assert_eq!((b.http_connections, b.tftp_transfers), (1, 1));
        assert_eq!(fd_budget(Some(1024), 100, 0).tftp_transfers, 0);
        assert_eq!(fd_budget(Some(1024), 100_000, 0).tftp_transfers, 0);
    }
}
