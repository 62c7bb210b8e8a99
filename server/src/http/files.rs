//! Static files (assets, the TFTP root over HTTP, built images): confined to their root,
//! with Range, HEAD, ETag and If-None-Match. The body is not read here: the response carries
//! the open file as a `SendFile` extension and the connection sends it with sendfile(2).

use super::range::{decide_range, etag, none_match, RangeDecision};
use super::sendfile::SendFile;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

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

pub fn serve(root: &Path, rel: &str, method: &Method, headers: &HeaderMap) -> Response {
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
    let mut response = builder
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    if response.status() == status {
        response.extensions_mut().insert(SendFile {
            file: Arc::new(file),
            start,
            count,
        });
    }
    response
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
