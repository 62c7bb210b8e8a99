//! pxeforge's HTTP/1.1 transport: framing, connection loop, sendfile, confined files, ranges,
//! limits. It drives any tower `Service` (an axum `Router` in pxeforge) and knows nothing of
//! the application: what it has to report goes through an [`Observer`] the application
//! supplies, so that this crate (and the fuzz target built on `wire`) links no templates,
//! database or metrics registry.

pub mod conn;
pub mod files;
pub mod range;
pub mod sendfile;
pub mod wire;

/// What the transport reports as it serves. Every method has a no-op default, so an
/// application implements only what it counts, and a new event added here breaks nobody.
///
/// Methods are called on the connection's worker thread in the middle of serving, so they
/// must be cheap and must not block (an atomic add, a short uncontended lock).
pub trait Observer: Send + Sync + 'static {
    /// `n` more bytes of a file body (a [`sendfile::SendFile`]) reached the socket. Called
    /// once per `sendfile(2)` call or fallback copy, not once per response; heads and
    /// in-memory bodies are not counted.
    fn bytes_sent(&self, n: u64) {
        let _ = n;
    }

    /// A request was refused by the transport before any handler saw it, with this status,
    /// and the connection is being closed: malformed framing (400), head over
    /// [`wire::MAX_HEAD`] bytes or [`wire::MAX_HEADERS`] lines (431), body over
    /// [`conn::Limits::max_body`] (413), unsupported transfer coding (501), HTTP version
    /// (505), or a request not received within [`conn::Limits::request`] (408).
    ///
    /// Not reported, as in the server before the transport had its own crate: a 400 for a
    /// target that parses as HTTP but not as a URI, and a 500 when a service's response body
    /// fails (the service already saw that request).
    fn request_refused(&self, status: http::StatusCode) {
        let _ = status;
    }
}

/// An observer that reports nothing, for tests, tools and fuzzing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
