//! `pxeforge serve` as a child process, and the one parser of its startup contract.
//!
//! On stdout, `serve` prints one line per listener it bound, then `pxeforge: ready` once every
//! listener accepts (and SIGHUP reloads rather than kills):
//!
//! ```text
//! pxeforge: tftp listening on 127.0.0.1:40123
//! pxeforge: dhcp proxy listening on 0.0.0.0:67 (interface lo)
//! pxeforge: http listening on 127.0.0.1:8080
//! pxeforge: admin listening on 127.0.0.1:8081 (http, token file /srv/pxe/state/admin.token)
//! pxeforge: ready
//! ```
//!
//! [`parse_line`] reads one such line; [`Listening`] collects them; [`ServeChild`] starts the
//! process, waits for `ready`, keeps its stdout drained and kills it when dropped.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The line that ends the startup.
pub const READY: &str = "pxeforge: ready";

/// One DHCP socket `serve` bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpListener {
    /// `proxy` or `reservation`.
    pub mode: String,
    pub addr: SocketAddr,
    /// The interface the socket is bound to, `any` if none.
    pub interface: String,
}

/// The admin API's listener: where it is, whether it speaks TLS, and the file holding the
/// bearer token every request needs (absolute, as `serve` resolved it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminListener {
    pub addr: SocketAddr,
    /// `https` rather than `http`.
    pub tls: bool,
    pub token_file: PathBuf,
}

impl AdminListener {
    /// The base URL of the API, e.g. `http://127.0.0.1:8081` (no trailing slash).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The token, read from its file and trimmed as the server does.
    pub fn token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(&self.token_file)?
            .trim()
            .to_string())
    }
}

/// A line of the startup contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyLine {
    Http(SocketAddr),
    Tftp(SocketAddr),
    Dhcp(DhcpListener),
    Admin(AdminListener),
    Ready,
}

/// Reads one stdout line of `serve`; `None` for any other line (the help text after `ready`,
/// or a contract line whose address does not parse). Surrounding whitespace, a `\r` included,
/// is ignored.
pub fn parse_line(line: &str) -> Option<ReadyLine> {
    let line = line.trim();
    if line == READY {
        return Some(ReadyLine::Ready);
    }
    let rest = line.strip_prefix("pxeforge: ")?;
    if let Some(a) = rest.strip_prefix("http listening on ") {
        return a.parse().ok().map(ReadyLine::Http);
    }
    if let Some(a) = rest.strip_prefix("tftp listening on ") {
        return a.parse().ok().map(ReadyLine::Tftp);
    }
    // admin listening on <addr> (http|https, token file <path>): the path comes last and is
    // taken whole up to the final ')', so that one with spaces or parentheses survives.
    if let Some(a) = rest.strip_prefix("admin listening on ") {
        let (addr, rest) = a.split_once(" (")?;
        let (scheme, path) = rest.strip_suffix(')')?.split_once(", token file ")?;
        let tls = match scheme {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        if path.is_empty() {
            return None;
        }
        return Some(ReadyLine::Admin(AdminListener {
            addr: addr.parse().ok()?,
            tls,
            token_file: PathBuf::from(path),
        }));
    }
    // dhcp <mode> listening on <addr> (interface <name>)
    let rest = rest.strip_prefix("dhcp ")?;
    let (mode, rest) = rest.split_once(" listening on ")?;
    let (addr, rest) = rest.split_once(" (interface ")?;
    let interface = rest.strip_suffix(')')?;
    let mode_ok = !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !mode_ok || interface.is_empty() {
        return None;
    }
    Some(ReadyLine::Dhcp(DhcpListener {
        mode: mode.to_string(),
        addr: addr.parse().ok()?,
        interface: interface.to_string(),
    }))
}

/// What the startup lines said so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listening {
    pub http: Option<SocketAddr>,
    pub tftp: Option<SocketAddr>,
    pub dhcp: Vec<DhcpListener>,
    /// The admin API (`serve` prints it when the admin listener is bound).
    pub admin: Option<AdminListener>,
    /// `pxeforge: ready` was seen.
    pub ready: bool,
    /// Every stdout line up to and including `pxeforge: ready`, as printed.
    pub lines: Vec<String>,
}

