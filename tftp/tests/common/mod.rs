//! Helpers shared by the integration tests: an in-process server on loopback, a file tree,
//! a minimal raw TFTP client, a log capture, and a tiny pcap reader.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pxeforge_tftp::packet::{self, Mode, Packet};
use pxeforge_tftp::{Ended, TftpConfig, TftpMetrics, TftpServer};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Arc<TftpMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

pub async fn start(bind: &str, root: &Path, tweak: impl FnOnce(&mut TftpConfig)) -> Running {
    install_log_capture();
    let mut config = TftpConfig {
        root: root.to_path_buf(),
        ..TftpConfig::default()
    };
    tweak(&mut config);
    let server = TftpServer::bind(bind.parse().unwrap(), config)
        .await
        .unwrap();
    let addr = server.local_addr();
    let metrics = server.metrics();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        addr,
        metrics,
        stop: Some(tx),
        task: Some(task),
    }
}

/// A temporary tree: `root/` is served, `outside/secret` must never be reachable.
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
}

pub fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"TOP SECRET\n").unwrap();
    Tree { dir, root, outside }
}

/// Writes a file whose mtime lies `age_secs` in the past: the memory cache keeps only files
/// that have not changed for a moment.
pub fn write_aged(path: &Path, data: &[u8], age_secs: u64) {
    std::fs::write(path, data).unwrap();
    let when = std::time::SystemTime::now() - Duration::from_secs(age_secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// Deterministic pseudo-random bytes (so a transfer of the wrong block is noticed).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

/// Polls `cond` until it holds; panics naming `what` after a generous deadline.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition never held: {what}");
}

pub async fn wait_outcome(metrics: &TftpMetrics, ended: Ended, n: u64) {
    wait_for(
        &format!("{n} transfer(s) ending {}", ended.as_str()),
        || metrics.transfers(ended) >= n,
    )
    .await;
}

/// Whether an external client binary is installed; prints a SKIP line if not.
pub fn have(binary: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
        .unwrap_or(false);
    if !found {
        pxeforge_tests::skip(format_args!(
            "`{binary}` is not installed (apt-get install tftp-hpa curl atftp)"
        ));
    }
    found
}

/// One received datagram.
pub async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("no reply from the server within 10 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// A raw client socket on loopback.
pub async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

pub fn rrq(name: &[u8], options: &[(&str, &str)]) -> Vec<u8> {
    packet::encode_request(packet::OP_RRQ, name, Mode::Octet, options)
}

/// Outcome of a raw fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    Data(Vec<u8>),
    Error(u16, String),
}

/// A small but correct windowed client (RFC 7440): acknowledges each full window and the last
/// block. Sends `request` from `socket` to `server`.
pub async fn fetch_raw(socket: &UdpSocket, server: SocketAddr, request: &[u8]) -> Fetch {
    socket.send_to(request, server).await.unwrap();
    let mut out = Vec::new();
    let mut blksize = 512usize;
    let mut windowsize = 1u16;
    let mut expected: u16 = 1;
    let mut in_window = 0u16;
    loop {
        let (pkt, from) = recv(socket).await;
        assert_ne!(from, server, "replies must come from a new transfer port");
        match packet::parse(&pkt).unwrap() {
            Packet::Oack { options } => {
                for o in options {
                    let v: usize = std::str::from_utf8(o.value).unwrap().parse().unwrap();
                    match o.name {
                        b"blksize" => blksize = v,
                        b"windowsize" => windowsize = v as u16,
                        _ => {}
                    }
                }
                socket.send_to(&packet::encode_ack(0), from).await.unwrap();
            }
            Packet::Data { block, data } => {
                if block != expected {
                    continue;
                }
                out.extend_from_slice(data);
                in_window += 1;
                let last = data.len() < blksize;
                if last || in_window == windowsize {
                    socket
                        .send_to(&packet::encode_ack(block), from)
                        .await
                        .unwrap();
                    in_window = 0;
                }
                expected = expected.wrapping_add(1);
                if last {
                    return Fetch::Data(out);
                }
            }
            Packet::Error { code, message } => {
                return Fetch::Error(code.as_u16(), String::from_utf8_lossy(message).into_owned())
            }
            other => panic!("unexpected packet {other:?}"),
        }
    }
}

/// Runs an external client; returns (exit success, stdout + stderr).
pub async fn run_client(program: &str, args: &[&str], cwd: &Path) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("client hung")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---- log capture ---------------------------------------------------------------------------

static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_log_capture() {
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    });
}

/// Everything logged so far by the servers of this test binary.
pub fn logs() -> String {
    LOG.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
        .unwrap_or_default()
}

// ---- pcap ----------------------------------------------------------------------------------

/// A UDP datagram from a capture.
#[derive(Debug, Clone)]
pub struct Udp {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Reads the IPv4/UDP datagrams of a classic little-endian Ethernet pcap file.
pub fn read_pcap_udp(path: &Path) -> Vec<Udp> {
    let data = std::fs::read(path).unwrap();
    assert_eq!(
        &data[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian pcap expected"
    );
    assert_eq!(
        u32::from_le_bytes(data[20..24].try_into().unwrap()),
        1,
        "Ethernet"
    );
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let frame = &data[pos + 16..pos + 16 + incl];
        pos += 16 + incl;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 {
            continue;
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let udp = &ip[ihl..total];
        let src_ip = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst_ip = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        out.push(Udp {
            src: SocketAddr::from((src_ip, sport)),
            dst: SocketAddr::from((dst_ip, dport)),
            payload: udp[8..].to_vec(),
        });
    }
    out
}
