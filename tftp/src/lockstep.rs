//! Large lockstep transfers (windowsize 1, a file too big for the memory cache) run on a
//! blocking thread: each ACK then wakes the thread straight out of `recv`, with no event loop
//! between the kernel and the state machine, which is what a 32 MiB lockstep transfer spends
//! its time on. Small files and windowed transfers stay on the async path, where a boot storm
//! of hundreds of clients costs no thread each.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{Content, ReadAhead};
use crate::metrics::TftpMetrics;
use crate::packet;
use crate::session::FirstAck;
use crate::transfer::{Action, Event, Outcome, Params, Transfer};

/// Tells a blocking transfer to stop, and wakes it if it sits in `recv`, unless disarmed.
pub(crate) struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    /// A duplicate of the transfer socket's descriptor.
    fd: OwnedFd,
    armed: bool,
}

impl CancelOnDrop {
    pub fn new(flag: Arc<AtomicBool>, fd: OwnedFd) -> CancelOnDrop {
        CancelOnDrop {
            flag,
            fd,
            armed: true,
        }
    }

    /// The transfer ended by itself: dropping the guard only closes the duplicate descriptor.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.flag.store(true, Ordering::Relaxed);
        // SAFETY: `fd` is an open socket owned by this guard; shutdown(2) has no memory
        // effects. SHUT_RD makes a blocked recv on the shared socket return at once.
        unsafe {
            libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RD);
        }
    }
}

/// A short time slice for the calling thread while it drives a transfer, back to the kernel's
/// default when dropped. Each ACK wakes the thread for a few microseconds of work; with the
/// default slice, a CPU-bound neighbour (a compiler) often runs on until its slice ends before
/// the woken thread gets the core, and a lockstep transfer pays that wait on every block. A
/// short slice (EEVDF's per-task slice, `sched_attr.sched_runtime` of a `SCHED_OTHER` thread,
/// Linux 6.12 and later; older kernels ignore it) gives it an earlier deadline, so the kernel
/// lets it preempt such a neighbour at once. Asks for no privilege: any thread may shorten its
/// own slice, which only ever shortens how long it runs at a time. Left alone: threads of any
/// other policy (set by the operator), and `slice` zero.
pub(crate) struct ShortSlice(bool);

impl ShortSlice {
    pub fn new(slice: Duration) -> ShortSlice {
        if slice.is_zero() {
            return ShortSlice(false);
        }
        // SAFETY: sched_getscheduler(2) on the calling thread has no memory effects.
        if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
            return ShortSlice(false);
        }
        ShortSlice(set_slice(
            u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        ))
    }
}

impl Drop for ShortSlice {
    fn drop(&mut self) {
        if self.0 {
            // 0: the kernel's default slice again (the thread goes back to the blocking pool).
            set_slice(0);
        }
    }
}

/// sched_setattr(2) on the calling thread: `SCHED_OTHER`, its nice value kept, `runtime` as
/// the slice (nanoseconds; the kernel clamps it to 0.1-100 ms).
fn set_slice(runtime: u64) -> bool {
    // SAFETY: getpriority(2) has no memory effects; with PRIO_PROCESS and 0 it reads the
    // calling thread's nice value (Linux keeps it per thread).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: runtime,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid, initialised sched_attr whose `size` field gives its length;
    // pid 0 is the calling thread; the kernel only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        ) == 0
    }
}

/// What a blocking lockstep transfer takes to its thread.
pub(crate) struct Job {
    pub content: Content,
    pub params: Params,
    pub oack: Vec<u8>,
    pub timeout: Duration,
    /// When the whole transfer must be over.
    pub deadline: Instant,
    /// Confirms the transfer and ends the older ones of the same client port at the first
    /// acknowledgement.
    pub first_ack: FirstAck,
    pub metrics: Arc<TftpMetrics>,
    /// The thread's time slice while it runs the transfer (see [`ShortSlice`]).
    pub slice: Duration,
}

