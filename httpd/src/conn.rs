//! The HTTP/1.1 server: accepts connections, frames requests with `wire`, hands them to a
//! tower `Service` (pxeforge's axum `Router`), and writes responses itself, so that file
//! bodies can leave by `sendfile` and a connection costs one small buffer.

use crate::sendfile::{self, SendFile};
use crate::wire::{self, ChunkedDecoder, Framing, Head, WireError};
use crate::Observer;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::{Service, ServiceExt};

/// Limits and timeouts of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle: Duration,
    /// A request head and body must arrive within this, once started (slowloris).
    pub request: Duration,
    /// A client that reads nothing of a response for this long is dropped.
    pub stall: Duration,
    /// Request bodies larger than this are refused with 413 before they are read; the largest
    /// body any endpoint takes is an install event of a few KiB.
    pub max_body: u64,
    /// Connections served at once; the accept loop waits for a free slot beyond it.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(75),
            request: Duration::from_secs(30),
            stall: Duration::from_secs(60),
            max_body: 1 << 20,
            max_connections: 16_384,
        }
    }
}

/// Binds the HTTP listener. The backlog is deep because a rack coming back from a power cut
/// connects all at once, and a connection the kernel drops costs a host a TCP retransmission
/// timeout (1 s, then more) before it tries again.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// Serves `listener` on `workers` threads, each with its own single-threaded runtime accepting
/// from the same socket (nginx's worker model): a request is parsed, rendered and answered on
/// one thread without a hand-off, and a busy machine cannot park a connection's task behind
/// another worker's queue. Resolves when every worker has stopped; the first error wins.
///
/// `service` gets each request with its whole body in memory and the peer address as a
/// `ConnectInfo<SocketAddr>` extension; a response carrying a [`SendFile`] extension has that
/// file range sent as its body. `observer` hears what the transport reports.
pub async fn serve_on_threads<S, B>(
    listener: std::net::TcpListener,
    service: S,
    observer: Arc<dyn Observer>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    workers: usize,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    listener.set_nonblocking(true)?;
    let workers = workers.max(1);
    let per_worker = Limits {
        max_connections: (limits.max_connections / workers).max(1),
        ..limits
    };
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let listener = listener.try_clone()?;
        let (service, observer, limits, shutdown) = (
            service.clone(),
            observer.clone(),
            per_worker.clone(),
            shutdown.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || -> io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(16)
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve(listener, service, observer, limits, shutdown).await
                })
            })?;
        threads.push(thread);
    }
    tokio::task::spawn_blocking(move || {
        let mut first = Ok(());
        for t in threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("HTTP worker panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
    .await
    .map_err(io::Error::other)?
}

/// Runs until `shutdown` turns true; connections in progress finish their current request.
/// One runtime's share of [`serve_on_threads`], usable on its own (tests, a single thread).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    observer: Arc<dyn Observer>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let limits = Arc::new(limits);
    // On shutdown: stop accepting, then wait until every connection has closed (idle ones close
    // at once, a download in flight finishes); the caller bounds how long that may take.
    let drained = || async {
        let _ = slots.acquire_many(all).await;
        Ok(())
    };
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut shutdown) => return drained().await,
            p = slots.clone().acquire_owned() => p.map_err(io::Error::other)?,
        };
        let (stream, remote) = tokio::select! {
            _ = stopped(&mut shutdown) => {
                drop(permit);
                return drained().await;
            }
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            stream,
            remote,
            buf: BytesMut::with_capacity(4096),
            service: service.clone(),
            observer: observer.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            conn.run().await;
        });
    }
}

struct Connection<S> {
    stream: TcpStream,
    remote: SocketAddr,
    /// Bytes read and not yet consumed: the rest of a head, a body, or pipelined requests.
    buf: BytesMut,
    service: S,
    observer: Arc<dyn Observer>,
    limits: Arc<Limits>,
    shutdown: watch::Receiver<bool>,
}

/// What reading a request came to.
enum Next {
    Request(Head, Bytes),
    /// The client closed, went idle, or the server is stopping: close quietly.
    Close,
    /// Refuse with this status and close.
    Refuse(StatusCode, String),
}