impl Listening {
    /// Takes one stdout line into account; true when it is the `ready` line. Lines after `ready`
    /// are not collected: the contract ends there.
    pub fn observe(&mut self, line: &str) -> bool {
        if self.ready {
            return false;
        }
        self.lines.push(line.to_string());
        match parse_line(line) {
            Some(ReadyLine::Http(a)) => self.http = Some(a),
            Some(ReadyLine::Tftp(a)) => self.tftp = Some(a),
            Some(ReadyLine::Dhcp(d)) => self.dhcp.push(d),
            Some(ReadyLine::Admin(a)) => self.admin = Some(a),
            Some(ReadyLine::Ready) => self.ready = true,
            None => {}
        }
        self.ready
    }
}

/// Why `serve` did not become ready. Each case carries the stdout lines seen until then.
#[derive(Debug)]
pub enum StartError {
    /// The process could not be started.
    Spawn(std::io::Error),
    /// Its stdout closed before `ready`; the exit status if it ended (it normally has).
    Exited {
        status: Option<ExitStatus>,
        lines: Vec<String>,
    },
    /// No `ready` within the timeout.
    Timeout { after: Duration, lines: Vec<String> },
    /// The caller's abort check gave this reason.
    Aborted { reason: String, lines: Vec<String> },
}

impl StartError {
    /// The stdout lines printed before the failure.
    pub fn lines(&self) -> &[String] {
        match self {
            StartError::Spawn(_) => &[],
            StartError::Exited { lines, .. }
            | StartError::Timeout { lines, .. }
            | StartError::Aborted { lines, .. } => lines,
        }
    }
}

/// A clause that follows "did not become ready: ", e.g. `it exited (exit status: 1) first`;
/// the caller knows what it started and names it.
impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spawn(e) => write!(f, "it could not be started: {e}"),
            StartError::Exited {
                status: Some(st), ..
            } => write!(f, "it exited ({st}) first"),
            StartError::Exited { status: None, .. } => write!(f, "it closed its stdout first"),
            StartError::Timeout { after, .. } => {
                write!(f, "no `{READY}` within {} s", after.as_secs_f64())
            }
            StartError::Aborted { reason, .. } => f.write_str(reason),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// How often [`ServeChild::wait_ready_or`] asks its abort check.
const POLL: Duration = Duration::from_millis(100);

/// A running `serve` (or anything printing its contract): its stdout is read by one thread for
/// the whole life of the process, so the child never blocks on a full pipe. Dropping it stops
/// the process (KILL, or TERM first with [`ServeChild::set_stop_grace`]) and reaps it.
pub struct ServeChild {
    /// `None` only after [`ServeChild::into_child`] took it (and Drop then has nothing to do).
    child: Option<Child>,
    /// Stdout lines until `ready`; dropped at `ready`, after which the reader only drains.
    lines: Option<Receiver<String>>,
    listening: Listening,
    stop_grace: Duration,
}

impl ServeChild {
    /// Starts `cmd` with stdout piped (stdin, stderr, environment are the caller's) and waits
    /// up to `timeout` for `ready`. On failure the process is stopped.
    pub fn start(cmd: Command, timeout: Duration) -> Result<ServeChild, StartError> {
        let mut child = ServeChild::spawn(cmd).map_err(StartError::Spawn)?;
        child.wait_ready(timeout)?;
        Ok(child)
    }

    /// Starts `cmd` with stdout piped and does not wait; call [`ServeChild::wait_ready`] next.
    /// Between the two the caller may take other pipes from [`ServeChild::child_mut`].
    pub fn spawn(cmd: Command) -> std::io::Result<ServeChild> {
        Self::spawn_inner(cmd, None)
    }

