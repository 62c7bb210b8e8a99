//! Static files (assets, the TFTP root over HTTP, built images): confined to their root,
//! streamed in bounded chunks, with Range, HEAD, ETag and If-None-Match.

use super::range::{decide_range, etag, none_match, RangeDecision};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Read size per chunk: large enough that a multi-GiB image costs few syscalls, small enough
/// that hundreds of concurrent downloads stay within a few hundred MiB.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Confined {
    File(PathBuf),
    NotFound,
    Forbidden(&'static str),
}

/// Maps a request path onto a regular file under `root`, refusing `..`, absolute paths,
/// backslashes, NUL, and symlinks that lead outside the root.
pub fn confine(root: &Path, rel: &str) -> Confined {
    if rel.contains('\0') || rel.contains('\\') {
        return Confined::Forbidden("invalid character in path");
    }
    let rel_path = Path::new(rel.trim_start_matches('/'));
    for c in rel_path.components() {
        match c {
            Component::Normal(_) => {}
            Component::CurDir => {}
            _ => return Confined::Forbidden("path leaves the served directory"),
        }
    }
    let Ok(root) = root.canonicalize() else {
        return Confined::NotFound;
    };
    let Ok(real) = root.join(rel_path).canonicalize() else {
        return Confined::NotFound;
    };
    if !real.starts_with(&root) {
        return Confined::Forbidden("symlink leads outside the served directory");
    }
    match std::fs::metadata(&real) {
        Ok(m) if m.is_file() => Confined::File(real),
        Ok(_) => Confined::NotFound,
        Err(_) => Confined::NotFound,
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("ipxe") | Some("ks") | Some("txt") | Some("cfg") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

pub async fn serve(
    root: &Path,
    rel: &str,
    method: &Method,
    headers: &HeaderMap,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Response {
    let path = match confine(root, rel) {
        Confined::File(p) => p,
        Confined::NotFound => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Confined::Forbidden(why) => {
            tracing::warn!(path = rel, why, "refused file request");
            return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
        }
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(_) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let len = meta.len();
    let mtime_ns =
        (meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128).max(0) as u128;
    let tag = etag(len, mtime_ns, meta.ino());
    let mut builder = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type(&path));
    if let Ok(modified) = meta.modified() {
        builder = builder.header(header::LAST_MODIFIED, httpdate::fmt_http_date(modified));
    }
    let hv = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if none_match(hv(header::IF_NONE_MATCH), &tag) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    // If-Range: a range only applies to the representation the client already has.
    let range_header = match hv(header::IF_RANGE) {
        Some(ir) if ir.trim() != tag => None,
        _ => hv(header::RANGE),
    };
    let (status, start, count) = match decide_range(range_header, len) {
        RangeDecision::Full => (StatusCode::OK, 0, len),
        RangeDecision::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeDecision::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, HeaderValue::from(count));
    if method == Method::HEAD {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let stream = futures_util::stream::unfold(
        (Arc::new(file), start, count, metrics.clone()),
        |(file, offset, remaining, metrics)| async move {
            if remaining == 0 {
                return None;
            }
            let want = (remaining as usize).min(CHUNK);
            match read_chunk(&file, offset, want).await {
                Ok(chunk) if chunk.is_empty() => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    )),
                    (file, offset, 0, metrics),
                )),
                Ok(chunk) => {
                    let n = chunk.len() as u64;
                    metrics.bytes_sent.fetch_add(n, Ordering::Relaxed);
                    Some((Ok(chunk), (file, offset + n, remaining - n, metrics)))
                }
                Err(e) => Some((Err(e), (file, offset, 0, metrics))),
            }
        },
    );
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Reads up to `want` bytes at `offset` into a fresh buffer that becomes the body chunk
/// without another copy. Data already in the page cache is read right here (preadv2 with
/// RWF_NOWAIT never blocks); only what must come from the disk goes to a blocking thread.
async fn read_chunk(file: &Arc<std::fs::File>, offset: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(want);
    match pread(file, &mut buf, want, offset, true) {
        Ok(_) => return Ok(buf.freeze()),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => return Err(e),
    }
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        pread(&file, &mut buf, want, offset, false).map(|_| buf.freeze())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// pread(2) into the spare capacity of `buf` (no zero-filling of memory about to be
/// overwritten); `nowait` fails with WouldBlock instead of waiting for the disk.
fn pread(
    file: &std::fs::File,
    buf: &mut BytesMut,
    want: usize,
    offset: u64,
    nowait: bool,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let want = want.min(spare.len());
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: want,
    };
    let offset =
        libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("offset too large"))?;
    let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
    loop {
        // SAFETY: iov points into `buf`'s spare capacity, valid for `want` bytes, and the
        // kernel writes at most iov_len bytes there; the fd stays open for the call.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
        if n >= 0 {
            let n = n as usize;
            if nowait && n == 0 && want > 0 {
                // RWF_NOWAIT may return 0 for "not cached" on some filesystems; let the
                // blocking read tell EOF apart from that.
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            // SAFETY: the kernel initialised the first n bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.bin"), b"x").unwrap();
        std::fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub/a.bin", root.join("in")).unwrap();
        assert!(matches!(confine(&root, "sub/a.bin"), Confined::File(_)));
        assert!(matches!(confine(&root, "in"), Confined::File(_)));
        assert_eq!(
            confine(&root, "../secret"),
            Confined::Forbidden("path leaves the served directory")
        );
        assert_eq!(
            confine(&root, "sub/../../secret"),
            Confined::Forbidden("path leaves the served directory")
        );
        assert!(matches!(confine(&root, "out"), Confined::Forbidden(_)));
        assert!(matches!(
            confine(&root, "sub\\a.bin"),
            Confined::Forbidden(_)
        ));
        assert!(matches!(confine(&root, "a\0b"), Confined::Forbidden(_)));
        assert_eq!(confine(&root, "sub"), Confined::NotFound);
        assert_eq!(confine(&root, "nope"), Confined::NotFound);
        // A leading slash is taken relative to the root, never as an absolute path.
        assert!(matches!(confine(&root, "/sub/a.bin"), Confined::File(_)));
        assert_eq!(confine(&root, "/etc/passwd"), Confined::NotFound);
    }
}
