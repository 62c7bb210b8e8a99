//! The operator's commands (`pxeforge hosts`, `events`, `pause`, `resume`, and `reinstall`
//! without `--state`): thin clients of the admin API that `pxeforge serve` runs on its own
//! listener. They decide nothing themselves: the server answers, they print. See
//! /work/notes/admin-api.md for the routes and README "Operating the fleet" for the commands.

use anyhow::{anyhow, bail, Context, Result};
use pxeforge_site::{Mac, Settings};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where the admin API is and how to prove who we are: the flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Admin API base URL, e.g. https://pxe1.example:8081 (default: http(s)://<[admin] listen>
    /// of the site's pxeforge.toml, https when it sets tls_cert and tls_key; without a
    /// pxeforge.toml, http://127.0.0.1:8081)
    #[arg(long, value_name = "URL", env = "PXEFORGE_ADMIN_URL")]
    pub server: Option<String>,
    /// File holding the bearer token (default: the site's [admin] token_file, which is under
    /// its server.state_dir unless absolute; `serve` writes it at its first start, mode 0600)
    #[arg(long, value_name = "PATH", env = "PXEFORGE_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for an https:// server, in addition to the system's
    /// (default: the site's [admin] tls_cert, when that file is here)
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Site directory whose pxeforge.toml gives the defaults above
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub site: PathBuf,
}

/// The admin settings a client needs, resolved the way `serve` resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Defaults {
    url: String,
    token_file: PathBuf,
    cacert: Option<PathBuf>,
}

/// Reads the defaults from `SITE/pxeforge.toml` (absent: the built-in defaults, for an operator
/// outside a site checkout who passes --server and --token-file or the environment).
fn defaults(site: &Path) -> Result<Defaults> {
    let path = site.join("pxeforge.toml");
    let settings = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<Settings>(&text).map_err(|e| {
            anyhow!(
                "{}: {} (run `pxeforge check --site {}`)",
                path.display(),
                e.message(),
                site.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settings::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(defaults_from(site, &settings))
}

/// The same rules as the server's configuration: paths in settings are relative to the site,
/// the token file to the state directory. Pure.
fn defaults_from(site: &Path, s: &Settings) -> Defaults {
    let under = |dir: &Path, p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let state = under(site, &s.server.state_dir);
    let a = &s.admin;
    let tls = a.tls_cert.is_some() && a.tls_key.is_some();
    // A wildcard listen address is reached on loopback: this machine is the likely client.
    let mut listen = a.listen;
    if listen.ip().is_unspecified() {
        listen = match listen {
            SocketAddr::V4(v4) => SocketAddr::from(([127, 0, 0, 1], v4.port())),
            SocketAddr::V6(v6) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port())),
        };
    }
    Defaults {
        url: format!("{}://{listen}", if tls { "https" } else { "http" }),
        token_file: under(&state, &a.token_file),
        cacert: a.tls_cert.as_ref().filter(|_| tls).map(|c| under(site, c)),
    }
}

/// A connection to the admin API: base URL, token and HTTP client.
pub struct Client {
    base: String,
    token: String,
    token_file: PathBuf,
    http: reqwest::blocking::Client,
}

/// One answer of the API: its status and its JSON body (`Null` when the body was empty).
struct Answer {
    status: u16,
    body: Value,
}

impl Client {
    /// Resolves the flags, the environment and the site's settings; reads the token.
    pub fn connect(a: &AdminArgs) -> Result<Client> {
        // The settings are read only when the flags leave something to them.
        let https_flag = a
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("https://"));
        let d =
            if a.server.is_none() || a.token_file.is_none() || (https_flag && a.cacert.is_none()) {
                Some(defaults(&a.site)?)
            } else {
                None
            };
        let base = match (&a.server, &d) {
            (Some(s), _) => s.trim_end_matches('/').to_string(),
            (None, Some(d)) => d.url.clone(),
            (None, None) => bail!("no --server given"),
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--server {base:?}: expected a URL like http://127.0.0.1:8081 or https://HOST:PORT"
            );
        }
        let token_file = match (&a.token_file, &d) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => d.token_file.clone(),
            (None, None) => bail!("no --token-file given"),
        };
        let token = read_token(&token_file)?;
        // The site's certificate is the default only where it is at hand (a checkout may not
        // carry it); the system's trust store applies in any case.
        let cacert = match (&a.cacert, &d) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(d)) if base.starts_with("https://") => {
                d.cacert.clone().filter(|p| p.is_file())
            }
            _ => None,
        };
        // Never through a proxy from the environment: the token would travel through it.
        let mut b = reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("pxeforge/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cacert {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading --cacert {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
            if certs.is_empty() {
                bail!("{}: holds no PEM certificate", ca.display());
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().context("setting up the HTTP client")?;
        Ok(Client {
            base,
            token,
            token_file,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request; any HTTP status is an answer, only a transport failure is an error.
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let url = self.url(path);
        let mut rq = match method {
            "GET" => self.http.get(&url),
            _ => self.http.post(&url),
        };
        rq = rq.bearer_auth(&self.token);
        if let Some(b) = body {
            rq = rq.json(b);
        }
        let r = rq.send().map_err(|e| {
            anyhow!(e).context(format!(
                "{method} {url}: the admin API does not answer (is `pxeforge serve` running, and is this its [admin] listen address? see --server)"
            ))
        })?;
        let status = r.status().as_u16();
        let text = r
            .text()
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            match serde_json::from_str(&text) {
                Ok(v) => v,
                // A non-JSON body (a proxy, a server of another kind) is shown as it came.
                Err(_) => Value::String(text),
            }
        };
        Ok(Answer { status, body })
    }

    /// The error for a non-2xx answer: the server's own message, with a hint where one helps.
    fn refusal(&self, method: &str, path: &str, a: &Answer) -> anyhow::Error {
        let msg = match &a.body {
            Value::Object(o) => o
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| a.body.to_string()),
            Value::String(s) => s.chars().take(300).collect(),
            Value::Null => "(no message)".to_string(),
            other => other.to_string(),
        };
        let url = self.url(path);
        match a.status {
            401 => anyhow!(
                "{method} {url}: 401: {msg} (the token read from {} is not the server's: is it the token file of this server's state directory? see --token-file)",
                self.token_file.display()
            ),
            // The API answers every error in JSON; anything else came from another server.
            404 if a.body.get("error").is_none() => anyhow!(
                "{method} {url}: 404: {msg} (is --server the admin listener, not the boot listener?)"
            ),
            s => anyhow!("{method} {url}: {s}: {msg}"),
        }
    }

    /// GET, failing on any status but 2xx.
    pub fn get(&self, path: &str) -> Result<Value> {
        let a = self.send("GET", path, None)?;
        if !(200..300).contains(&a.status) {
            return Err(self.refusal("GET", path, &a));
        }
        Ok(a.body)
    }

    /// POST with a JSON body, failing on any status but 2xx.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let a = self.send("POST", path, Some(body))?;
        if !(200..300).contains(&a.status) {
            return Err(self.refusal("POST", path, &a));
        }
        Ok(a.body)
    }
}

