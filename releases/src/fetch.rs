//! Downloads over HTTP(S): resumable with `Range`, retried with exponential backoff, each file
//! hashed while it streams and checked against the sha256 it must have.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How downloads are made and retried (`pxeforge releases sync` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Tries per request (1: no retry). A transport error, a timeout, 408, 429 or a 5xx is
    /// retried; any other answer is final.
    pub attempts: u32,
    /// The wait before the first retry; doubled after each, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Connecting, and the wait for each read (not the whole transfer: install.img is large).
    pub timeout: Duration,
    /// The largest file a download may write: `.treeinfo` lists no sizes, so without a cap a
    /// hostile or wrong upstream could fill the disk before the checksum fails.
    pub max_file_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            // A CentOS Stream install.img is about 1 GiB; 8 GiB leaves room for growth.
            max_file_bytes: 8 << 30,
        }
    }
}

/// What a download reports as it goes: a progress bar on a terminal, log lines otherwise.
pub trait Progress {
    /// `file` starts downloading at byte `from` (0, or where a partial download stopped);
    /// `total` is its size when the server says.
    fn start(&self, file: &str, from: u64, total: Option<u64>);
    /// `done` bytes of the current file are on disk.
    fn bytes(&self, done: u64);
    /// The current file is complete and verified.
    fn done(&self, file: &str, size: u64, downloaded: u64);
    /// A request failed and is tried again after `wait`.
    fn retry(&self, what: &str, attempt: u32, why: &str, wait: Duration);
}

