//! Harness for the end-to-end tests: runs the real `pxeforge` binary and real clients.

pub use pxeforge_child::ServeChild;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The repository root, which is also the example site.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `pxeforge` binary: `$PXEFORGE_BIN`, or the one cargo built beside this test binary.
pub fn pxeforge_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PXEFORGE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/pxeforge
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("pxeforge");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p pxeforge-server` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Reports a test that cannot run here and returns early: prints `SKIP: why` and appends it to
/// `$PXEFORGE_SKIP_LOG` (set by `scripts/test.sh`), because the test harness hides the output of
/// a test that returns normally — a skip must never look like a silent pass.
pub fn skip(why: impl std::fmt::Display) {
    let line = format!("SKIP: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("PXEFORGE_SKIP_LOG") {
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {line}");
        }
    }
}

/// True when `cmd` can be run; tests that need it print a SKIP line otherwise.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A copy of the example site in a temporary folder, with a state directory beside it (not
/// created: `serve` makes it).
pub struct TempSite {
    _dir: tempfile::TempDir,
    pub site: PathBuf,
    pub state: PathBuf,
}

impl TempSite {
    pub fn new() -> TempSite {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("site");
        std::fs::create_dir_all(&site).expect("site");
        copy_example_site(&site);
        let state = dir.path().join("state");
        TempSite {
            site,
            state,
            _dir: dir,
        }
    }

    /// `serve` of the site on loopback without TFTP, with its own state directory.
    pub fn serve(&self) -> Server {
        Server::start(
            &self.site,
            &["--no-tftp", "--state", self.state.to_str().expect("utf-8")],
        )
    }
}

impl Default for TempSite {
    fn default() -> Self {
        TempSite::new()
    }
}

/// Copies the example site's definition (not its state) into `dst`, for tests that edit it.
pub fn copy_example_site(dst: &Path) {
    let root = repo_root();
    std::fs::copy(root.join("pxeforge.toml"), dst.join("pxeforge.toml"))
        .expect("copy pxeforge.toml");
    for d in ["profiles", "hosts", "templates", "kickstarts", "images"] {
        copy_dir(&root.join(d), &dst.join(d));
    }
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    let Ok(rd) = std::fs::read_dir(src) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let t = dst.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else if p.is_file() {
            std::fs::copy(&p, &t).expect("copy file");
        }
    }
}

/// A running `pxeforge serve`; killed on drop.
pub struct Server {
    pub child: Child,
    /// The boot listener.
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    /// The admin API's listener (plain HTTP on loopback unless the test's args say otherwise).
    pub admin: SocketAddr,
    /// The bearer token of the admin API, read from the file the ready line names.
    pub admin_token: String,
    pub admin_token_file: PathBuf,
    pub stdout: Vec<String>,
    pub log: PathBuf,
}

impl Server {
    /// Starts `pxeforge serve --site SITE --http 127.0.0.1:0 --admin 127.0.0.1:0 ARGS...` and
    /// waits for `ready` (either address flag is left out when ARGS name it).
    pub fn start(site: &Path, args: &[&str]) -> Server {
        let log = site.join("serve.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(pxeforge_bin());
        cmd.arg("serve").arg("--site").arg(site);
        if !args.contains(&"--http") {
            cmd.args(["--http", "127.0.0.1:0"]);
        }
        // Port 0: tests run in parallel, and the default admin port would collide.
        if !args.contains(&"--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        cmd.args(args).env("PXEFORGE_LOG", "info").stderr(logf);
        // pxeforge-child reads the startup lines (and keeps stdout drained afterwards).
        let serve = match ServeChild::start(cmd, Duration::from_secs(60)) {
            Ok(serve) => serve,
            Err(e) => {
                let stdout = e.lines();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("pxeforge did not become ready: {e}; stdout: {stdout:?}\nlog:\n{log}");
            }
        };
        // The Server stops the process itself (Drop below), as tests use its `child` directly.
        let (child, ready) = serve.into_child();
        let Some(admin) = ready.admin.clone() else {
            panic!(
                "no admin listener line in the startup lines: {:?}",
                ready.lines
            );
        };
        let admin_token = admin.token().unwrap_or_else(|e| {
            panic!(
                "reading the admin token {}: {e}",
                admin.token_file.display()
            )
        });
        Server {
            child,
            http: ready.http.expect("http address line"),
            tftp: ready.tftp,
            admin: admin.addr,
            admin_token,
            admin_token_file: admin.token_file,
            stdout: ready.lines,
            log,
        }
    }

    /// A URL on the boot listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `GET path` on the admin listener with the token: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let url = self.admin_url(path);
        let r = admin_client()
            .get(&url)
            .bearer_auth(&self.admin_token)
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// `POST path` with a JSON body on the admin listener with the token: (status, body).
    pub fn admin_post(&self, path: &str, json: &serde_json::Value) -> (u16, String) {
        let url = self.admin_url(path);
        let r = admin_client()
            .post(&url)
            .bearer_auth(&self.admin_token)
            .json(json)
            .send()
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// `GET /metrics` on the admin listener (where it always is), failing the test unless 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "GET /metrics on the admin listener: {body}");
        body
    }

    /// Runs `pxeforge ARGS... --server URL --token-file FILE`: an operator's command against
    /// this server. Returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--server".to_string(),
            format!("http://{}", self.admin),
            "--token-file".to_string(),
            self.admin_token_file.display().to_string(),
        ]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        pxeforge(&a)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("kill");
    }

    /// Polls the log until `needle` appears `count` times or 20 s pass.
    pub fn wait_log(&self, needle: &str, count: usize) -> bool {
        for _ in 0..200 {
            if self.log_text().matches(needle).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client for the admin helpers; requests to a local server need no proxy.
fn admin_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Runs `pxeforge ARGS...`, returning (exit code, stdout, stderr).
pub fn pxeforge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(pxeforge_bin())
        .args(args)
        .output()
        .expect("run pxeforge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pxeforge reinstall ARGS --site SITE --state STATE`: (exit code, stdout and stderr). With
/// `--state` the command writes the store itself (its offline mode), so it works with no server
/// running, and a running server sees the change at its next request.
pub fn reinstall(site: &Path, state: &Path, args: &[&str]) -> (i32, String) {
    let mut a = vec!["reinstall"];
    a.extend_from_slice(args);
    let (site, state) = (site.to_string_lossy(), state.to_string_lossy());
    a.extend(["--site", &site, "--state", &state]);
    let (code, out, err) = pxeforge(&a);
    (code, format!("{out}{err}"))
}

/// Arms hosts (`pxeforge reinstall ARGS`), failing the test if that fails: a new state store
/// adopts every host as installed, so a test that wants an install script arms first.
pub fn arm(site: &Path, state: &Path, args: &[&str]) {
    let (code, out) = reinstall(site, state, args);
    assert_eq!(code, 0, "pxeforge reinstall {args:?}: {out}");
}

/// `GET url`: (status, body).
pub fn get(c: &reqwest::blocking::Client, url: &str) -> (u16, String) {
    let r = c
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// The boot listener's `/ipxe?QUERY`, failing the test unless 200.
pub fn script(c: &reqwest::blocking::Client, srv: &Server, query: &str) -> String {
    let (code, body) = get(c, &srv.url(&format!("/ipxe?{query}")));
    assert_eq!(code, 200, "/ipxe?{query}: {body}");
    body
}

/// The kickstart URL of an install script (its `inst.ks=`), or `None` for any other script.
pub fn ks_url(script: &str) -> Option<String> {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inst.ks="))
        .map(str::to_string)
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
