//! Static files (assets, the TFTP root over HTTP, built images): confined to their root,
//! with Range, HEAD, ETag and If-None-Match. The body is not read here: the response carries
//! the open file as a `SendFile` extension and the connection sends it with sendfile(2).

use crate::log_safe;
use crate::range::{decide_range, etag, none_match, RangeDecision};
use crate::sendfile::SendFile;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confined {
    NotFound,
    Forbidden(&'static str),
    /// Out of file descriptors (or another resource): the file may well be there.
    Unavailable,
}

/// The request path as a relative path with no way out: no `..`, no absolute path, no
/// backslash or NUL. A leading `/` is taken relative to the root. Symlinks are left to the
/// opening.
fn lexically_confined(rel: &str) -> Result<&Path, Confined> {
    if rel.contains('\0') || rel.contains('\\') {
        return Err(Confined::Forbidden("invalid character in path"));
    }
    let rel_path = Path::new(rel.trim_start_matches('/'));
    for c in rel_path.components() {
        match c {
            Component::Normal(_) => {}
            Component::CurDir => {}
            _ => return Err(Confined::Forbidden("path leaves the served directory")),
        }
    }
    Ok(rel_path)
}

/// Opens the regular file `rel` under `root`, confined to it by `pxeforge-confine`: one
/// `openat2(RESOLVE_BENEATH)`, or a component-by-component `O_NOFOLLOW` walk where openat2 is
/// not available. Nothing is checked in one step and opened in another, so a symlink swapped in
/// at any moment cannot lead outside; a FIFO or device is refused without blocking.
pub fn open_confined(
    root: &Path,
    rel: &str,
) -> Result<(std::fs::File, std::fs::Metadata), Confined> {
    open_confined_with(root, rel, pxeforge_confine::Method::Auto)
}

fn open_confined_with(
    root: &Path,
    rel: &str,
    method: pxeforge_confine::Method,
) -> Result<(std::fs::File, std::fs::Metadata), Confined> {
    use pxeforge_confine::{ConfineError, Refusal};
    let rel_path = lexically_confined(rel)?;
    // The root itself is a directory, never a file to serve.
    if rel_path.components().next().is_none() {
        return Err(Confined::NotFound);
    }
    match pxeforge_confine::open_beneath_with(root, rel_path, method) {
        Ok(opened) => Ok(opened),
        Err(ConfineError::NotFound) => Err(Confined::NotFound),
        Err(ConfineError::Refused(Refusal::OutsideRoot)) => Err(Confined::Forbidden(
            "symlink leads outside the served directory",
        )),
        // FIFOs, directories, devices and symlink loops are simply not files to serve.
        Err(ConfineError::Refused(Refusal::NotRegularFile | Refusal::SymlinkLoop)) => {
            Err(Confined::NotFound)
        }
        Err(ConfineError::Refused(_)) => {
            Err(Confined::Forbidden("path leaves the served directory"))
        }
        Err(ConfineError::Io(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
            ) =>
        {
            Err(Confined::Unavailable)
        }
        Err(ConfineError::Io(_)) => Err(Confined::NotFound),
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
    let (file, meta) = match open_confined(root, rel) {
        Ok(opened) => opened,
        Err(Confined::Forbidden(why)) => {
            // The path is the client's, percent-decoded: it may hold line breaks and escapes.
            tracing::warn!(path = &*log_safe(rel), why, "refused file request");
            return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
        }
        Err(Confined::Unavailable) => {
            tracing::warn!(
                path = &*log_safe(rel),
                "out of file descriptors: file request refused"
            );
            return (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response();
        }
        Err(_) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let path = Path::new(rel);
    let len = meta.len();
    let mtime_ns =
        (meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128).max(0) as u128;
    let tag = etag(len, mtime_ns, meta.ino());
    let mut builder = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type(path));
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
    use pxeforge_confine::Method;

    /// What each way of opening makes of a path: the file's contents, or the refusal.
    fn both(root: &Path, rel: &str) -> (Result<Vec<u8>, Confined>, Result<Vec<u8>, Confined>) {
        let read = |method| {
            open_confined_with(root, rel, method).map(|(mut f, _)| {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut v).expect("read");
                v
            })
        };
        (read(Method::Openat2), read(Method::Walk))
    }

    #[test]
    fn confinement_with_openat2_and_with_the_walk() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.bin"), b"x").unwrap();
        std::fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("up")).unwrap();
        std::os::unix::fs::symlink("sub/a.bin", root.join("in")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/a.bin"), root.join("abs-in")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let ok = |v: &[u8]| Ok(v.to_vec());
        let leaves = Err(Confined::Forbidden("path leaves the served directory"));
        let outside = Err(Confined::Forbidden(
            "symlink leads outside the served directory",
        ));
        let cases: Vec<(&str, Result<Vec<u8>, Confined>)> = vec![
            ("sub/a.bin", ok(b"x")),
            ("in", ok(b"x")),
            // An absolute symlink is refused even when it points inside: whether it stays
            // inside cannot be decided without a check-then-open race.
            ("abs-in", outside.clone()),
            // A leading slash is taken relative to the root, never as an absolute path.
            ("/sub/a.bin", ok(b"x")),
            ("./sub/./a.bin", ok(b"x")),
            ("../secret", leaves.clone()),
            ("sub/../../secret", leaves.clone()),
            (
                "sub\\a.bin",
                Err(Confined::Forbidden("invalid character in path")),
            ),
            (
                "a\0b",
                Err(Confined::Forbidden("invalid character in path")),
            ),
            ("sub", Err(Confined::NotFound)),
            ("", Err(Confined::NotFound)),
            ("nope", Err(Confined::NotFound)),
            ("/etc/passwd", Err(Confined::NotFound)),
            ("fifo", Err(Confined::NotFound)),
            ("out", outside.clone()),
            ("up", outside.clone()),
        ];
        for (rel, want) in cases {
            let (beneath, walk) = both(&root, rel);
            assert_eq!(beneath, want, "openat2: {rel:?}");
            assert_eq!(walk, want, "walk: {rel:?}");
        }
    }

    /// Records the fields of every event as a sink would get them: strings as sent,
    /// `%`-fields as their `Display`, `?`-fields as their `Debug`.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    struct Fields<'a>(&'a mut Vec<String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push(format!("{}={}", field.name(), value));
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push(format!("{}={:?}", field.name(), value));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Vec::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().extend(fields);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn refused_paths_reach_the_log_without_control_characters() {
        let d = tempfile::tempdir().unwrap();
        let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let capture = Capture(logged.clone());
        // Paths as axum hands them over, percent-decoded: a forged log line, a terminal escape,
        // a C1 control (NEL, a line break to some viewers) and DEL.
        let paths = [
            "../x\nWARN pxeforge: forged line",
            "../x\r\x1b[2J",
            "a\\b\u{85}\u{7f}",
        ];
        tracing::subscriber::with_default(capture, || {
            for p in paths {
                let r = serve(d.path(), p, &axum::http::Method::GET, &HeaderMap::new());
                assert_eq!(r.status(), StatusCode::FORBIDDEN);
            }
        });
        let logged = logged.lock().unwrap();
        let paths_logged: Vec<&String> = logged.iter().filter(|f| f.starts_with("path=")).collect();
        assert_eq!(paths_logged.len(), paths.len(), "{logged:?}");
        for f in logged.iter() {
            assert!(
                !f.chars().any(char::is_control),
                "control character logged: {f:?}"
            );
        }
        assert_eq!(paths_logged[0], "path=../x\\nWARN pxeforge: forged line");
        assert_eq!(paths_logged[1], "path=../x\\r\\x1b[2J");
        assert_eq!(paths_logged[2], "path=a\\\\b\\x85\\x7f");
    }
}