/// Reports nothing (library callers, tests).
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64, _: Option<u64>) {}
    fn bytes(&self, _: u64) {}
    fn done(&self, _: &str, _: u64, _: u64) {}
    fn retry(&self, _: &str, _: u32, _: &str, _: Duration) {}
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// An HTTP answer or a transport failure (after the retries, when it was retryable).
    #[error("{0}")]
    Http(String),
    #[error("sha256 {actual}, expected {expected}")]
    Checksum { expected: String, actual: String },
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One attempt's failure: try again, or give up now.
enum Fail {
    Retry(String),
    Fatal(FetchError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Fail + '_ {
    move |source| {
        Fail::Fatal(FetchError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A read buffer: large enough that hashing, not syscalls, is the cost.
const CHUNK: usize = 256 * 1024;

pub struct Fetcher {
    client: reqwest::blocking::Client,
    opts: FetchOptions,
}

impl Fetcher {
    pub fn new(opts: &FetchOptions) -> Result<Fetcher, FetchError> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(opts.timeout)
            // The blocking client applies this to each read of the body, not to the transfer.
            .timeout(opts.timeout)
            .user_agent(concat!("pxeforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Http(format!("HTTP client: {e}")))?;
        Ok(Fetcher {
            client,
            opts: opts.clone(),
        })
    }

    fn with_retries<T>(
        &self,
        what: &str,
        progress: &dyn Progress,
        mut once: impl FnMut() -> Result<T, Fail>,
    ) -> Result<T, FetchError> {
        let mut wait = self.opts.backoff;
        let mut attempt = 1;
        loop {
            match once() {
                Ok(v) => return Ok(v),
                Err(Fail::Fatal(e)) => return Err(e),
                Err(Fail::Retry(why)) if attempt >= self.opts.attempts.max(1) => {
                    return Err(FetchError::Http(format!(
                        "{why} (gave up after {attempt} attempt(s))"
                    )))
                }
                Err(Fail::Retry(why)) => {
                    progress.retry(what, attempt, &why, wait);
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(self.opts.max_backoff);
                    attempt += 1;
                }
            }
        }
    }

    fn send(&self, url: &str, from: u64) -> Result<reqwest::blocking::Response, Fail> {
        let mut req = self.client.get(url);
        if from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        req.send().map_err(|e| {
            if e.is_builder() {
                Fail::Fatal(FetchError::Http(format!("bad URL: {e}")))
            } else {
                Fail::Retry(transport(&e))
            }
        })
    }

    /// GETs a small file whole (`.treeinfo`), at most `max` bytes.
    pub fn small(
        &self,
        url: &str,
        max: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>, FetchError> {
        self.with_retries(url, progress, || {
            let resp = self.send(url, 0)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(status_fail(status));
            }
            let mut body = Vec::new();
            resp.take(max + 1)
                .read_to_end(&mut body)
                .map_err(|e| Fail::Retry(format!("reading the body: {e}")))?;
            if body.len() as u64 > max {
                return Err(Fail::Fatal(FetchError::TooLarge(max)));
            }
            Ok(body)
        })
    }

    /// Downloads `url` into `partial`, continuing what is already there with a `Range` request,
    /// and checks the whole file against `sha256` (hashed as it streams, the kept part first).
    /// A file that does not match is deleted: when part of it came from before, it is fetched
    /// once more whole; otherwise that is the error. Returns (size, bytes transferred now).
    pub fn file(
        &self,
        url: &str,
        partial: &Path,
        sha256: &str,
        label: &str,
        progress: &dyn Progress,
    ) -> Result<(u64, u64), FetchError> {
        let mut transferred = 0u64;
        let mut retried_whole = false;
        let r = self.with_retries(url, progress, || {
            self.attempt(
                url,
                partial,
                sha256,
                label,
                progress,
                &mut transferred,
                &mut retried_whole,
            )
        })?;
        Ok((r, transferred))
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        url: &str,
        partial: &Path,
        sha256: &str,
        label: &str,
        progress: &dyn Progress,
        transferred: &mut u64,
        retried_whole: &mut bool,
    ) -> Result<u64, Fail> {
        let (mut hasher, kept) = hash_prefix(partial).map_err(io_err(partial))?;
        if kept > 0 && hex::encode(hasher.clone().finalize()) == sha256 {
            // Complete already (a sync killed after the download, before publishing).
            progress.done(label, kept, 0);
            return Ok(kept);
        }
        let resp = self.send(url, kept)?;
        let status = resp.status();
        let mut from = kept;
        match status.as_u16() {
            206 if kept > 0 => {
                let want = format!("bytes {kept}-");
                let ok = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&want));
                if !ok {
                    truncate(partial)?;
                    return Err(Fail::Retry(format!(
                        "HTTP 206 for another range than {want}: starting over"
                    )));
                }
            }
            200 => {
                // No range support (or no partial file): start over.
                if kept > 0 {
                    hasher = Sha256::new();
                    from = 0;
                }
            }
            416 if kept > 0 => {
                // The partial file is longer than the file now is: it belongs to something else.
                truncate(partial)?;
                return Err(Fail::Retry("HTTP 416 on resume: starting over".into()));
            }
            _ => return Err(status_fail(status)),
        }
        let total = resp.content_length().map(|n| n + from);
        let max = self.opts.max_file_bytes;
        if total.is_some_and(|t| t > max) {
            truncate(partial)?;
            return Err(Fail::Fatal(FetchError::TooLarge(max)));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(from == 0)
            .append(from > 0)
            .open(partial)
            .map_err(io_err(partial))?;
        progress.start(label, from, total);
        let mut resp = resp;
        let mut buf = vec![0u8; CHUNK];
        let mut size = from;
        loop {
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // What was written stays: the next attempt resumes after it.
                Err(e) => return Err(Fail::Retry(format!("reading the body: {e}"))),
            };
            if size + n as u64 > max {
                drop(f);
                truncate(partial)?;
                return Err(Fail::Fatal(FetchError::TooLarge(max)));
            }
            f.write_all(&buf[..n]).map_err(io_err(partial))?;
            hasher.update(&buf[..n]);
            size += n as u64;
            *transferred += n as u64;
            progress.bytes(size);
        }
        if let Some(t) = total.filter(|t| *t != size) {
            return Err(Fail::Retry(format!(
                "the body ended after {size} of {t} bytes"
            )));
        }
        drop(f);
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            let _ = std::fs::remove_file(partial);
            if from > 0 && !*retried_whole {
                *retried_whole = true;
                return Err(Fail::Retry(format!(
                    "sha256 {actual}, expected {sha256}, with {from} bytes kept from before: downloading it whole"
                )));
            }
            return Err(Fail::Fatal(FetchError::Checksum {
                expected: sha256.to_string(),
                actual,
            }));
        }
        progress.done(label, size, *transferred);
        Ok(size)
    }
}

fn truncate(path: &Path) -> Result<(), Fail> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// The hash state and length of what a partial file already holds (0 when there is none).
fn hash_prefix(path: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut h = Sha256::new();
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((h, 0)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok((h, n)),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn status_fail(status: reqwest::StatusCode) -> Fail {
    let msg = format!("HTTP {status}");
    if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
        Fail::Retry(msg)
    } else {
        Fail::Fatal(FetchError::Http(msg))
    }
}

/// A transport error with its causes (reqwest's own message alone is often just "error sending
/// request").
fn transport(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