/// Drives one transfer with blocking I/O on `socket` (connected to the client). Returns when
/// the state machine ends, on an I/O error, or soon after `cancel` is set.
pub(crate) fn run(
    socket: &UdpSocket,
    job: &mut Job,
    stats: &mut Stats,
    cancel: &AtomicBool,
) -> std::io::Result<Outcome> {
    let _slice = ShortSlice::new(job.slice);
    let Job {
        content,
        params,
        oack,
        timeout,
        deadline: hard_deadline,
        first_ack,
        metrics,
        slice: _,
    } = job;
    let (params, timeout, hard_deadline) = (*params, *timeout, *hard_deadline);
    socket.set_nonblocking(false)?;
    let mut armed = timeout;
    socket.set_read_timeout(Some(armed))?;
    let (mut transfer, mut action) = Transfer::start(params);
    let mut reader = ReadAhead::new(content);
    let mut out = vec![0u8; 4 + usize::from(params.blksize)];
    let mut inbuf = [0u8; 1024];
    let mut deadline = Instant::now() + timeout;
    loop {
        match action {
            Action::SendOack { .. } => {
                send(socket, oack)?;
                deadline = Instant::now() + timeout;
            }
            Action::SendBlocks {
                first,
                last,
                retransmit,
            } => {
                for index in first..=last {
                    let (n, len) = data_packet(&mut reader, &transfer, index, &mut out)?;
                    send(socket, &out[..n])?;
                    stats.bytes += len as u64;
                    metrics.add_bytes_sent(len as u64);
                }
                if retransmit {
                    let n = last + 1 - first;
                    stats.retransmitted += n;
                    metrics.add_retransmitted(n);
                }
                deadline = Instant::now() + timeout;
            }
            Action::Wait => {}
            Action::Fail {
                code,
                message,
                outcome,
            } => {
                let _ = socket.send(&packet::encode_error(code, message));
                return Ok(outcome);
            }
            Action::Finish(outcome) => return Ok(outcome),
        }
        // The receive timeout is the time left until the deadline: after a send that is the
        // full timeout, already set; only a duplicate ACK (which does not re-arm) changes it,
        // and the transfer's own deadline when it comes first.
        let now = Instant::now();
        let remaining = deadline.min(hard_deadline).saturating_duration_since(now);
        let event = if now >= hard_deadline {
            Event::Deadline
        } else if remaining.is_zero() {
            Event::Timeout
        } else {
            if remaining.abs_diff(armed) > Duration::from_millis(1) {
                armed = remaining;
                socket.set_read_timeout(Some(armed))?;
            }
            let received = socket.recv(&mut inbuf);
            if cancel.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("transfer cancelled"));
            }
            match received {
                Ok(n) => Event::from_datagram(&inbuf[..n]),
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Event::Timeout
                }
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Event::ClientError
                }
                Err(err) => return Err(err),
            }
        };
        action = transfer.on_event(event);
        first_ack.check(&transfer);
    }
}

fn send(socket: &UdpSocket, datagram: &[u8]) -> std::io::Result<()> {
    match socket.send(datagram) {
        Ok(_) => Ok(()),
        // The client vanished between two packets; the next recv reports it.
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(err) => Err(err),
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub bytes: u64,
    pub retransmitted: u64,
}

/// Builds DATA packet `index` of `transfer` in `out` (shared by the async and the blocking
/// lockstep loops); returns the packet's length and its payload's.
pub(crate) fn data_packet(
    reader: &mut ReadAhead<'_>,
    transfer: &Transfer,
    index: u64,
    out: &mut [u8],
) -> std::io::Result<(usize, usize)> {
    let (offset, len) = transfer.block_range(index);
    out[..2].copy_from_slice(&packet::OP_DATA.to_be_bytes());
    out[2..4].copy_from_slice(&Transfer::wire_block(index).to_be_bytes());
    reader.read_at(offset, &mut out[4..4 + len])?;
    Ok((4 + len, len))
}