impl<S, B> Connection<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    async fn run(mut self) {
        loop {
            let (head, body) = match self.next_request().await {
                Next::Request(h, b) => (h, b),
                Next::Close => return,
                Next::Refuse(status, why) => {
                    tracing::debug!(remote = %self.remote, %status, %why, "request refused");
                    self.observer.request_refused(status);
                    self.refuse(status, &why).await;
                    return;
                }
            };
            let close = !head.keep_alive || *self.shutdown.borrow();
            match self.respond(head, body, close).await {
                Ok(()) if !close => {}
                Ok(()) => {
                    let _ = self.stream.shutdown().await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(remote = %self.remote, error = %e, "connection ended");
                    return;
                }
            }
        }
    }

    async fn next_request(&mut self) -> Next {
        // The request clock starts with the request's first byte, not with the idle wait.
        let mut started = (!self.buf.is_empty()).then(tokio::time::Instant::now);
        let head = loop {
            match wire::parse_head(&self.buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return Next::Refuse(e.status(), e.to_string()),
            }
            // Between requests the idle timeout applies; once a request has begun, the
            // request timeout runs from its first byte.
            let deadline = match started {
                None => tokio::time::Instant::now() + self.limits.idle,
                Some(t) => t + self.limits.request,
            };
            let mut shutdown = self.shutdown.clone();
            let idle = self.buf.is_empty();
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)) => r,
                _ = stopped(&mut shutdown), if idle => return Next::Close,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Close,
                Ok(Ok(_)) => {
                    started.get_or_insert_with(tokio::time::Instant::now);
                }
                Err(_) if idle => return Next::Close,
                Err(_) => {
                    return Next::Refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        "request not received in time".into(),
                    )
                }
            }
        };
        let _ = self.buf.split_to(head.len);
        let deadline = started.unwrap_or_else(tokio::time::Instant::now) + self.limits.request;
        let body = match head.framing {
            Framing::None => Bytes::new(),
            Framing::Length(n) if n > self.limits.max_body => {
                let e = WireError::BodyTooLarge(self.limits.max_body);
                return Next::Refuse(e.status(), e.to_string());
            }
            Framing::Length(n) => {
                let n = n as usize;
                if head.expect_continue && self.buf.len() < n && self.continue_100().await.is_err()
                {
                    return Next::Close;
                }
                while self.buf.len() < n {
                    self.buf.reserve(n - self.buf.len());
                    if let Err(instead) = self.read_body(deadline).await {
                        return instead;
                    }
                }
                self.buf.split_to(n).freeze()
            }
            Framing::Chunked => {
                if head.expect_continue && self.buf.is_empty() && self.continue_100().await.is_err()
                {
                    return Next::Close;
                }
                let mut decoder = ChunkedDecoder::new(self.limits.max_body);
                let mut out = Vec::new();
                loop {
                    match decoder.decode(&self.buf, &mut out) {
                        Ok(n) => {
                            let _ = self.buf.split_to(n);
                        }
                        Err(e) => return Next::Refuse(e.status(), e.to_string()),
                    }
                    if decoder.is_done() {
                        break;
                    }
                    if let Err(instead) = self.read_body(deadline).await {
                        return instead;
                    }
                }
                Bytes::from(out)
            }
        };
        Next::Request(head, body)
    }

    /// One more read of a request body; `Err` says what to do instead (close, or 408).
    async fn read_body(&mut self, deadline: tokio::time::Instant) -> Result<(), Next> {
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(Next::Refuse(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time".into(),
            )),
            Ok(Ok(0)) | Ok(Err(_)) => Err(Next::Close),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn continue_100(&mut self) -> io::Result<()> {
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        tokio::time::timeout(self.limits.stall, self.stream.write_all(data))
            .await
            .map_err(sendfile::stalled)?
    }

    async fn respond(&mut self, head: Head, body: Bytes, close: bool) -> io::Result<()> {
        let request = match build_request(head, body, self.remote) {
            Ok(r) => r,
            Err(why) => {
                self.refuse(StatusCode::BAD_REQUEST, why).await;
                return Err(io::Error::other(why));
            }
        };
        let method = request.method().clone();
        let response = match self.service.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (mut parts, body) = response.into_parts();
        let date = http_date();
        let mut out = Vec::with_capacity(512);
        if let Some(file) = parts.extensions.remove::<SendFile>() {
            wire::response_head(
                &mut out,
                parts.status,
                &parts.headers,
                Some(file.count),
                close,
                &date,
            );
            return sendfile::send(
                &mut self.stream,
                &out,
                &file,
                &*self.observer,
                self.limits.stall,
            )
            .await;
        }
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::error!(error = %e, "response body failed");
                self.refuse(StatusCode::INTERNAL_SERVER_ERROR, "response failed")
                    .await;
                return Err(io::Error::other("response body failed"));
            }
        };
        let has_body = wire::has_body(&method, parts.status);
        let length = if has_body {
            Some(bytes.len() as u64)
        } else if method == http::Method::HEAD {
            // HEAD reports the length a GET would have had, which the service left in the
            // headers (axum does).
            parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        wire::response_head(&mut out, parts.status, &parts.headers, length, close, &date);
        if has_body {
            out.extend_from_slice(&bytes);
        }
        self.write(&out).await
    }

    /// Sends an error response and closes. The write side is shut first and what the client
    /// still sends is read and dropped for a moment: closing with unread data would make the
    /// kernel send a reset, and the client would see that instead of our answer.
    async fn refuse(&mut self, status: StatusCode, why: &str) {
        let mut out = Vec::with_capacity(256);
        let text = format!("{why}\n");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        wire::response_head(
            &mut out,
            status,
            &headers,
            Some(text.len() as u64),
            true,
            &http_date(),
        );
        out.extend_from_slice(text.as_bytes());
        if self.write(&out).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while drained < 1 << 20 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

fn build_request(
    head: Head,
    body: Bytes,
    remote: SocketAddr,
) -> Result<Request<Body>, &'static str> {
    let uri: http::Uri = head
        .target
        .parse()
        .map_err(|_| "malformed request target")?;
    let mut req = Request::builder()
        .method(head.method)
        .uri(uri)
        .version(if head.minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        })
        .body(Body::from(body))
        .map_err(|_| "malformed request")?;
    *req.headers_mut() = head.headers;
    req.extensions_mut().insert(ConnectInfo(remote));
    Ok(req)
}