    /// As [`ServeChild::spawn`], and every stdout line (before and after `ready`, without its
    /// line end) is also passed to `tee`, on the reader thread.
    pub fn spawn_with_tee(
        cmd: Command,
        tee: impl FnMut(&str) + Send + 'static,
    ) -> std::io::Result<ServeChild> {
        Self::spawn_inner(cmd, Some(Box::new(tee)))
    }

    fn spawn_inner(mut cmd: Command, tee: Option<Tee>) -> std::io::Result<ServeChild> {
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let Some(out) = child.stdout.take() else {
            // Cannot happen with Stdio::piped(); stop the process rather than leak it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the child has no stdout pipe"));
        };
        let (tx, rx) = mpsc::channel();
        read_lines(out, tx, tee);
        Ok(ServeChild {
            child: Some(child),
            lines: Some(rx),
            listening: Listening::default(),
            stop_grace: Duration::ZERO,
        })
    }

    /// Waits until `ready` (at once if it was already seen), at most `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<&Listening, StartError> {
        self.wait_ready_or(timeout, || None)
    }

    /// As [`ServeChild::wait_ready`], also giving up when `abort` returns a reason (it is asked
    /// about every 100 ms: an interrupt flag, another process that died, …).
    pub fn wait_ready_or(
        &mut self,
        timeout: Duration,
        mut abort: impl FnMut() -> Option<String>,
    ) -> Result<&Listening, StartError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(rx) = &self.lines else {
                return Ok(&self.listening);
            };
            if let Some(reason) = abort() {
                return Err(StartError::Aborted {
                    reason,
                    lines: self.listening.lines.clone(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StartError::Timeout {
                    after: timeout,
                    lines: self.listening.lines.clone(),
                });
            }
            match rx.recv_timeout(left.min(POLL)) {
                Ok(line) => {
                    if self.listening.observe(&line) {
                        // From here the reader thread only drains (and tees).
                        self.lines = None;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Normally an exit closes stdout (Disconnected below), but a process the
                    // child started may still hold the pipe: notice the exit itself too.
                    let exited = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    if let Some(status) = exited {
                        // What it printed before exiting is still worth reading.
                        let until = Instant::now() + Duration::from_millis(200);
                        while let Ok(line) =
                            rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                        {
                            if self.listening.observe(&line) {
                                self.lines = None;
                                return Ok(&self.listening);
                            }
                        }
                        return Err(StartError::Exited {
                            status: Some(status),
                            lines: self.listening.lines.clone(),
                        });
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(StartError::Exited {
                        status: self.exit_status_soon(Duration::from_secs(2)),
                        lines: self.listening.lines.clone(),
                    });
                }
            }
        }
    }

    /// A process that closed its stdout is normally on its way out; give it a moment.
    fn exit_status_soon(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(st)) = self.child_mut().try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The startup lines seen so far (all of them once ready).
    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    pub fn pid(&self) -> u32 {
        self.child_ref().id()
    }

    /// The process itself, e.g. to take its stderr pipe or send it a signal.
    pub fn child_mut(&mut self) -> &mut Child {
        // The only way to empty `child` is into_child, which consumes self.
        self.child
            .as_mut()
            .expect("ServeChild holds its child until into_child")
    }

    fn child_ref(&self) -> &Child {
        self.child
            .as_ref()
            .expect("ServeChild holds its child until into_child")
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child_mut().try_wait().ok().flatten()
    }

    /// What Drop does: with a non-zero grace, TERM and up to `grace` for the process to end on
    /// its own before KILL (so that it can finish its logs); with zero, KILL at once.
    pub fn set_stop_grace(&mut self, grace: Duration) {
        self.stop_grace = grace;
    }

    /// Stops the process now (TERM, up to `grace`, then KILL) and reaps it. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if !grace.is_zero() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Hands the process and its startup lines to the caller, who then owns stopping it. Stdout
    /// stays drained by the reader thread.
    pub fn into_child(mut self) -> (Child, Listening) {
        let child = self
            .child
            .take()
            .expect("ServeChild holds its child until into_child");
        (child, std::mem::take(&mut self.listening))
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        self.stop(self.stop_grace);
    }
}

type Tee = Box<dyn FnMut(&str) + Send>;

/// Reads `r` line by line until EOF: each line goes to `tee` and, while anyone listens, to `tx`.
/// Bytes that are not UTF-8 are replaced rather than ending the loop, which would stop the
/// draining and eventually block the child on a full pipe.
fn read_lines<R: Read + Send + 'static>(r: R, tx: mpsc::Sender<String>, mut tee: Option<Tee>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        let mut listening = true;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end_matches(['\n', '\r']);
            if let Some(tee) = tee.as_mut() {
                tee(line);
            }
            if listening && tx.send(line.to_string()).is_err() {
                listening = false;
            }
        }
    });
}