/// The token file's content, trimmed. Names the file, and says what a permission error means.
fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                " (`pxeforge serve` writes it at its first start; pass --token-file or PXEFORGE_ADMIN_TOKEN_FILE when the server runs with another state directory)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (it is mode 0600, readable only by the user that runs `pxeforge serve`: run this as that user, or with sudo)"
            }
            _ => "",
        };
        anyhow!("reading the admin token {}: {e}{hint}", path.display())
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the admin token file {} is empty", path.display());
    }
    // It goes into a header line; its content is never echoed (it may be some other secret).
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "{} does not hold an admin token (one word of printable ASCII, as `pxeforge serve` writes it)",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// One path segment, percent-encoded (names and MACs need none; anything else is escaped
/// rather than allowed to change the route).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `?k=v&...` from the pairs whose value is set; empty when none is.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
            any = true;
        }
    }
    if any {
        format!("?{}", q.finish())
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Output helpers

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC, so that every operator reads the
/// same time). Pure.
pub fn utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A JSON time (epoch seconds) for a table; `-` when absent.
fn time_cell(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_i64().map(utc).unwrap_or_else(|| n.to_string()),
        Value::String(s) => s.clone(),
        _ => "-".into(),
    }
}

/// A JSON value for a table cell: strings bare, `-` for null or missing.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Cuts `s` to `n` characters, marking the cut; control characters (a newline in an event
/// message) become spaces so that one row stays one line.
fn clip(s: &str, n: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() <= n {
        s
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Columns padded to their widest cell, two spaces apart, the last one not padded. Pure.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < n {
                let pad = width[i] - c.chars().count();
                let _ = write!(l, "{c}{}  ", " ".repeat(pad));
            } else {
                l.push_str(c);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `name  value` lines, the values aligned: one record. Pure.
fn fields(rows: &[Vec<String>]) -> String {
    let t = table(&["", ""], rows);
    // The empty header line is the first line.
    t.strip_prefix('\n').unwrap_or(&t).to_string()
}

/// `stage status: message` of an event, for one cell.
fn event_summary(ev: &Value) -> String {
    if ev.is_null() {
        return "-".into();
    }
    let mut s = format!("{} {}", cell(&ev["stage"]), cell(&ev["status"]));
    if let Some(m) = ev["message"].as_str().filter(|m| !m.is_empty()) {
        let _ = write!(s, ": {m}");
    }
    clip(&format!("{} {s}", time_cell(&ev["at"])), 80)
}

/// The facts a discovered machine reported, as a short text.
fn facts_summary(f: &Value) -> String {
    let get = |k: &str| f[k].as_str().filter(|s| !s.is_empty());
    let mut parts = Vec::new();
    match (get("manufacturer"), get("product")) {
        (Some(m), Some(p)) => parts.push(format!("{m} {p}")),
        (Some(x), None) | (None, Some(x)) => parts.push(x.to_string()),
        _ => {}
    }
    if let Some(s) = get("serial") {
        parts.push(format!("serial {s}"));
    }
    if let Some(p) = get("platform") {
        parts.push(p.to_string());
    }
    if parts.is_empty() {
        "-".into()
    } else {
        clip(&parts.join(", "), 60)
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pxeforge hosts

/// A build state (or a discovered machine's status) to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    /// Hosts that install at their next network boot
    Armed,
    /// Hosts whose installer fetched its kickstart and has not finished
    Installing,
    /// Hosts that boot their local disk
    Installed,
    /// Hosts whose install failed (they boot their local disk, or are armed again with
    /// install.on_failure = "rearm")
    Failed,
    /// Unknown machines that asked for a script, not yet approved or rejected
    Discovered,
    /// Unknown machines an operator rejected
    Rejected,
}

impl StateFilter {
    fn as_str(self) -> &'static str {
        match self {
            StateFilter::Armed => "armed",
            StateFilter::Installing => "installing",
            StateFilter::Installed => "installed",
            StateFilter::Failed => "failed",
            StateFilter::Discovered => "discovered",
            StateFilter::Rejected => "rejected",
        }
    }
}

/// The long help of `pxeforge hosts` (main.rs puts it on the command).
pub const HOSTS_LONG_ABOUT: &str =
    "List the inventory and the machines discovered on the boot network, with each \
                  host's build state and its last install event.\n\n\
                  Without a subcommand: one table of hosts (NAME, STATE, PROFILE, SOURCE = site \
                  for hosts/*.toml or approved for hosts approved through the API, SINCE, MACS, \
                  LAST EVENT), then one of discovered machines (MAC, STATUS, the profile a match \
                  rule suggests, when last seen, their facts), then whether installs are paused. \
                  Times are UTC.\n\n\
                  A STATE of `-` means the host is not installed from a kickstart (install = \
                  false, or a diskless or local profile).";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub command: Option<HostsCommand>,
    /// Only hosts in this build state (discovered/rejected: only those unknown machines)
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateFilter>,
    /// Print the API's JSON (`GET /api/hosts`, all pages in one document) instead of tables
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum HostsCommand {
    /// One host (by name or any of its MACs), or one discovered machine (by MAC): its record,
    /// its last 50 state changes and its last 50 events, newest first
    Show {
        /// Host name or MAC address (any common spelling)
        host: String,
        /// Print the API's JSON instead
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a discovered machine a host and arm it: it installs at its next network boot
    #[command(
        long_about = "Make a discovered machine a host of the fleet and arm it: at its next \
                      network boot it gets the install script of its profile.\n\n\
                      The server keeps the approved host in its state directory (SOURCE \
                      approved). To keep it in the site's git history as well, --write FILE \
                      appends it as a [[host]] entry to a hosts file of your checkout \
                      (e.g. hosts/rack-b.toml; created if missing), to review and commit. \
                      A host whose name or MAC that file already lists is refused before \
                      anything changes on the server."
    )]
    Approve(ApproveArgs),
    /// Make a discovered machine a host that keeps its disk (installed, not armed)
    #[command(
        long_about = "Make a discovered machine a host of the fleet without installing it: it is \
                      recorded as installed and goes on booting its local disk (a machine that \
                      was set up before pxeforge knew it). `pxeforge reinstall NAME` arms it \
                      later. --write FILE as for `hosts approve`."
    )]
    Adopt(ApproveArgs),
    /// Reject a discovered machine: it boots its local disk and is never installed by a
    /// profile's match rule
    Reject {
        /// The machine's MAC address
        mac: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop an armed or installing host: back to installed (it boots its local disk), its
    /// install token void
    #[command(
        long_about = "Stop a pending or running install: an armed or installing host goes back \
                      to installed, so its next network boot gets the local-disk script, and \
                      its build token is killed (a running installer can no longer fetch its \
                      kickstart or report). The server answers 409 for a host in any other state."
    )]
    Cancel {
        /// Host name
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The machine's MAC address (as listed by `pxeforge hosts`; any common spelling)
    pub mac: String,
    /// Host name (default: mac-<its 12 hex digits>)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Profile (default: the one a match rule suggests, shown in `pxeforge hosts`)
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Also append the host as a [[host]] entry to this hosts TOML file of your site checkout
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub fn hosts(args: &HostsArgs) -> Result<ExitCode> {
    match &args.command {
        None => hosts_list(args),
        Some(HostsCommand::Show { host, json, admin }) => hosts_show(admin, host, *json),
        Some(HostsCommand::Approve(a)) => approve(a, Approval::Approve),
        Some(HostsCommand::Adopt(a)) => approve(a, Approval::Adopt),
        Some(HostsCommand::Reject { mac, admin }) => reject(admin, mac),
        Some(HostsCommand::Cancel { name, admin }) => cancel(admin, name),
    }
}

/// The largest page the API gives.
const PAGE: u64 = 1000;

/// Every page of `GET /api/hosts` with `extra` query pairs, merged into one document of the
/// same shape (limit = everything, offset 0).
fn all_hosts(c: &Client, state: Option<&str>, host: Option<&str>) -> Result<Value> {
    let (mut hosts, mut discovered) = (Vec::new(), Vec::new());
    let mut offset = 0u64;
    let (mut total_hosts, mut total_discovered);
    loop {
        let path = format!(
            "/api/hosts{}",
            query(&[
                ("state", state.map(str::to_string)),
                ("host", host.map(str::to_string)),
                ("limit", Some(PAGE.to_string())),
                ("offset", Some(offset.to_string())),
            ])
        );
        let page = c.get(&path)?;
        let h = page["hosts"].as_array().cloned().unwrap_or_default();
        let d = page["discovered"].as_array().cloned().unwrap_or_default();
        total_hosts = page["total_hosts"].as_u64().unwrap_or(0);
        total_discovered = page["total_discovered"].as_u64().unwrap_or(0);
        let got = h.len().max(d.len()) as u64;
        hosts.extend(h);
        discovered.extend(d);
        offset += PAGE;
        // Both lists are paged by the same limit and offset; stop when neither has more (or a
        // page came back empty, whatever the totals say).
        if got == 0 || offset >= total_hosts.max(total_discovered) {
            break;
        }
    }
    Ok(json!({
        "hosts": hosts,
        "discovered": discovered,
        "total_hosts": total_hosts,
        "total_discovered": total_discovered,
        "limit": offset,
        "offset": 0,
    }))
}

fn hosts_list(args: &HostsArgs) -> Result<ExitCode> {
    let c = Client::connect(&args.admin)?;
    let doc = all_hosts(&c, args.state.map(StateFilter::as_str), None)?;
    if args.json {
        print_json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    let status = c.get("/api/status")?;
    print!("{}", render_hosts(&doc, &status));
    Ok(ExitCode::SUCCESS)
}

/// The tables of `pxeforge hosts`. Pure.
pub fn render_hosts(doc: &Value, status: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let hosts = doc["hosts"].as_array().unwrap_or(&empty);
    let discovered = doc["discovered"].as_array().unwrap_or(&empty);
    if !hosts.is_empty() {
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    cell(&h["name"]),
                    cell(&h["state"]),
                    cell(&h["profile"]),
                    cell(&h["source"]),
                    time_cell(&h["since"]),
                    cell(&h["macs"]),
                    event_summary(&h["last_event"]),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "NAME",
                "STATE",
                "PROFILE",
                "SOURCE",
                "SINCE",
                "MACS",
                "LAST EVENT",
            ],
            &rows,
        ));
    }
    if !discovered.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        let rows: Vec<Vec<String>> = discovered
            .iter()
            .map(|d| {
                vec![
                    cell(&d["mac"]),
                    cell(&d["status"]),
                    cell(&d["profile"]),
                    time_cell(&d["seen_at"]),
                    facts_summary(&d["facts"]),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "DISCOVERED MAC",
                "STATUS",
                "SUGGESTED",
                "LAST SEEN",
                "FACTS",
            ],
            &rows,
        ));
    }
    if hosts.is_empty() && discovered.is_empty() {
        out.push_str("no hosts and no discovered machines match\n");
    }
    let _ = writeln!(
        out,
        "\n{} host(s), {} discovered machine(s){}",
        doc["total_hosts"].as_u64().unwrap_or(hosts.len() as u64),
        doc["total_discovered"]
            .as_u64()
            .unwrap_or(discovered.len() as u64),
        status_line(status)
    );
    if discovered.iter().any(|d| d["status"] == "discovered") {
        out.push_str(
            "approve one with: pxeforge hosts approve MAC [--name NAME] [--profile PROFILE] [--write hosts/FILE.toml]\n",
        );
    }
    out
}

