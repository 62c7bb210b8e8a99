//! `pxeforge releases sync|list|verify|gc`: the CLI edge of the releases store, and the checks
//! `check` (and every load) makes of the synced releases.

use crate::config::Config;
use anyhow::{anyhow, bail, Context, Result};
use pxeforge_releases::{self as rel, FetchOptions, Progress, SyncOutcome};
use pxeforge_site::{Diagnostic, Severity, Site};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct ReleasesArgs {
    #[command(subcommand)]
    pub command: ReleasesCommand,
    /// Site directory
    #[arg(long, default_value = ".", global = true)]
    pub site: PathBuf,
    /// State directory holding the releases store (default: the site's server.state_dir)
    #[arg(long, value_name = "DIR", global = true)]
    pub state: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ReleasesCommand {
    /// Download releases' boot media, verify them against the tree's .treeinfo, publish them
    #[command(long_about = SYNC_LONG_ABOUT)]
    Sync(SyncArgs),
    /// List published composes (current ones marked with *), with the hosts pinned to each
    List,
    /// Re-hash every published file against its SHA256SUMS; exit 1 naming any mismatch
    Verify,
    /// Delete all but the newest N composes of each release (never the current one, never one
    /// an armed or installing host is pinned to), and unused partial downloads
    Gc {
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
}

const SYNC_LONG_ABOUT: &str = "Download the boot media of releases ([install.releases.NAME] in pxeforge.toml; \
default: every release) from their `upstream` install tree into STATE/releases/NAME/<compose-id>/.\n\n\
The tree's .treeinfo is fetched first (it must match `treeinfo_sha256` when that is set, and name \
the release's arch); the compose id is its sha256. When that compose is already published and \
verifies, nothing else is downloaded. Otherwise images/pxeboot/vmlinuz, images/pxeboot/initrd.img, \
images/install.img and images/efiboot.img are downloaded, each verified against the sha256 in \
.treeinfo's [checksums] as it streams; shim and GRUB are taken out of efiboot.img (mtools); and \
the compose is published in one rename with `current` pointed at it. A file that does not verify \
fails the sync with nothing published.\n\n\
Downloads resume where a killed sync stopped (HTTP Range; partial files in \
STATE/releases/.partial/) and are retried with exponential backoff. HTTPS uses rustls with the \
system's CA certificates; HTTP_PROXY, HTTPS_PROXY and NO_PROXY are honoured. For an air-gapped \
site, point `upstream` at a local mirror of the tree.";

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Releases to sync (names of [install.releases.NAME]); default: every release
    pub names: Vec<String>,
    /// Then keep only the newest N composes of each release synced (never the current one, never
    /// one a host is pinned to)
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Tries per request before the sync fails (transport errors, timeouts, 408, 429, 5xx)
    #[arg(long, default_value_t = FetchOptions::default().attempts, value_name = "N")]
    pub attempts: u32,
    /// Wait before the first retry (doubled after each, up to 30 s)
    #[arg(long, default_value_t = FetchOptions::default().backoff.as_millis() as u64, value_name = "MS")]
    pub backoff_ms: u64,
    /// Connect timeout, and the longest wait for each read of a download
    #[arg(long, default_value_t = FetchOptions::default().timeout.as_secs(), value_name = "SECS")]
    pub timeout: u64,
    /// The largest file a sync downloads (MiB): a larger one stops the sync, so that a wrong or
    /// hostile upstream cannot fill the disk before the checksum fails
    #[arg(long, default_value_t = FetchOptions::default().max_file_bytes >> 20, value_name = "MIB")]
    pub max_file_mib: u64,
}

/// The site's settings and the state directory (`--state`, else the site's server.state_dir).
/// Only the settings are loaded, not the whole-site check: a sync is how an error about an
/// unsynced release gets fixed.
fn load(site_dir: &Path, state: Option<&PathBuf>) -> Result<(Site, Config)> {
    let site = Site::load(site_dir).map_err(|e| {
        crate::check::print_diagnostics(&e.0);
        anyhow!("{e} in {}", site_dir.display())
    })?;
    let config = Config::offline(&site, None, state.cloned());
    Ok((site, config))
}

/// Returns the process exit code (sync: 1 when any release failed; verify: 1 on any mismatch).
pub fn releases(args: &ReleasesArgs) -> Result<i32> {
    match &args.command {
        ReleasesCommand::Sync(s) => sync(args, s),
        ReleasesCommand::List => {
            let state = state_only(args)?;
            let pins = rel::read_pins(&state)?;
            let list = rel::list(&state);
            if list.is_empty() {
                println!("no synced releases in {}", state.join(rel::DIR).display());
            }
            for c in list {
                println!(
                    "{} {:<20} {}  {:<8} {:<8} pinned by {} host(s)",
                    if c.is_current { "*" } else { " " },
                    c.release,
                    c.id,
                    c.arch.as_deref().unwrap_or("?"),
                    if c.is_current { "current" } else { "-" },
                    pins.count(&c.release, &c.id),
                );
            }
            Ok(0)
        }
        ReleasesCommand::Verify => {
            let state = state_only(args)?;
            Ok(crate::store_cmd::report_verify(
                &rel::verify(&state),
                "files",
            ))
        }
        ReleasesCommand::Gc { keep } => {
            let state = state_only(args)?;
            let pins = rel::read_pins(&state)?;
            let r = rel::gc(&state, *keep, &pins).context("collecting old composes")?;
            for p in &r.removed {
                println!("removed {}", p.display());
            }
            println!(
                "{} compose(s) removed, {} bytes of partial downloads",
                r.removed.len(),
                r.partial_bytes
            );
            Ok(0)
        }
    }
}

fn state_only(args: &ReleasesArgs) -> Result<PathBuf> {
    match &args.state {
        Some(s) => Ok(s.clone()),
        None => Ok(load(&args.site, None)?.1.state),
    }
}

fn sync(args: &ReleasesArgs, s: &SyncArgs) -> Result<i32> {
    let (site, config) = load(&args.site, args.state.as_ref())?;
    let releases = &site.settings.install.releases;
    if releases.is_empty() {
        bail!(
            "{} has no [install.releases.NAME]: nothing to sync",
            site.dir.join("pxeforge.toml").display()
        );
    }
    let names: Vec<&String> = if s.names.is_empty() {
        releases.keys().collect()
    } else {
        s.names
            .iter()
            .map(|n| {
                releases.get_key_value(n).map(|(k, _)| k).ok_or_else(|| {
                    anyhow!(
                        "no release {n:?} in pxeforge.toml (releases: {})",
                        releases.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let fetch = FetchOptions {
        attempts: s.attempts.max(1),
        backoff: Duration::from_millis(s.backoff_ms),
        timeout: Duration::from_secs(s.timeout.max(1)),
        max_file_bytes: s.max_file_mib.max(1).saturating_mul(1 << 20),
        ..FetchOptions::default()
    };
    let base_url = config.base_url.offline().to_string();
    let mut failed = 0;
    for name in names {
        let r = &releases[name];
        let upstream = r.upstream().replace("{base_url}", &base_url);
        let reporter = Reporter::new(name.clone());
        let started = Instant::now();
        let out = rel::sync(&rel::SyncRequest {
            state: &config.state,
            name,
            upstream: &upstream,
            arch: r.arch().as_str(),
            treeinfo_sha256: r.treeinfo_sha256.as_deref(),
            keep: s.keep,
            fetch: &fetch,
            progress: &reporter,
        });
        reporter.clear();
        let report = match out {
            Ok(r) => r,
            Err(e) => {
                eprintln!("pxeforge: error: {e}");
                failed += 1;
                continue;
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let downloaded: u64 = report.files.iter().map(|f| f.downloaded).sum();
        match report.outcome {
            SyncOutcome::Unchanged => println!(
                "{name}: compose {} unchanged, current; nothing downloaded ({secs:.2} s)",
                report.compose
            ),
            SyncOutcome::Published | SyncOutcome::Repaired => println!(
                "{name}: {} compose {} ({downloaded} bytes downloaded in {secs:.1} s), now current",
                if report.outcome == SyncOutcome::Repaired {
                    "repaired"
                } else {
                    "published"
                },
                report.compose
            ),
        }
        for f in &report.files {
            println!("  {:<28} {:>12} bytes  sha256 {}", f.name, f.size, f.sha256);
        }
        for w in &report.warnings {
            println!("  warning: {w}");
        }
        for p in &report.removed {
            println!("  removed {}", p.display());
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// A progress bar on a terminal, plain log lines otherwise (CI logs stay readable).
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    release: String,
}

impl Reporter {
    fn new(release: String) -> Reporter {
        let bar = crate::store_cmd::terminal_bar(&release, 28);
        Reporter { bar, release }
    }

    fn clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn start(&self, file: &str, from: u64, total: Option<u64>) {
        match &self.bar {
            Some(b) => {
                b.set_message(file.to_string());
                b.set_length(total.unwrap_or(0));
                b.set_position(from);
                b.reset_eta();
            }
            None => eprintln!(
                "pxeforge: {}: {file}: downloading{}{}",
                self.release,
                total.map(|t| format!(" {t} bytes")).unwrap_or_default(),
                if from > 0 {
                    format!(", resuming at byte {from}")
                } else {
                    String::new()
                }
            ),
        }
    }

    fn bytes(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    fn done(&self, file: &str, size: u64, downloaded: u64) {
        let line = format!(
            "pxeforge: {}: {file}: {size} bytes, sha256 verified ({downloaded} downloaded)",
            self.release
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn retry(&self, what: &str, attempt: u32, why: &str, wait: Duration) {
        let line = format!(
            "pxeforge: {}: {what}: attempt {attempt} failed: {why}; retrying in {:.1} s",
            self.release,
            wait.as_secs_f64()
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

/// What `check` says about the releases in the state directory: a release profiles use that was
/// never synced is a warning (its hosts boot from upstream), an error under `require_synced`; a
/// synced release whose tree is not the release's arch is an error.
pub fn check(state: &Path, site: &Site) -> Vec<Diagnostic> {
    let toml = site.dir.join("pxeforge.toml");
    let text = std::fs::read_to_string(&toml).unwrap_or_default();
    let line_of = |name: &str| {
        [
            format!("[install.releases.{name}]"),
            format!("[install.releases.\"{name}\"]"),
        ]
        .iter()
        .find_map(|h| text.find(h.as_str()))
        .map(|off| text[..off].matches('\n').count() + 1)
        .unwrap_or(0)
    };
    let diag = |name: &str, severity, message| Diagnostic {
        file: PathBuf::from("pxeforge.toml"),
        line: line_of(name),
        message,
        severity,
    };
    let unsynced = crate::media::unsynced(state, site);
    let mut out = Vec::new();
    for (name, r) in &site.settings.install.releases {
        match rel::current_compose(state, name) {
            None if r.require_synced => out.push(diag(
                name,
                Severity::Error,
                format!("release {name} has require_synced = true but was never synced: run `pxeforge releases sync {name}`"),
            )),
            None if unsynced.contains(name) => out.push(diag(
                name,
                Severity::Warning,
                format!("release {name} was never synced: its hosts boot from {} until `pxeforge releases sync {name}`", r.upstream()),
            )),
            None => {}
            Some(compose) => {
                let dir = rel::compose_dir(state, name, &compose);
                match rel::compose_arch(&dir) {
                    Ok(a) if a == r.arch().as_str() => {}
                    Ok(a) => out.push(diag(
                        name,
                        Severity::Error,
                        format!("release {name} is {}, but its synced tree (compose {compose}) is {a}: fix arch or upstream, then `pxeforge releases sync {name}`", r.arch().as_str()),
                    )),
                    Err(e) => out.push(diag(
                        name,
                        Severity::Error,
                        format!("release {name}: the current compose cannot be read: {e} (run `pxeforge releases verify`)"),
                    )),
                }
            }
        }
    }
    out
}
