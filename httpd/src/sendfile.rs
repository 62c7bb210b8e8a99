//! File bodies with `sendfile(2)`: the kernel moves page-cache pages to the socket, so a
//! download costs no user-space copy and no buffer per connection, whatever the file size.

use crate::Observer;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes per `sendfile` call: large enough for few syscalls, small enough that one download
/// yields to the other connections on this thread between calls.
const STEP: usize = 4 << 20;

/// A response body that is a byte range of an open file. A handler attaches it to an empty
/// response as an extension; the connection sends it after the head.
#[derive(Clone, Debug)]
pub struct SendFile {
    pub file: Arc<File>,
    pub start: u64,
    pub count: u64,
}

/// Sends `head` and then the file range. `stall` bounds how long may pass without a byte of
/// either leaving for the socket before we give up on the client.
pub async fn send(
    stream: &mut TcpStream,
    head: &[u8],
    body: &SendFile,
    observer: &dyn Observer,
    stall: Duration,
) -> io::Result<()> {
    // MSG_MORE holds the head back so that it leaves in the same segment as the first data.
    let flags = if body.count > 0 { libc::MSG_MORE } else { 0 };
    // A large body is sent corked (nginx's tcp_nopush): with TCP_NODELAY on, every partial
    // sendfile would otherwise push a short segment as soon as the client frees some buffer.
    let cork = body.count >= CORK_FROM && set_cork(stream, true).is_ok();
    let sent = send_body(stream, head, flags, body, observer, stall).await;
    if cork {
        // Uncorking pushes out the tail at once.
        let _ = set_cork(stream, false);
    }
    sent
}

/// Bodies from this size on are sent corked; smaller ones leave in one or two segments anyway.
const CORK_FROM: u64 = 256 * 1024;

fn set_cork(stream: &TcpStream, on: bool) -> io::Result<()> {
    socket2::SockRef::from(stream).set_cork(on)
}

/// The error for a client that took no bytes for the stall limit (kind `TimedOut`).
pub fn stalled(_: tokio::time::error::Elapsed) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")
}

/// Writes all of `data`, giving up when `stall` passes without a byte leaving. The clock
/// restarts only when a write takes bytes, never because the socket was reported writable: a
/// client that reads a byte now and then, or holds its window at zero, is dropped all the same,
/// and one that reads slowly but steadily is not, however long the whole body takes.
pub(crate) async fn write_all(
    stream: &mut TcpStream,
    mut data: &[u8],
    stall: Duration,
) -> io::Result<()> {
    while !data.is_empty() {
        // `write` resolves only once it has taken bytes (or failed): a wake-up that finds no
        // room is retried inside it, under the same timer.
        let n = tokio::time::timeout(stall, stream.write(data))
            .await
            .map_err(stalled)??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

async fn send_body(
    stream: &mut TcpStream,
    head: &[u8],
    flags: i32,
    body: &SendFile,
    observer: &dyn Observer,
    stall: Duration,
) -> io::Result<()> {
    send_all_flags(stream, head, flags, stall).await?;
    let mut offset = i64::try_from(body.start).map_err(|_| io::Error::other("offset too large"))?;
    let mut left = body.count;
    let mut first = true;
    // Moved on only by bytes sent (see `write_all`), not by each wake-up.
    let mut deadline = Instant::now() + stall;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(STEP).min(STEP);
        let sent = tokio::time::timeout_at(deadline, stream.writable())
            .await
            .map_err(stalled)
            .and_then(|r| r)
            .and_then(|()| {
                stream.try_io(Interest::WRITABLE, || {
                    sendfile(stream.as_raw_fd(), body.file.as_raw_fd(), &mut offset, want)
                })
            });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ))
            }
            Ok(n) => {
                left -= n as u64;
                first = false;
                deadline = Instant::now() + stall;
                observer.bytes_sent(n as u64);
                tokio::task::yield_now().await;
            }
            // Writable, yet no room: the deadline stands.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Some filesystems cannot sendfile (EINVAL/ENOSYS): copy instead, once.
            Err(e) if first && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                let start = u64::try_from(offset).unwrap_or(body.start);
                return copy(stream, &body.file, start, left, observer, stall).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sendfile(sock: i32, file: i32, offset: &mut i64, count: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open for the duration of the call and `offset` is a
        // valid, exclusively borrowed off_t that the kernel advances by the bytes sent.
        let n = unsafe { libc::sendfile64(sock, file, offset, count) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// send(2) with flags on a non-blocking socket, waiting for writability as needed.
async fn send_all_flags(
    stream: &mut TcpStream,
    mut data: &[u8],
    flags: i32,
    stall: Duration,
) -> io::Result<()> {
    // Moved on only by bytes sent (see `write_all`), not by each wake-up.
    let mut deadline = Instant::now() + stall;
    while !data.is_empty() {
        tokio::time::timeout_at(deadline, stream.writable())
            .await
            .map_err(stalled)??;
        let r = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: `data` is a valid slice for its length; the socket is open.
            let n = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    flags | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(n) => {
                data = &data[n..];
                deadline = Instant::now() + stall;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The fallback for files that cannot be sent with sendfile: positioned reads into one
/// bounded buffer.
async fn copy(
    stream: &mut TcpStream,
    file: &Arc<File>,
    mut offset: u64,
    mut left: u64,
    observer: &dyn Observer,
    stall: Duration,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(buf.len()).min(buf.len());
        let n = file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        write_all(stream, &buf[..n], stall).await?;
        offset += n as u64;
        left -= n as u64;
        observer.bytes_sent(n as u64);
    }
    Ok(())
}