/// `; installs paused; 2 installing (at most 10); 1 stuck` from `GET /api/status`. Pure.
fn status_line(s: &Value) -> String {
    let mut out = String::new();
    if s["paused"] == true {
        out.push_str("; INSTALLS PAUSED (pxeforge resume)");
    }
    if let Some(n) = s["installing"].as_u64() {
        let _ = write!(out, "; {n} installing");
        match s["max_installing"].as_u64() {
            Some(0) | None => {}
            Some(m) => {
                let _ = write!(out, " (at most {m} at once)");
            }
        }
    }
    if let Some(n) = s["stuck"].as_u64().filter(|n| *n > 0) {
        let _ = write!(out, "; {n} STUCK (installing for too long)");
    }
    out
}

fn hosts_show(admin: &AdminArgs, who: &str, json_out: bool) -> Result<ExitCode> {
    let c = Client::connect(admin)?;
    let path = format!("/api/hosts/{}", seg(who));
    let a = c.send("GET", &path, None)?;
    if a.status == 404 {
        // Not a host: perhaps a machine discovered on the boot network.
        let doc = c.get(&format!(
            "/api/hosts{}",
            query(&[("host", Some(who.to_string()))])
        ))?;
        let Some(d) = doc["discovered"]
            .as_array()
            .and_then(|d| d.first())
            .cloned()
        else {
            return Err(c.refusal("GET", &path, &a));
        };
        let mac = d["mac"].as_str().unwrap_or(who).to_string();
        let events = c.get(&format!(
            "/api/events{}",
            query(&[("host", Some(mac)), ("limit", Some(PAGE.to_string()))])
        ))?;
        if json_out {
            print_json(&json!({"discovered": d, "events": events["events"]}))?;
        } else {
            print!(
                "{}",
                render_discovered(&d, &events["events"], "oldest first")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !(200..300).contains(&a.status) {
        return Err(c.refusal("GET", &path, &a));
    }
    if json_out {
        print_json(&a.body)?;
    } else if a.body["host"].is_null() && a.body["discovered"].is_object() {
        // A MAC of a machine discovered on the boot network, not of a host.
        print!(
            "{}",
            render_discovered(&a.body["discovered"], &a.body["events"], "newest first")
        );
    } else {
        print!("{}", render_host(&a.body));
    }
    Ok(ExitCode::SUCCESS)
}

/// `pxeforge hosts show` for a host. Pure.
pub fn render_host(doc: &Value) -> String {
    let h = &doc["host"];
    let mut out = String::new();
    let state = match (&h["state"], &h["since"]) {
        (Value::Null, _) => "- (not installed from a kickstart)".to_string(),
        (s, Value::Null) => cell(s),
        (s, since) => format!("{} since {}", cell(s), time_cell(since)),
    };
    let rows = vec![
        vec!["host".to_string(), cell(&h["name"])],
        vec!["macs".to_string(), cell(&h["macs"])],
        vec!["profile".to_string(), cell(&h["profile"])],
        vec!["source".to_string(), cell(&h["source"])],
        vec!["install".to_string(), cell(&h["install"])],
        vec!["state".to_string(), state],
    ];
    let mut rows = rows;
    // Only while a build is pinned to synced media: most hosts have none to show.
    if let Some(m) = h["media"].as_str() {
        rows.push(vec!["media".to_string(), m.to_string()]);
    }
    rows.push(vec![
        "last event".to_string(),
        event_summary(&h["last_event"]),
    ]);
    out.push_str(&fields(&rows));
    let history = doc["history"].as_array().cloned().unwrap_or_default();
    out.push_str("\nstate changes (newest first)\n");
    if history.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|t| {
                vec![
                    time_cell(&t["at"]),
                    cell(&t["from"]),
                    cell(&t["to"]),
                    clip(&cell(&t["cause"]), 60),
                    cell(&t["source"]),
                ]
            })
            .collect();
        out.push_str(&table(&["AT", "FROM", "TO", "CAUSE", "SOURCE"], &rows));
    }
    out.push_str("\nevents (newest first)\n");
    out.push_str(&events_table(&doc["events"], false));
    out
}

/// `pxeforge hosts show` for a discovered machine. Pure.
fn render_discovered(d: &Value, events: &Value, order: &str) -> String {
    let mut out = String::new();
    let facts = d["facts"]
        .as_object()
        .map(|f| {
            f.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "-".into());
    let rows = vec![
        vec!["discovered".to_string(), cell(&d["mac"])],
        vec!["status".to_string(), cell(&d["status"])],
        vec!["suggested".to_string(), cell(&d["profile"])],
        vec!["last seen".to_string(), time_cell(&d["seen_at"])],
        vec!["facts".to_string(), facts],
    ];
    out.push_str(&fields(&rows));
    let _ = write!(out, "\nevents ({order})\n");
    out.push_str(&events_table(events, false));
    out
}

/// Events as a table (`with_host`: a HOST column, for events of many hosts). Pure.
fn events_table(events: &Value, with_host: bool) -> String {
    let empty = Vec::new();
    let list = events.as_array().unwrap_or(&empty);
    if list.is_empty() {
        return "  none\n".into();
    }
    let rows: Vec<Vec<String>> = list.iter().map(|e| event_row(e, with_host)).collect();
    table(&event_headers(with_host), &rows)
}

fn event_headers(with_host: bool) -> Vec<&'static str> {
    let mut h = vec!["ID", "AT"];
    if with_host {
        h.extend(["HOST", "MAC"]);
    }
    h.extend(["STAGE", "STATUS", "FROM", "MESSAGE"]);
    h
}

fn event_row(e: &Value, with_host: bool) -> Vec<String> {
    let mut r = vec![cell(&e["id"]), time_cell(&e["at"])];
    if with_host {
        r.extend([cell(&e["host"]), cell(&e["mac"])]);
    }
    r.extend([
        cell(&e["stage"]),
        cell(&e["status"]),
        cell(&e["remote"]),
        clip(&cell(&e["message"]), 100),
    ]);
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approval {
    Approve,
    Adopt,
}

fn approve(a: &ApproveArgs, how: Approval) -> Result<ExitCode> {
    let mac: Mac = a
        .mac
        .parse()
        .map_err(|e| anyhow!("{e}"))
        .context("the machine to approve")?;
    // Refused before the server changes anything: a hosts file that cannot take the host.
    if let Some(file) = &a.write {
        let name = a.name.clone().unwrap_or_else(|| default_name(&mac));
        check_hosts_file(file, &name, &[mac])?;
    }
    let c = Client::connect(&a.admin)?;
    let mut body = serde_json::Map::new();
    if let Some(n) = &a.name {
        body.insert("name".into(), json!(n));
    }
    if let Some(p) = &a.profile {
        body.insert("profile".into(), json!(p));
    }
    let verb = match how {
        Approval::Approve => "approve",
        Approval::Adopt => "adopt",
    };
    let answer = c.post(
        &format!("/api/discovered/{}/{verb}", seg(&mac.to_string())),
        &Value::Object(body),
    )?;
    let h = &answer["host"];
    let name = h["name"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: the answer names no host: {answer}", c.base()))?;
    let profile = h["profile"].as_str().unwrap_or("?");
    match how {
        Approval::Approve => println!(
            "{mac}: approved as {name} (profile {profile}), {}: installs at its next network boot",
            cell(&h["state"])
        ),
        Approval::Adopt => println!(
            "{mac}: adopted as {name} (profile {profile}), {}: keeps booting its local disk",
            cell(&h["state"])
        ),
    }
    if let Some(file) = &a.write {
        let macs: Vec<Mac> = h["macs"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str()?.parse().ok())
                    .collect::<Vec<Mac>>()
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| vec![mac]);
        append_host(file, name, &macs, profile, verb).with_context(|| {
            format!(
                "{name} is {} on the server, but was not written to {}",
                if verb == "adopt" {
                    "adopted"
                } else {
                    "approved"
                },
                file.display()
            )
        })?;
        println!(
            "{name}: added to {} (review and commit it: the site then lists the host itself)",
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The server's default name for an approved machine: `mac-` and its 12 hex digits.
fn default_name(mac: &Mac) -> String {
    format!("mac-{}", mac.to_string().replace(':', ""))
}

/// The `[[host]]` entries of a hosts file: (name, MACs). A missing file has none.
fn hosts_in_file(file: &Path) -> Result<Vec<(String, Vec<Mac>)>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow!("{}: not a hosts file: {}", file.display(), e.message()))?;
    let mut out = Vec::new();
    let entries = match doc.get("host") {
        None => return Ok(out),
        Some(toml::Value::Array(a)) => a,
        Some(_) => bail!(
            "{}: `host` is not a list of [[host]] tables",
            file.display()
        ),
    };
    for e in entries {
        let name = e
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let macs = match e.get("mac") {
            Some(toml::Value::String(s)) => vec![s.clone()],
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let macs = macs.iter().filter_map(|m| m.parse().ok()).collect();
        out.push((name, macs));
    }
    Ok(out)
}

/// Refuses a host the file already lists by name or by one of its MACs (the site would then
/// fail `pxeforge check`).
fn check_hosts_file(file: &Path, name: &str, macs: &[Mac]) -> Result<()> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "--write {}: no directory {} (the hosts/ folder of your site checkout?)",
                file.display(),
                parent.display()
            );
        }
    }
    for (n, ms) in hosts_in_file(file)? {
        if n == name {
            bail!(
                "{} already has a host named {name:?}: pass another --name",
                file.display()
            );
        }
        if let Some(m) = macs.iter().find(|m| ms.contains(m)) {
            bail!("{} already lists MAC {m} (host {n:?})", file.display());
        }
    }
    Ok(())
}

