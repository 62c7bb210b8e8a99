//! A netascii transfer converts while streaming: it holds no converted copy of the file beside
//! the shared cache's. Measured with a counting global allocator, so this binary holds only
//! this one test (any other running at once would be counted too).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pxeforge_tftp::packet::{self, Mode, Packet};
use pxeforge_tftp::{netascii, Ended};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Fetches `name` in netascii with blksize 8192, checking each block against `expected`
/// without keeping what arrives.
async fn fetch_checked(server: std::net::SocketAddr, name: &[u8], expected: &[u8]) {
    let sock = client().await;
    let request =
        packet::encode_request(packet::OP_RRQ, name, Mode::Netascii, &[("blksize", "8192")]);
    sock.send_to(&request, server).await.unwrap();
    let mut offset = 0usize;
    let mut buf = vec![0u8; 9000];
    loop {
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("reply within 10 s")
            .unwrap();
        match packet::parse(&buf[..n]).unwrap() {
            Packet::Oack { .. } => {
                sock.send_to(&packet::encode_ack(0), from).await.unwrap();
            }
            Packet::Data { block, data } => {
                assert_eq!(
                    data,
                    &expected[offset..offset + data.len()],
                    "block {block}"
                );
                offset += data.len();
                sock.send_to(&packet::encode_ack(block), from)
                    .await
                    .unwrap();
                if data.len() < 8192 {
                    assert_eq!(offset, expected.len());
                    return;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netascii_transfer_holds_no_converted_copy() {
    let t = tree();
    // 4 MiB of text lines with LF, CR LF and bare CR: the converted stream is longer.
    let mut text = Vec::with_capacity(4 << 20);
    let mut i = 0u32;
    while text.len() < 4 << 20 {
        text.extend_from_slice(format!("line {i} of the boot menu").as_bytes());
        text.extend_from_slice(match i % 3 {
            0 => b"\n",
            1 => b"\r\n",
            _ => b"\r",
        });
        i += 1;
    }
    write_aged(&t.root.join("menu.txt"), &text, 60);
    let expected = netascii::encode(&text);
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    // Warm the shared cache with one transfer, so the next one only reads memory.
    fetch_checked(server.addr, b"menu.txt", &expected).await;
    wait_outcome(&server.metrics, Ended::Complete, 1).await;

    let baseline = CURRENT.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    fetch_checked(server.addr, b"menu.txt", &expected).await;
    wait_outcome(&server.metrics, Ended::Complete, 2).await;
    let extra = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "netascii transfer of {} bytes: peak extra allocation {extra} bytes",
        text.len()
    );
    assert!(
        extra < 1 << 20,
        "a netascii transfer of a cached {} byte file allocated {extra} bytes at its peak",
        text.len()
    );
    server.stop().await;
}
