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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confined {
    File(PathBuf),
    NotFound,
    Forbidden(&'static str),
}

/// The request path as a relative path with no way out: no `..`, no absolute path, no
/// backslash or NUL. Symlinks are left to the opening.
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

/// Opens the regular file `rel` under `root`, confined to it: one `openat2(RESOLVE_BENEATH)`
/// from the root, so that no symlink (swapped in at any moment) can lead outside, and nothing
/// is checked in one step and opened in another. Paths through absolute symlinks, and kernels
/// without openat2 (before 5.6), get the canonicalize-then-open check of `confine`.
pub fn open_confined(
    root: &Path,
    rel: &str,
) -> Result<(std::fs::File, std::fs::Metadata), Confined> {
    let rel_path = lexically_confined(rel)?;
    let file = match openat2_beneath(root, rel_path) {
        Ok(f) => f,
        Err(e) => match e.raw_os_error() {
            // EXDEV: a symlink that RESOLVE_BENEATH will not follow, which includes an absolute
            // one that stays inside the root; the canonical path decides, as it always did.
            Some(libc::EXDEV | libc::ENOSYS | libc::EPERM) => match confine(root, rel) {
                Confined::File(p) => std::fs::File::open(p).map_err(|_| Confined::NotFound)?,
                refused => return Err(refused),
            },
            _ => return Err(Confined::NotFound),
        },
    };
    match file.metadata() {
        Ok(m) if m.is_file() => Ok((file, m)),
        _ => Err(Confined::NotFound),
    }
}

/// The kernel's `struct open_how` (linux/openat2.h); libc's is non-exhaustive.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2_beneath(root: &Path, rel: &Path) -> std::io::Result<std::fs::File> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)?;
    // An empty path (the root itself) is a directory, never a file to serve.
    let name = if rel.as_os_str().is_empty() {
        CString::new(".")
    } else {
        CString::new(rel.as_os_str().as_bytes())
    }
    .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        // O_NONBLOCK: opening a FIFO someone left in the tree must not hang the thread.
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: `dir` is an open directory descriptor, `name` a NUL-terminated string and
        // `how` a valid open_how of the size passed; the kernel only reads them.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
            // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
            return Ok(unsafe { std::fs::File::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Maps a request path onto a regular file under `root`, refusing `..`, absolute paths,
/// backslashes, NUL, and symlinks that lead outside the root (the fallback of `open_confined`).
pub fn confine(root: &Path, rel: &str) -> Confined {
    let rel_path = match lexically_confined(rel) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
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
    let (file, meta) = match open_confined(root, rel) {
        Ok(opened) => opened,
        Err(Confined::Forbidden(why)) => {
            tracing::warn!(path = rel, why, "refused file request");
            return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
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

    /// What each way of opening makes of a path: the file's contents, or the refusal.
    fn both(root: &Path, rel: &str) -> (Result<Vec<u8>, Confined>, Result<Vec<u8>, Confined>) {
        let read = |p: &Path| std::fs::read(p).map_err(|_| Confined::NotFound);
        let fallback = match confine(root, rel) {
            Confined::File(p) => read(&p),
            refused => Err(refused),
        };
        let beneath = open_confined(root, rel).map(|(mut f, _)| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut v).unwrap();
            v
        });
        (beneath, fallback)
    }

    #[test]
    fn confinement_with_openat2_and_with_the_fallback() {
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
        let cases: Vec<(&str, Result<Vec<u8>, Confined>)> = vec![
            ("sub/a.bin", ok(b"x")),
            ("in", ok(b"x")),
            ("abs-in", ok(b"x")),
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
        ];
        for (rel, want) in cases {
            let (beneath, fallback) = both(&root, rel);
            assert_eq!(beneath, want, "openat2: {rel:?}");
            assert_eq!(fallback, want, "fallback: {rel:?}");
        }
        // Symlinks out of the root, absolute or relative, are refused by both.
        for rel in ["out", "up"] {
            let (beneath, fallback) = both(&root, rel);
            assert!(
                matches!(beneath, Err(Confined::Forbidden(_))),
                "{rel}: {beneath:?}"
            );
            assert!(
                matches!(fallback, Err(Confined::Forbidden(_))),
                "{rel}: {fallback:?}"
            );
        }
    }
}