/// The `[[host]]` entry as the site's hosts/*.toml write it (see hosts/lab.toml). Pure.
pub fn host_entry(name: &str, macs: &[Mac], profile: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mac = match macs {
        [one] => q(&one.to_string()),
        many => format!(
            "[{}]",
            many.iter()
                .map(|m| q(&m.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "[[host]]\nname = {}\nmac = {mac}\nprofile = {}\n",
        q(name),
        q(profile)
    )
}

/// Appends the host to `file` (created if missing), after checking it again with the name the
/// server chose.
fn append_host(file: &Path, name: &str, macs: &[Mac], profile: &str, verb: &str) -> Result<()> {
    use std::io::Write;
    check_hosts_file(file, name, macs)?;
    let existing = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut text = String::new();
    if !existing.is_empty() {
        if !existing.ends_with(b"\n") {
            text.push('\n');
        }
        text.push('\n');
    }
    // Says where the entry came from, for whoever reviews the commit.
    let today = utc(crate::events::now());
    let done = if verb == "adopt" {
        "adopted"
    } else {
        "approved"
    };
    let _ = writeln!(
        text,
        "# {done} with `pxeforge hosts {verb}` on {}",
        &today[..10]
    );
    text.push_str(&host_entry(name, macs, profile));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

fn reject(admin: &AdminArgs, mac: &str) -> Result<ExitCode> {
    let mac: Mac = mac.parse().map_err(|e| anyhow!("{e}"))?;
    let c = Client::connect(admin)?;
    let a = c.post(
        &format!("/api/discovered/{}/reject", seg(&mac.to_string())),
        &json!({}),
    )?;
    println!(
        "{mac}: {}: it boots its local disk and no match rule installs it",
        cell(&a["status"])
    );
    Ok(ExitCode::SUCCESS)
}

fn cancel(admin: &AdminArgs, name: &str) -> Result<ExitCode> {
    let c = Client::connect(admin)?;
    let a = c.post(&format!("/api/hosts/{}/cancel", seg(name)), &json!({}))?;
    println!(
        "{}: {}: its next network boot gets the local-disk script; its install token is void",
        a["host"].as_str().unwrap_or(name),
        cell(&a["state"])
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// pxeforge events

/// The long help of `pxeforge events`.
pub const EVENTS_LONG_ABOUT: &str =
    "Print install and discovery events: what installers reported (%pre, %post, \
                  finished, failed) and the machines that asked for a script, with the address \
                  each came from. Times are UTC.\n\n\
                  Without --follow: the newest --last events (oldest first). With --follow: \
                  those, then every new event as it arrives (polled every second) until \
                  Ctrl-C; with --json, one JSON event per line.";

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only the events of this host (name) or machine (MAC)
    #[arg(long, value_name = "NAME|MAC")]
    pub host: Option<String>,
    /// Keep printing new events as they arrive
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// How many of the newest events to print first
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub last: usize,
    /// Only events with an id above this one (all of them, not just the newest --last)
    #[arg(long, value_name = "ID")]
    pub after: Option<i64>,
    /// Print the API's JSON (with --follow: one event per line)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// One page of `GET /api/events`: its events and the id to ask after next.
fn events_page(c: &Client, host: Option<&str>, after: i64) -> Result<(Vec<Value>, i64)> {
    let path = format!(
        "/api/events{}",
        query(&[
            ("host", host.map(str::to_string)),
            ("after", Some(after.to_string())),
            ("limit", Some(PAGE.to_string())),
        ])
    );
    let page = c.get(&path)?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    let last = events
        .last()
        .and_then(|e| e["id"].as_i64())
        .or_else(|| page["last_id"].as_i64())
        .unwrap_or(after)
        .max(after);
    Ok((events, last))
}

pub fn events(args: &EventsArgs) -> Result<ExitCode> {
    let c = Client::connect(&args.admin)?;
    let host = args.host.as_deref();
    // Catch up: every page after --after (or from the oldest kept), keeping the newest --last
    // unless --after asked for all of them.
    let mut after = args.after.unwrap_or(0);
    let mut kept: std::collections::VecDeque<Value> = Default::default();
    loop {
        let (page, last) = events_page(&c, host, after)?;
        let n = page.len();
        for e in page {
            kept.push_back(e);
            if args.after.is_none() && kept.len() > args.last {
                kept.pop_front();
            }
        }
        after = last;
        if (n as u64) < PAGE {
            break;
        }
    }
    let kept: Vec<Value> = kept.into();
    if !args.follow {
        if args.json {
            print_json(&json!({"events": kept, "last_id": after}))?;
        } else if kept.is_empty() {
            println!("no events");
        } else {
            print!("{}", events_table(&Value::Array(kept), host.is_none()));
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(&c, host, after, &kept, args.json)
}

/// Fixed column widths for followed events, which cannot be measured ahead.
const FOLLOW_WIDTHS: [usize; 7] = [7, 20, 16, 17, 10, 9, 15];

fn follow_line(e: &Value, host_column: bool) -> String {
    let cells = event_row(e, true);
    let mut l = String::new();
    for (i, c) in cells.iter().enumerate() {
        if !host_column && (i == 2 || i == 3) {
            continue;
        }
        if i + 1 < cells.len() {
            let _ = write!(l, "{c:<w$}  ", w = FOLLOW_WIDTHS[i]);
        } else {
            l.push_str(c);
        }
    }
    l.trim_end().to_string()
}

fn follow(
    c: &Client,
    host: Option<&str>,
    mut after: i64,
    first: &[Value],
    json_out: bool,
) -> Result<ExitCode> {
    use std::io::Write;
    let print = |e: &Value| -> Result<()> {
        let mut out = std::io::stdout().lock();
        if json_out {
            writeln!(out, "{e}")?;
        } else {
            writeln!(out, "{}", follow_line(e, host.is_none()))?;
        }
        out.flush()?;
        Ok(())
    };
    if !json_out {
        let headers = event_headers(true);
        let head = json!({
            "id": headers[0], "at": headers[1], "host": headers[2], "mac": headers[3],
            "stage": headers[4], "status": headers[5], "remote": headers[6], "message": headers[7],
        });
        println!("{}", follow_line(&head, host.is_none()));
    }
    for e in first {
        print(e)?;
    }
    // A server that restarts or is briefly unreachable is waited for (said once per outage);
    // a refusal (a wrong token, a bad request) ends the command.
    let mut down = false;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        match events_page(c, host, after) {
            Ok((page, last)) => {
                if down {
                    eprintln!("pxeforge: the admin API answers again");
                    down = false;
                }
                for e in &page {
                    print(e)?;
                }
                after = last;
            }
            Err(e)
                if e.chain()
                    .any(|c| c.downcast_ref::<reqwest::Error>().is_some()) =>
            {
                if !down {
                    eprintln!("pxeforge: {e:#}; retrying every second");
                    down = true;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pxeforge pause / resume

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `POST /api/pause` or `/api/resume`.
pub fn pause(admin: &AdminArgs, pause: bool) -> Result<ExitCode> {
    let c = Client::connect(admin)?;
    let path = if pause { "/api/pause" } else { "/api/resume" };
    let a = c.post(path, &json!({}))?;
    match a["paused"].as_bool() {
        Some(true) => println!(
            "installs paused: every host that would install gets its local-disk script until `pxeforge resume` (installs under way go on)"
        ),
        Some(false) => println!("installs resumed: armed hosts install at their next network boot"),
        None => bail!("POST {}{path}: unexpected answer {a}", c.base()),
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// pxeforge reinstall through the API

/// What to arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Hosts(Vec<String>),
    Profile(String),
    All,
}

/// The body of `POST /api/reinstall`. Pure.
pub fn reinstall_body(sel: &Selection, dry_run: bool) -> Value {
    let mut b = match sel {
        Selection::Hosts(h) => json!({ "hosts": h }),
        Selection::Profile(p) => json!({ "profile": p }),
        Selection::All => json!({ "all": true }),
    };
    if dry_run {
        b["dry_run"] = json!(true);
    }
    b
}

/// Arms hosts through the admin API. A whole profile or the whole site without `yes` is a dry
/// run: it prints what would be armed, changes nothing and exits 1.
pub fn reinstall(admin: &AdminArgs, sel: &Selection, yes: bool) -> Result<ExitCode> {
    let c = Client::connect(admin)?;
    let dry_run = !yes && !matches!(sel, Selection::Hosts(_));
    // The states before, so that each line says what changed, as the offline mode does.
    let before = states(&c, sel)?;
    let a = c.post("/api/reinstall", &reinstall_body(sel, dry_run))?;
    let (text, code) = render_reinstall(&a, &before, sel, dry_run);
    print!("{text}");
    Ok(ExitCode::from(code))
}

/// The build state of each host the selection may touch (all hosts unless it names them).
fn states(c: &Client, sel: &Selection) -> Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    let mut take = |doc: &Value| {
        for h in doc["hosts"].as_array().into_iter().flatten() {
            if let Some(n) = h["name"].as_str() {
                out.insert(n.to_string(), cell(&h["state"]));
            }
        }
    };
    match sel {
        // A few names: one small request each (an unknown one is left to the POST's 404).
        Selection::Hosts(names) if names.len() <= 20 => {
            for n in names {
                take(&all_hosts(c, None, Some(n))?);
            }
        }
        _ => take(&all_hosts(c, None, None)?),
    }
    Ok(out)
}

/// The lines of `pxeforge reinstall` and its exit code. Pure.
pub fn render_reinstall(
    a: &Value,
    before: &std::collections::HashMap<String, String>,
    sel: &Selection,
    dry_run: bool,
) -> (String, u8) {
    let mut out = String::new();
    let armed: Vec<&str> = a["armed"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let skipped: Vec<(String, String)> = a["skipped"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|s| (cell(&s["host"]), cell(&s["why"])))
                .collect()
        })
        .unwrap_or_default();
    let from = |n: &str| before.get(n).cloned().unwrap_or_else(|| "?".into());
    if dry_run {
        let what = match sel {
            Selection::Profile(p) => format!("every installable host of profile {p}"),
            _ => "every installable host of the site".to_string(),
        };
        let _ = writeln!(
            out,
            "this would arm {} host(s), {what} (nothing changed: add --yes to do it):",
            armed.len()
        );
        for n in &armed {
            let _ = writeln!(out, "  {n}: {} -> armed", from(n));
        }
        for (n, why) in &skipped {
            let _ = writeln!(out, "  {n}: would be skipped: {why}");
        }
        return (out, 1);
    }
    for n in &armed {
        let _ = writeln!(
            out,
            "{n}: {} -> armed: installs at its next network boot",
            from(n)
        );
    }
    for (n, why) in &skipped {
        let _ = writeln!(out, "{n}: not armed: {why}");
    }
    // Named hosts must all be armed; a profile or the site may hold hosts that cannot be.
    let failed = match sel {
        Selection::Hosts(_) => !skipped.is_empty(),
        _ => armed.is_empty() && !skipped.is_empty(),
    };
    if armed.is_empty() && skipped.is_empty() {
        out.push_str("nothing to arm\n");
    }
    (out, u8::from(failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_735_689_599), "2024-12-31 23:59:59Z");
        assert_eq!(utc(1_767_225_600 + 3_723), "2026-01-01 01:02:03Z");
    }

    #[test]
    fn tables_align_and_leave_the_last_column_unpadded() {
        let t = table(
            &["NAME", "STATE", "NOTE"],
            &[
                vec!["a".into(), "installed".into(), "x".into()],
                vec!["longer-name".into(), "armed".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME         STATE      NOTE\n\
             a            installed  x\n\
             longer-name  armed\n"
        );
    }

    #[test]
    fn defaults_follow_the_servers_rules() {
        let site = Path::new("/srv/site");
        let mut s = Settings::default();
        let d = defaults_from(site, &s);
        assert_eq!(d.url, "http://127.0.0.1:8081");
        assert_eq!(d.token_file, PathBuf::from("/srv/site/state/admin.token"));
        assert_eq!(d.cacert, None);
        s.server.state_dir = PathBuf::from("/var/lib/pxeforge");
        s.admin.listen = "0.0.0.0:9443".parse().unwrap();
        s.admin.tls_cert = Some(PathBuf::from("tls/admin.crt"));
        s.admin.tls_key = Some(PathBuf::from("tls/admin.key"));
        let d = defaults_from(site, &s);
        assert_eq!(d.url, "https://127.0.0.1:9443");
        assert_eq!(d.token_file, PathBuf::from("/var/lib/pxeforge/admin.token"));
        assert_eq!(d.cacert, Some(PathBuf::from("/srv/site/tls/admin.crt")));
        s.admin.token_file = PathBuf::from("/etc/pxeforge/token");
        s.admin.tls_key = None;
        let d = defaults_from(site, &s);
        assert_eq!(d.url, "http://127.0.0.1:9443", "TLS needs both files");
        assert_eq!(d.token_file, PathBuf::from("/etc/pxeforge/token"));
    }

    #[test]
    fn settings_of_the_example_site_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let d = defaults(root).unwrap();
        assert!(d.url.starts_with("http"), "{d:?}");
        let none = defaults(Path::new("/nonexistent")).unwrap();
        assert_eq!(none.url, "http://127.0.0.1:8081");
    }

    #[test]
    fn path_segments_and_queries_are_escaped() {
        assert_eq!(seg("vm-bios-01"), "vm-bios-01");
        assert_eq!(seg("52:54:00:00:10:01"), "52:54:00:00:10:01");
        assert_eq!(seg("a/../b c"), "a%2F..%2Fb%20c");
        assert_eq!(
            query(&[("state", Some("armed".into())), ("host", None)]),
            "?state=armed"
        );
        assert_eq!(query(&[("host", Some("a&b=c".into()))]), "?host=a%26b%3Dc");
        assert_eq!(query(&[("host", None)]), "");
    }

    #[test]
    fn host_entries_are_written_as_the_site_reads_them() {
        let m1: Mac = "52:54:00:AB:CD:01".parse().unwrap();
        let m2: Mac = "5254.00ab.cd02".parse().unwrap();
        let one = host_entry("web-01", &[m1], "qemu-bios");
        assert_eq!(
            one,
            "[[host]]\nname = \"web-01\"\nmac = \"52:54:00:ab:cd:01\"\nprofile = \"qemu-bios\"\n"
        );
        let two = host_entry("db-02", &[m1, m2], "dell-r650");
        assert!(
            two.contains("mac = [\"52:54:00:ab:cd:01\", \"52:54:00:ab:cd:02\"]"),
            "{two}"
        );
        // The site's own parser takes it.
        let parsed: pxeforge_site::host::HostsFile = toml::from_str(&two).unwrap();
        assert_eq!(parsed.host.len(), 1);
        assert_eq!(parsed.host[0].get_ref().name.get_ref(), "db-02");
        assert_eq!(default_name(&m1), "mac-525400abcd01");
    }

    #[test]
    fn writing_a_hosts_file_appends_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rack-b.toml");
        let m1: Mac = "52:54:00:00:50:01".parse().unwrap();
        let m2: Mac = "52:54:00:00:50:02".parse().unwrap();
        // Created when missing.
        append_host(&file, "rack-b-01", &[m1], "qemu-bios", "approve").unwrap();
        // An existing file without a final newline is continued cleanly.
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("# a hand-written note");
        std::fs::write(&file, &text).unwrap();
        append_host(&file, "rack-b-02", &[m2], "qemu-uefi", "adopt").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# approved with `pxeforge hosts approve` on "),
            "{text}"
        );
        assert!(
            text.contains("# a hand-written note\n\n# adopted with"),
            "{text}"
        );
        let parsed: pxeforge_site::host::HostsFile = toml::from_str(&text).unwrap();
        assert_eq!(parsed.host.len(), 2);
        assert_eq!(
            hosts_in_file(&file).unwrap(),
            vec![
                ("rack-b-01".to_string(), vec![m1]),
                ("rack-b-02".to_string(), vec![m2])
            ]
        );
        // The same name, or a MAC the file lists, is refused; the file is left as it was.
        let e = check_hosts_file(&file, "rack-b-01", &["52:54:00:00:50:09".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has a host named \"rack-b-01\""), "{e}");
        let e = append_host(&file, "rack-b-03", &[m2], "qemu-bios", "approve")
            .unwrap_err()
            .to_string();
        assert!(e.contains("already lists MAC 52:54:00:00:50:02"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        // A file that is not TOML is named, never overwritten.
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[host]\n").unwrap();
        let e = check_hosts_file(&bad, "x", &[m1]).unwrap_err().to_string();
        assert!(e.contains("bad.toml: not a hosts file"), "{e}");
        let e = check_hosts_file(&dir.path().join("no/such/dir.toml"), "x", &[m1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no directory"), "{e}");
    }

    #[test]
    fn hosts_tables() {
        let doc = json!({
            "hosts": [
                {"name": "vm-bios-01", "macs": ["52:54:00:00:10:01"], "profile": "qemu-bios",
                 "install": true, "source": "site", "state": "armed", "since": 0,
                 "last_event": {"id": 3, "stage": "install", "status": "finished", "message": "done", "at": 60}},
                {"name": "vm-keep-01", "macs": ["52:54:00:00:30:01"], "profile": "qemu-bios",
                 "install": false, "source": "site", "state": null, "since": null, "last_event": null}
            ],
            "discovered": [
                {"mac": "02:00:00:00:00:99", "profile": "dell-r650", "status": "discovered",
                 "facts": {"manufacturer": "Dell Inc.", "product": "PowerEdge R650", "serial": "X1"},
                 "seen_at": 120, "last_event": null}
            ],
            "total_hosts": 2, "total_discovered": 1, "limit": 100, "offset": 0
        });
        let status = json!({"paused": true, "installing": 1, "max_installing": 4, "stuck": 0});
        let t = render_hosts(&doc, &status);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAME        STATE  PROFILE    SOURCE  SINCE"),
            "{t}"
        );
        assert!(
            lines[1].contains("vm-bios-01  armed  qemu-bios  site    1970-01-01 00:00:00Z"),
            "{t}"
        );
        assert!(
            lines[1].ends_with("1970-01-01 00:01:00Z install finished: done"),
            "{t}"
        );
        assert!(lines[2].starts_with("vm-keep-01  -      "), "{t}");
        assert!(t.contains("02:00:00:00:00:99  discovered  dell-r650  1970-01-01 00:02:00Z  Dell Inc. PowerEdge R650, serial X1"), "{t}");
        assert!(t.contains("2 host(s), 1 discovered machine(s); INSTALLS PAUSED (pxeforge resume); 1 installing (at most 4 at once)"), "{t}");
        assert!(t.contains("pxeforge hosts approve MAC"), "{t}");
    }

    #[test]
    fn one_host_in_detail() {
        let doc = json!({
            "host": {"name": "vm-bios-01", "macs": ["52:54:00:00:10:01"], "profile": "qemu-bios",
                     "install": true, "source": "site", "state": "installed", "since": 86400,
                     "last_event": null},
            "history": [{"host": "vm-bios-01", "from": "installing", "to": "installed",
                         "cause": "finished", "source": "10.0.0.5", "at": 86400}],
            "events": [{"id": 9, "mac": "52:54:00:00:10:01", "host": "vm-bios-01", "stage": "install",
                        "status": "finished", "message": "done\nreally", "at": 86400, "remote": "10.0.0.5"}]
        });
        let t = render_host(&doc);
        assert!(t.starts_with("host        vm-bios-01\n"), "{t}");
        assert!(
            t.contains("state       installed since 1970-01-02 00:00:00Z\n"),
            "{t}"
        );
        assert!(
            t.contains("1970-01-02 00:00:00Z  installing  installed  finished  10.0.0.5"),
            "{t}"
        );
        assert!(
            t.contains("9   1970-01-02 00:00:00Z  install  finished  10.0.0.5  done really"),
            "{t}"
        );
    }

    #[test]
    fn reinstall_answers() {
        let before: HashMap<String, String> = [
            ("a".to_string(), "installed".to_string()),
            ("b".to_string(), "failed".to_string()),
        ]
        .into();
        let sel = Selection::Profile("qemu-bios".into());
        assert_eq!(
            reinstall_body(&sel, true),
            json!({"profile": "qemu-bios", "dry_run": true})
        );
        assert_eq!(reinstall_body(&Selection::All, false), json!({"all": true}));
        assert_eq!(
            reinstall_body(&Selection::Hosts(vec!["a".into()]), false),
            json!({"hosts": ["a"]})
        );
        let a = json!({"armed": ["a", "b"], "skipped": [{"host": "k", "why": "install = false"}], "dry_run": true});
        let (t, code) = render_reinstall(&a, &before, &sel, true);
        assert_eq!(code, 1);
        assert!(t.starts_with("this would arm 2 host(s), every installable host of profile qemu-bios (nothing changed: add --yes to do it):\n"), "{t}");
        assert!(t.contains("  b: failed -> armed\n"), "{t}");
        assert!(
            t.contains("  k: would be skipped: install = false\n"),
            "{t}"
        );
        let a = json!({"armed": ["a"], "skipped": [], "dry_run": false});
        let (t, code) = render_reinstall(&a, &before, &Selection::Hosts(vec!["a".into()]), false);
        // The offline mode's line, which vm-test and scripts read.
        assert_eq!(
            (t.as_str(), code),
            (
                "a: installed -> armed: installs at its next network boot\n",
                0
            )
        );
        let a = json!({"armed": [], "skipped": [{"host": "k", "why": "install = false"}]});
        let (t, code) = render_reinstall(&a, &before, &Selection::Hosts(vec!["k".into()]), false);
        assert_eq!((t.as_str(), code), ("k: not armed: install = false\n", 1));
    }
}