/// Runs the test `test` of the calling test binary alone in a child process, with `env` set, for
/// a test that changes what is process-wide (such as the descriptor limit, which would break the
/// tests running beside it in the same process). Returns the child's stdout when it passed and
/// printed `done`; otherwise, or after `timeout` (the child is then killed), an error naming the
/// test with the child's status and output.
pub fn run_test_in_child(
    test: &str,
    env: (&str, &str),
    timeout: Duration,
    done: &str,
) -> Result<String, String> {
    let child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{test}: cannot start its child process: {e}"))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("{test}: waiting for its child process: {e}"))?,
        Err(_) => {
            // The waiting thread has not reaped the child yet, so the pid is still ours.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(format!(
                "{test} did not finish within {timeout:?} in its child process"
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && stdout.contains(done) {
        return Ok(stdout);
    }
    Err(format!(
        "{test} in its child process: {}, {done:?} {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        if stdout.contains(done) {
            "printed"
        } else {
            "not printed"
        },
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_contract_lines() {
        assert_eq!(
            parse_line("pxeforge: http listening on 127.0.0.1:8080"),
            Some(ReadyLine::Http(addr("127.0.0.1:8080")))
        );
        assert_eq!(
            parse_line("pxeforge: tftp listening on [::1]:69\r"),
            Some(ReadyLine::Tftp(addr("[::1]:69")))
        );
        assert_eq!(
            parse_line("pxeforge: dhcp proxy listening on 0.0.0.0:4011 (interface br0)"),
            Some(ReadyLine::Dhcp(DhcpListener {
                mode: "proxy".into(),
                addr: addr("0.0.0.0:4011"),
                interface: "br0".into(),
            }))
        );
        assert_eq!(
            parse_line("pxeforge: dhcp reservation listening on 0.0.0.0:67 (interface any)"),
            Some(ReadyLine::Dhcp(DhcpListener {
                mode: "reservation".into(),
                addr: addr("0.0.0.0:67"),
                interface: "any".into(),
            }))
        );
        assert_eq!(parse_line("pxeforge: ready"), Some(ReadyLine::Ready));
        assert_eq!(parse_line("  pxeforge: ready \r"), Some(ReadyLine::Ready));
    }

    #[test]
    fn parses_the_admin_line() {
        let admin = |line| match parse_line(line) {
            Some(ReadyLine::Admin(a)) => a,
            other => panic!("{line:?} gave {other:?}"),
        };
        let a = admin("pxeforge: admin listening on 127.0.0.1:8081 (http, token file /srv/pxe/state/admin.token)");
        assert_eq!(
            a,
            AdminListener {
                addr: addr("127.0.0.1:8081"),
                tls: false,
                token_file: PathBuf::from("/srv/pxe/state/admin.token"),
            }
        );
        assert_eq!(a.base_url(), "http://127.0.0.1:8081");
        let a = admin(
            "pxeforge: admin listening on [::1]:443 (https, token file /a b/(x)/admin.token)\r",
        );
        assert!(a.tls);
        assert_eq!(a.base_url(), "https://[::1]:443");
        assert_eq!(a.token_file, PathBuf::from("/a b/(x)/admin.token"));
        for line in [
            "pxeforge: admin listening on 127.0.0.1:8081",
            "pxeforge: admin listening on 127.0.0.1:8081 (http)",
            "pxeforge: admin listening on 127.0.0.1:8081 (ftp, token file /t)",
            "pxeforge: admin listening on 127.0.0.1:8081 (http, token file )",
            "pxeforge: admin listening on 127.0.0.1:8081 (http, token file /t",
            "pxeforge: admin listening on nowhere (http, token file /t)",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn the_admin_token_is_read_trimmed() {
        let dir = std::env::temp_dir().join(format!("pxeforge-child-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("admin.token");
        std::fs::write(&file, "abc123\n").unwrap();
        let a = AdminListener {
            addr: addr("127.0.0.1:1"),
            tls: false,
            token_file: file,
        };
        assert_eq!(a.token().unwrap(), "abc123");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_lines_are_not_the_contract() {
        for line in [
            "",
            "  iPXE bootstrap:  http://127.0.0.1:8080/boot.ipxe",
            "pxeforge: ready now",
            "pxeforge: http listening on nowhere",
            "pxeforge: http listening on 127.0.0.1",
            "pxeforge: tftp listening on ",
            "pxeforge: dhcp listening on 0.0.0.0:67 (interface lo)",
            "pxeforge: dhcp proxy listening on 0.0.0.0:67",
            "pxeforge: dhcp proxy listening on 0.0.0.0:67 (interface )",
            "pxeforge: dhcp two words listening on 0.0.0.0:67 (interface lo)",
            "pxeforge: dhcp proxy listening on bad (interface lo)",
            "pxeforge: smtp listening on 127.0.0.1:25",
            "INFO pxeforge: http listening on 127.0.0.1:80",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn listening_collects_until_ready() {
        let mut l = Listening::default();
        assert!(!l.observe("pxeforge: tftp listening on 127.0.0.1:6969"));
        assert!(!l.observe("pxeforge: dhcp proxy listening on 0.0.0.0:67 (interface lo)"));
        assert!(!l.observe("pxeforge: dhcp proxy listening on 0.0.0.0:4011 (interface lo)"));
        assert!(!l.observe("pxeforge: http listening on 127.0.0.1:8080"));
        assert!(!l.observe(
            "pxeforge: admin listening on 127.0.0.1:8081 (https, token file /s/admin.token)"
        ));
        assert!(l.observe("pxeforge: ready"));
        assert!(!l.observe("  reload the site: kill -HUP 1"));
        assert_eq!(l.http, Some(addr("127.0.0.1:8080")));
        assert_eq!(l.tftp, Some(addr("127.0.0.1:6969")));
        assert_eq!(l.dhcp.len(), 2);
        assert_eq!(l.dhcp[1].addr, addr("0.0.0.0:4011"));
        let admin = l.admin.as_ref().expect("admin line");
        assert_eq!((admin.addr, admin.tls), (addr("127.0.0.1:8081"), true));
        assert!(l.ready);
        assert_eq!(l.lines.len(), 6);
        assert_eq!(l.lines[5], READY);
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).stdin(Stdio::null());
        cmd
    }

    fn gone(pid: u32) -> bool {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn start_collects_the_addresses_and_kills_on_drop() {
        let s = ServeChild::start(
            sh("echo 'pxeforge: tftp listening on 127.0.0.1:40000'
                echo 'pxeforge: http listening on 127.0.0.1:40001'
                echo 'pxeforge: ready'
                echo '  iPXE bootstrap: ...'
                exec sleep 60"),
            Duration::from_secs(10),
        )
        .unwrap();
        let l = s.listening();
        assert_eq!(l.http, Some(addr("127.0.0.1:40001")));
        assert_eq!(l.tftp, Some(addr("127.0.0.1:40000")));
        assert!(l.dhcp.is_empty());
        assert_eq!(l.lines.last().map(String::as_str), Some(READY));
        let pid = s.pid();
        assert!(!gone(pid));
        drop(s);
        assert!(gone(pid), "the child outlived its ServeChild");
    }

    #[test]
    fn exit_before_ready_is_reported_with_the_lines() {
        let e = ServeChild::start(
            sh("echo 'pxeforge: http listening on 127.0.0.1:1'; echo 'bad site' ; exit 3"),
            Duration::from_secs(10),
        )
        .err()
        .unwrap();
        assert!(matches!(e, StartError::Exited { status: Some(st), .. } if st.code() == Some(3)));
        assert_eq!(e.lines().len(), 2);
        assert_eq!(e.to_string(), "it exited (exit status: 3) first");
    }

    #[test]
    fn timeout_and_abort() {
        let started = Instant::now();
        let e = ServeChild::start(
            sh("echo starting; exec sleep 60"),
            Duration::from_millis(300),
        )
        .err()
        .unwrap();
        assert!(matches!(e, StartError::Timeout { .. }), "{e}");
        assert_eq!(e.lines(), ["starting".to_string()]);
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut s = ServeChild::spawn(sh("exec sleep 60")).unwrap();
        let mut asked = 0;
        let e = s
            .wait_ready_or(Duration::from_secs(30), || {
                asked += 1;
                (asked == 3).then(|| "interrupted".to_string())
            })
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "interrupted");
        let pid = s.pid();
        s.stop(Duration::from_secs(2));
        assert!(s.try_wait().is_some());
        assert!(gone(pid));
    }

    /// `sh` exits at once, but the `sleep` it leaves behind holds stdout open.
    #[test]
    fn exit_is_noticed_while_a_grandchild_holds_stdout() {
        let started = Instant::now();
        let e = ServeChild::start(
            sh("echo 'pxeforge: tftp listening on 127.0.0.1:4'; sleep 5 & exit 4"),
            Duration::from_secs(20),
        )
        .err()
        .unwrap();
        assert!(
            matches!(e, StartError::Exited { status: Some(st), .. } if st.code() == Some(4)),
            "{e}"
        );
        assert_eq!(e.lines().len(), 1);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn spawn_failure() {
        let e = ServeChild::start(
            Command::new("/nonexistent/pxeforge"),
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(matches!(e, StartError::Spawn(_)));
    }

    /// After `ready` the output keeps flowing (to the tee) and the child never blocks on a full
    /// pipe: 4 MiB is far beyond any pipe buffer.
    #[test]
    fn stdout_is_drained_and_teed_after_ready() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let tee_seen = seen.clone();
        let mut s = ServeChild::spawn_with_tee(
            sh("echo 'pxeforge: http listening on 127.0.0.1:2'
                echo 'pxeforge: ready'
                head -c 4194304 /dev/zero | tr '\\0' 'x' | fold -w 1000
                printf '\\377 not utf-8\\n'
                echo last"),
            move |l| tee_seen.lock().unwrap().push(l.to_string()),
        )
        .unwrap();
        s.wait_ready(Duration::from_secs(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.try_wait().is_none() {
            assert!(Instant::now() < deadline, "the child blocked on its stdout");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The reader may still be finishing after the exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().last().map(String::as_str) != Some("last") {
            assert!(Instant::now() < deadline, "tee did not see the end");
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1], READY);
        assert_eq!(seen[2].len(), 1000);
        assert!(seen[seen.len() - 2].ends_with(" not utf-8"));
        assert_eq!(s.listening().lines.len(), 2);
    }

    #[test]
    fn into_child_hands_over_the_process() {
        let s = ServeChild::start(
            sh("echo 'pxeforge: http listening on 127.0.0.1:3'; echo 'pxeforge: ready'; exec sleep 60"),
            Duration::from_secs(10),
        )
        .unwrap();
        let (mut child, l) = s.into_child();
        assert_eq!(l.http, Some(addr("127.0.0.1:3")));
        // Dropping the ServeChild did not stop it: it is the caller's now.
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