/// Resolves once the server is stopping (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// The `Date` header, formatted once per second per thread instead of once per response.
fn http_date() -> String {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files;
    use axum::extract::Path;
    use axum::http::{HeaderMap, Method};
    use axum::routing::{get, post};
    use axum::Router;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    /// Records what the transport reports.
    #[derive(Default)]
    struct Recorder {
        bytes: AtomicU64,
        refused: Mutex<Vec<u16>>,
    }

    impl Observer for Recorder {
        fn bytes_sent(&self, n: u64) {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
        fn request_refused(&self, status: StatusCode) {
            self.refused.lock().unwrap().push(status.as_u16());
        }
    }

    fn app(root: std::path::PathBuf) -> Router {
        Router::new()
            .route(
                "/f/{*path}",
                get(
                    move |Path(p): Path<String>, method: Method, headers: HeaderMap| async move {
                        files::serve(&root, &p, &method, &headers)
                    },
                ),
            )
            .route("/echo", post(|body: Bytes| async move { body }))
    }

    struct Running {
        addr: SocketAddr,
        recorder: Arc<Recorder>,
        stop: watch::Sender<bool>,
        server: tokio::task::JoinHandle<io::Result<()>>,
        _dir: tempfile::TempDir,
    }

    /// A server on a loopback port with `limits`, serving a temp directory holding `a.bin`
    /// (16 bytes) and `big.bin` (1 MiB, so that it is sent corked).
    async fn start(limits: Limits) -> Running {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"0123456789abcdef").unwrap();
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big.bin"), big).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            app(dir.path().to_path_buf()),
            recorder.clone(),
            limits,
            rx,
        ));
        Running {
            addr,
            recorder,
            stop,
            server,
            _dir: dir,
        }
    }

    /// Sends `req` (which should end the connection) and reads the answer to EOF.
    async fn exchange(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    fn count(hay: &[u8], needle: &str) -> usize {
        hay.windows(needle.len())
            .filter(|w| *w == needle.as_bytes())
            .count()
    }

    #[tokio::test]
    async fn pipelined_requests_file_bodies_and_observer() {
        let r = start(Limits::default()).await;
        let out = exchange(
            r.addr,
            b"GET /f/a.bin HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /f/a.bin HTTP/1.1\r\nHost: h\r\nRange: bytes=2-5\r\n\r\n\
              HEAD /f/a.bin HTTP/1.1\r\nHost: h\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 3, "{text}");
        assert_eq!(count(&out, "HTTP/1.1 206 Partial Content\r\n"), 1, "{text}");
        assert!(
            text.contains("\r\n\r\n0123456789abcdefHTTP/1.1 206"),
            "{text}"
        );
        assert!(text.contains("content-range: bytes 2-5/16\r\n"), "{text}");
        assert!(text.contains("\r\n\r\n2345HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\nhello"), "{text}");
        // File bodies only: 16 + 4 bytes; HEAD and the echo are not file bodies.
        assert_eq!(r.recorder.bytes.load(Ordering::Relaxed), 20);
        assert!(r.recorder.refused.lock().unwrap().is_empty());

        let out = exchange(
            r.addr,
            b"GET /f/big.bin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let want: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        assert!(out[..body_at].starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(out[body_at..] == want[..], "big body differs");
        assert_eq!(r.recorder.bytes.load(Ordering::Relaxed), 20 + (1 << 20));

        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refusals_reach_the_observer_and_close() {
        let r = start(Limits {
            request: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let out = exchange(r.addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
        let out = exchange(
            r.addr,
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n",
        )
        .await;
        assert!(out.starts_with(b"HTTP/1.1 413 Payload Too Large\r\n"));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(wire::MAX_HEAD));
        let out = exchange(r.addr, long.as_bytes()).await;
        assert!(out.starts_with(b"HTTP/1.1 431 "));
        // Half a head, then nothing: the request timeout answers 408.
        let out = exchange(r.addr, b"GET / HTTP/1.1\r\nHo").await;
        assert!(out.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"));
        assert_eq!(
            *r.recorder.refused.lock().unwrap(),
            vec![400, 413, 431, 408]
        );
        assert_eq!(r.recorder.bytes.load(Ordering::Relaxed), 0);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn serve_on_threads_answers_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"abc").unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(serve_on_threads(
            listener,
            app(dir.path().to_path_buf()),
            Arc::new(crate::NoObserver),
            Limits::default(),
            rx,
            2,
        ));
        for _ in 0..4 {
            let out = exchange(
                addr,
                b"GET /f/a.bin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert!(out.ends_with(b"\r\n\r\nabc"));
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
