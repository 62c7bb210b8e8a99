//! Child processes of a run: their output arrives as timestamped lines on one channel, and a
//! guard stops them (TERM, then KILL) when it is dropped. `pxeforge serve` is started through
//! `pxeforge-child`, the one reader of its startup lines; its output joins the same channel.

use anyhow::{Context, Result};
use pxeforge_child::ServeChild;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// How long a process gets after TERM before KILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Which process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Serve,
    Dnsmasq,
    Serial,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Serve => "serve log",
            Source::Dnsmasq => "dnsmasq",
            Source::Serial => "serial",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub source: Source,
    pub text: String,
}

pub struct ChildGuard {
    pub name: &'static str,
    child: Child,
}

impl ChildGuard {
    /// Starts `cmd` with stdout and stderr sent line by line to `tx`.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        source: Source,
        tx: &Sender<Line>,
    ) -> Result<ChildGuard> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        if let Some(out) = child.stdout.take() {
            forward(out, source, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, source, tx.clone());
        }
        Ok(ChildGuard { name, child })
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// TERM, a grace period, then KILL; reaps the process.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `pxeforge serve` (without waiting for it to be ready: [`ServeChild::wait_ready_or`]),
/// its stdout and stderr sent line by line to `tx` as [`Source::Serve`]. It is stopped like the
/// other children: TERM, then KILL after [`STOP_GRACE`].
pub fn spawn_serve(mut cmd: Command, tx: &Sender<Line>) -> Result<ServeChild> {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let out = tx.clone();
    let mut serve = ServeChild::spawn_with_tee(cmd, move |raw| {
        let text = clean(raw.as_bytes());
        if !text.is_empty() {
            let _ = out.send(Line {
                at: Instant::now(),
                source: Source::Serve,
                text,
            });
        }
    })
    .context("starting pxeforge serve")?;
    serve.set_stop_grace(STOP_GRACE);
    if let Some(err) = serve.child_mut().stderr.take() {
        forward(err, Source::Serve, tx.clone());
    }
    Ok(serve)
}

fn forward<R: Read + Send + 'static>(r: R, source: Source, tx: Sender<Line>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = clean(&buf);
                    if text.is_empty() {
                        continue;
                    }
                    let line = Line {
                        at: Instant::now(),
                        source,
                        text,
                    };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Console output without terminal control: ANSI escape sequences, carriage returns and other
/// control characters removed, so that logs and markers read as plain text.
pub fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameters, then one final byte in '@'..='~'.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strips_terminal_control() {
        assert_eq!(
            clean(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(
            clean(b"\x1b[1m\x1b[37m\x1b[40miPXE 1.0.0\x1b[0m -- Open Source\r\n"),
            "iPXE 1.0.0 -- Open Source"
        );
        assert_eq!(clean(b"plain\n"), "plain");
    }

    proptest! {
        #[test]
        fn any_bytes_clean_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let esc = char::from(0x1b);
            let s = clean(&b);
            prop_assert!(!s.contains(esc));
        }
    }
}
