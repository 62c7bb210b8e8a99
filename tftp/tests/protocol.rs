//! Protocol behaviour observed on the wire with a raw client: retransmission and stalled
//! clients, client ERRORs, repeated requests, duplicate ACKs, reply addresses, limits.

mod common;

use std::time::Duration;

use common::*;
use pxeforge_tftp::packet::{self, ErrorCode, Packet};
use pxeforge_tftp::Ended;

fn data_block(pkt: &[u8]) -> Option<(u16, usize)> {
    match packet::parse(pkt) {
        Ok(Packet::Data { block, data }) => Some((block, data.len())),
        _ => None,
    }
}

fn is_error(pkt: &[u8]) -> bool {
    matches!(packet::parse(pkt), Ok(Packet::Error { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_is_retried_then_freed() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(10_000, 1)).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = Duration::from_millis(100);
        c.max_retries = 2;
    })
    .await;
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    // The client acknowledges DATA 1 (an unacknowledged first packet is sent at most twice:
    // `unacknowledged_request_gets_at_most_two_packets`), then stalls: DATA 2, then the same
    // block again for each retry.
    let (pkt, tid) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
    for _ in 0..3 {
        let (pkt, _) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((2, 512)));
    }
    // The give-up is announced with an ERROR.
    let (pkt, _) = recv(&sock).await;
    assert!(is_error(&pkt), "{pkt:?}");
    wait_outcome(&server.metrics, Ended::Timeout, 1).await;
    wait_for("the stalled transfer is freed", || {
        server.metrics.active_transfers() == 0
    })
    .await;
    assert_eq!(server.metrics.blocks_retransmitted(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_mid_transfer_frees_at_once() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(100_000, 2)).unwrap();
    // With a 60 s timeout, only the ERROR can end this transfer within the test's patience.
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = Duration::from_secs(60);
    })
    .await;
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[("blksize", "1024")]), server.addr)
        .await
        .unwrap();
    let (oack, tid) = recv(&sock).await;
    assert_eq!(oack, b"\x00\x06blksize\x001024\x00");
    sock.send_to(&packet::encode_ack(0), tid).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 1024)));
    assert_eq!(server.metrics.active_transfers(), 1);
    let abort = packet::encode_error(ErrorCode::NotDefined, "cancelled");
    sock.send_to(&abort, tid).await.unwrap();
    wait_outcome(&server.metrics, Ended::ClientAbort, 1).await;
    wait_for("freed", || server.metrics.active_transfers() == 0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_from_the_same_port_starts_afresh() {
    let t = tree();
    let data = pattern(3000, 3);
    std::fs::write(t.root.join("f"), &data).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = Duration::from_secs(60);
    })
    .await;
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, first_tid) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    // Same client port asks again without finishing: a new transfer from a new port.
    assert_eq!(
        fetch_raw(&sock, server.addr, &rrq(b"f", &[])).await,
        Fetch::Data(data)
    );
    wait_outcome(&server.metrics, Ended::Aborted, 1).await;
    wait_outcome(&server.metrics, Ended::Complete, 1).await;
    wait_for("both freed", || server.metrics.active_transfers() == 0).await;
    assert_eq!(server.metrics.transfers(Ended::Aborted), 1);
    let _ = first_tid;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_acks_do_not_duplicate_data() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(2000, 4)).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = Duration::from_secs(60);
    })
    .await;
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, tid) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((2, 512)));
    // Delayed duplicates of ACK 1, then ACK 2. Had a duplicate been answered, a second DATA 2
    // would arrive before DATA 3 (loopback keeps order).
    sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
    sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
    sock.send_to(&packet::encode_ack(2), tid).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((3, 512)));
    sock.send_to(&packet::encode_ack(3), tid).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((4, 2000 - 3 * 512)));
    sock.send_to(&packet::encode_ack(4), tid).await.unwrap();
    wait_outcome(&server.metrics, Ended::Complete, 1).await;
    assert_eq!(server.metrics.blocks_retransmitted(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_leave_from_the_address_the_request_was_sent_to() {
    let t = tree();
    let data = pattern(5000, 5);
    std::fs::write(t.root.join("f"), &data).unwrap();
    // Bound to the wildcard address: each transfer socket must use the request's destination.
    let server = start("0.0.0.0:0", &t.root, |_| {}).await;
    let port = server.addr.port();
    for dst in ["127.0.0.1", "127.0.0.2", "127.3.4.5"] {
        let sock = client().await;
        let to: std::net::SocketAddr = format!("{dst}:{port}").parse().unwrap();
        sock.send_to(&rrq(b"f", &[]), to).await.unwrap();
        let (pkt, from) = recv(&sock).await;
        assert_eq!(from.ip().to_string(), dst, "source of the reply to {dst}");
        assert_ne!(from.port(), port);
        assert_eq!(data_block(&pkt), Some((1, 512)));
        let abort = packet::encode_error(ErrorCode::NotDefined, "done");
        sock.send_to(&abort, from).await.unwrap();
        // Refusals come from the same address too.
        sock.send_to(&rrq(b"../x", &[]), to).await.unwrap();
        let (pkt, from) = recv(&sock).await;
        assert_eq!(from.ip().to_string(), dst);
        assert!(is_error(&pkt));
    }
    let sock = client().await;
    let to: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    assert_eq!(
        fetch_raw(&sock, to, &rrq(b"f", &[("blksize", "1400")])).await,
        Fetch::Data(data)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_on_the_wire() {
    let t = tree();
    let data = pattern(70_000, 6);
    std::fs::write(t.root.join("f"), &data).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.max_blksize = 1468;
        c.max_windowsize = 8;
    })
    .await;
    // Clamped values, unknown and invalid options left out, the client's order kept.
    let sock = client().await;
    let req = rrq(
        b"f",
        &[
            ("windowsize", "100"),
            ("foo", "1"),
            ("timeout", "0"),
            ("blksize", "9000"),
            ("tsize", "0"),
        ],
    );
    sock.send_to(&req, server.addr).await.unwrap();
    let (oack, tid) = recv(&sock).await;
    assert_eq!(
        oack,
        b"\x00\x06windowsize\x008\x00blksize\x001468\x00tsize\x0070000\x00"
    );
    let abort = packet::encode_error(ErrorCode::OptionRefused, "probe");
    sock.send_to(&abort, tid).await.unwrap();
    // Only unknown options: no OACK, plain DATA 1.
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[("foo", "1")]), server.addr)
        .await
        .unwrap();
    let (pkt, tid) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    sock.send_to(&abort, tid).await.unwrap();
    // The negotiated window through a full transfer.
    let sock = client().await;
    let req = rrq(b"f", &[("blksize", "1468"), ("windowsize", "8")]);
    assert_eq!(fetch_raw(&sock, server.addr, &req).await, Fetch::Data(data));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_limit_answers_busy_and_shutdown_ends_transfers() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(10_000, 7)).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.max_transfers = 2;
        c.timeout = Duration::from_secs(60);
    })
    .await;
    // Both transfers acknowledged (an unacknowledged one would make room for the next request:
    // `flood_of_unacknowledged_requests_does_not_lock_out_a_client`).
    let mut held = Vec::new();
    for _ in 0..2 {
        let sock = client().await;
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let (pkt, tid) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((1, 512)));
        sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
        let (pkt, _) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((2, 512)));
        held.push(sock);
    }
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, from) = recv(&sock).await;
    assert_eq!(from, server.addr, "busy comes from the listening port");
    assert_eq!(
        packet::parse(&pkt).ok(),
        Some(Packet::Error {
            code: ErrorCode::NotDefined,
            message: b"server busy"
        })
    );
    wait_outcome(&server.metrics, Ended::Busy, 1).await;
    assert_eq!(server.metrics.transfers(Ended::Evicted), 0);
    let metrics = server.metrics.clone();
    assert_eq!(metrics.active_transfers(), 2);
    server.stop().await;
    assert_eq!(metrics.active_transfers(), 0);
    assert_eq!(metrics.transfers(Ended::Aborted), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_ends_a_transfer_and_stray_packets_are_ignored() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(10_000, 8)).unwrap();
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (_, tid) = recv(&sock).await;
    sock.send_to(b"\x00\x03\x00\x01hello", tid).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(&pkt[..4], b"\x00\x05\x00\x04");
    wait_outcome(&server.metrics, Ended::ProtocolError, 1).await;
    // An ACK to the listening port gets no answer; a truncated request gets an ERROR.
    let other = client().await;
    other
        .send_to(&packet::encode_ack(1), server.addr)
        .await
        .unwrap();
    other.send_to(b"\x00", server.addr).await.unwrap();
    let (pkt, _) = recv(&other).await;
    assert!(is_error(&pkt), "{pkt:?}");
    // A missing file is ERROR 1.
    let sock = client().await;
    assert!(matches!(
        fetch_raw(&sock, server.addr, &rrq(b"nope", &[])).await,
        Fetch::Error(1, _)
    ));
    let sock = client().await;
    assert!(matches!(
        fetch_raw(&sock, server.addr, &rrq(b"f", &[])).await,
        Fetch::Data(_)
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_dual_stack_wildcard() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        pxeforge_tests::skip(format_args!("no IPv6 loopback"));
        return;
    }
    let t = tree();
    let data = pattern(4000, 9);
    std::fs::write(t.root.join("f"), &data).unwrap();
    let server = start("[::]:0", &t.root, |_| {}).await;
    let port = server.addr.port();
    let v6 = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let to: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    sock_fetch_checks_source(&v6, to, &data).await;
    // An IPv4 client reaches the dual-stack socket; its reply comes from the v4 address too.
    let v4 = client().await;
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock_fetch_checks_source(&v4, to, &data).await;
    server.stop().await;
}

async fn sock_fetch_checks_source(
    sock: &tokio::net::UdpSocket,
    to: std::net::SocketAddr,
    data: &[u8],
) {
    sock.send_to(&rrq(b"f", &[]), to).await.unwrap();
    let (pkt, from) = recv(sock).await;
    assert_eq!(from.ip(), to.ip(), "reply source for {to}");
    assert_eq!(data_block(&pkt), Some((1, 512)));
    let abort = packet::encode_error(ErrorCode::NotDefined, "done");
    sock.send_to(&abort, from).await.unwrap();
    assert_eq!(
        fetch_raw(sock, to, &rrq(b"f", &[("blksize", "1024")])).await,
        Fetch::Data(data.to_vec())
    );
}

/// Files too large for the memory cache, sent in lockstep, run on a blocking thread: the same
/// protocol behaviour is checked on that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_lockstep_transfers_on_their_own_thread() {
    let t = tree();
    let data = pattern(40_000, 12);
    std::fs::write(t.root.join("f"), &data).unwrap();
    let streamed = |c: &mut pxeforge_tftp::TftpConfig| c.cache.max_file_size = 0;

    // Stalled client: retried, then given up with an ERROR, then freed.
    let server = start("127.0.0.1:0", &t.root, |c| {
        streamed(c);
        c.timeout = Duration::from_millis(100);
        c.max_retries = 2;
    })
    .await;
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, tid) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
    for _ in 0..3 {
        let (pkt, _) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((2, 512)));
    }
    let (pkt, _) = recv(&sock).await;
    assert!(is_error(&pkt), "{pkt:?}");
    wait_outcome(&server.metrics, Ended::Timeout, 1).await;
    wait_for("freed", || server.metrics.active_transfers() == 0).await;
    server.stop().await;

    let server = start("127.0.0.1:0", &t.root, |c| {
        streamed(c);
        c.timeout = Duration::from_secs(60);
    })
    .await;
    // A whole transfer, with duplicate ACKs on the way that must not double any block.
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[("blksize", "8192")]), server.addr)
        .await
        .unwrap();
    let (oack, tid) = recv(&sock).await;
    assert_eq!(oack, b"\x00\x06blksize\x008192\x00");
    let mut got = Vec::new();
    for block in 0u16..5 {
        sock.send_to(&packet::encode_ack(block), tid).await.unwrap();
        if block > 0 {
            sock.send_to(&packet::encode_ack(block), tid).await.unwrap();
        }
        let (pkt, _) = recv(&sock).await;
        let Ok(Packet::Data { block: b, data: d }) = packet::parse(&pkt) else {
            panic!("{pkt:?}")
        };
        assert_eq!(b, block + 1);
        got.extend_from_slice(d);
    }
    sock.send_to(&packet::encode_ack(5), tid).await.unwrap();
    assert_eq!(got, data);
    wait_outcome(&server.metrics, Ended::Complete, 1).await;
    assert_eq!(server.metrics.blocks_retransmitted(), 0);

    // A client ERROR ends it at once, despite the 60 s timeout.
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (_, tid) = recv(&sock).await;
    let abort = packet::encode_error(ErrorCode::NotDefined, "cancelled");
    sock.send_to(&abort, tid).await.unwrap();
    wait_outcome(&server.metrics, Ended::ClientAbort, 1).await;
    wait_for("freed", || server.metrics.active_transfers() == 0).await;

    // A new request from the same port replaces the running transfer.
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    assert_eq!(
        fetch_raw(&sock, server.addr, &rrq(b"f", &[])).await,
        Fetch::Data(data.clone())
    );
    wait_outcome(&server.metrics, Ended::Aborted, 1).await;
    wait_outcome(&server.metrics, Ended::Complete, 2).await;

    // Shutdown with a transfer waiting in recv on its thread: it ends, and so does the server.
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    let metrics = server.metrics.clone();
    server.stop().await;
    assert_eq!(metrics.active_transfers(), 0);
    assert_eq!(metrics.transfers(Ended::Aborted), 2);
}

/// Receives one datagram if it arrives within `wait`.
async fn recv_within(
    sock: &tokio::net::UdpSocket,
    wait: Duration,
) -> Option<(Vec<u8>, std::net::SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            buf.truncate(n);
            Some((buf, from))
        }
        Ok(Err(err)) => panic!("receive failed: {err}"),
        Err(_) => None,
    }
}

/// The next datagram from `tid`, skipping any from other transfer ports.
async fn recv_from_tid(sock: &tokio::net::UdpSocket, tid: std::net::SocketAddr) -> Vec<u8> {
    loop {
        let (pkt, from) = recv_within(sock, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("nothing from {tid} within 3 s"));
        if from == tid {
            return pkt;
        }
    }
}

/// Bound to another loopback address than 127.0.0.1 (Linux routes all of 127/8 to `lo`).
async fn client_on(ip: &str) -> tokio::net::UdpSocket {
    tokio::net::UdpSocket::bind(format!("{ip}:0"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_option_is_clamped_on_the_wire() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(10_000, 20)).unwrap();
    let abort = packet::encode_error(ErrorCode::OptionRefused, "probe");
    // The default maximum is 10 s.
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[("timeout", "255")]), server.addr)
        .await
        .unwrap();
    // Above the maximum the option is left unacknowledged (RFC 2349 allows no other value in
    // the OACK): no OACK at all here, the first block comes at once.
    let (first, tid) = recv(&sock).await;
    assert_eq!(&first[..4], b"\x00\x03\x00\x01", "DATA 1, no OACK");
    sock.send_to(&abort, tid).await.unwrap();
    server.stop().await;
    // A configured maximum, among other options.
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.max_timeout = Duration::from_secs(3);
    })
    .await;
    let sock = client().await;
    sock.send_to(
        &rrq(
            b"f",
            &[("tsize", "0"), ("timeout", "200"), ("blksize", "1024")],
        ),
        server.addr,
    )
    .await
    .unwrap();
    let (oack, tid) = recv(&sock).await;
    assert_eq!(oack, b"\x00\x06tsize\x0010000\x00blksize\x001024\x00");
    sock.send_to(&abort, tid).await.unwrap();
    server.stop().await;
}

/// A client that acknowledges every block, slowly but always within the timeout, is still
/// ended at the transfer deadline; on the async path and on the blocking lockstep thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_deadline_ends_a_dripping_client() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(200_000, 21)).unwrap();
    for streamed in [false, true] {
        let server = start("127.0.0.1:0", &t.root, |c| {
            c.timeout = Duration::from_secs(60);
            c.transfer_deadline = Duration::from_secs(1);
            c.transfer_min_rate = 0;
            if streamed {
                c.cache.max_file_size = 0;
            }
        })
        .await;
        let sock = client().await;
        let started = std::time::Instant::now();
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let mut ended_by_error = false;
        while started.elapsed() < Duration::from_secs(5) {
            let Some((pkt, tid)) = recv_within(&sock, Duration::from_secs(2)).await else {
                break;
            };
            if is_error(&pkt) {
                ended_by_error = true;
                break;
            }
            let (block, _) = data_block(&pkt).expect("DATA");
            tokio::time::sleep(Duration::from_millis(150)).await;
            sock.send_to(&packet::encode_ack(block), tid).await.unwrap();
        }
        let elapsed = started.elapsed();
        assert!(
            ended_by_error,
            "streamed={streamed}: no ERROR at the deadline"
        );
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
            "streamed={streamed}: ended after {elapsed:?}"
        );
        wait_for("freed", || server.metrics.active_transfers() == 0).await;
        assert_eq!(server.metrics.transfers(Ended::Deadline), 1);
        server.stop().await;
    }
}

/// A 22-byte RRQ, possibly from a spoofed source, that is never acknowledged gets its first
/// packet (DATA 1 or OACK) at most twice, and no ERROR: on both transfer paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_request_gets_at_most_two_packets() {
    let t = tree();
    std::fs::write(t.root.join("undionly.kpxe"), pattern(100_000, 22)).unwrap();
    for streamed in [false, true] {
        for options in [&[][..], &[("blksize", "1468")][..]] {
            let server = start("127.0.0.1:0", &t.root, |c| {
                c.timeout = Duration::from_millis(100);
                c.max_retries = 5;
                if streamed {
                    c.cache.max_file_size = 0;
                }
            })
            .await;
            let sock = client().await;
            let request = rrq(b"undionly.kpxe", options);
            if options.is_empty() {
                assert_eq!(request.len(), 22);
            }
            sock.send_to(&request, server.addr).await.unwrap();
            let mut got = Vec::new();
            while let Some((pkt, _)) = recv_within(&sock, Duration::from_millis(800)).await {
                got.push(pkt);
            }
            let what = format!("streamed={streamed} options={options:?}");
            assert!(!got.is_empty(), "{what}: no reply");
            assert!(got.len() <= 2, "{what}: {} packets", got.len());
            assert!(
                got.iter().all(|p| *p == got[0]),
                "{what}: not all the first packet"
            );
            assert!(!got.iter().any(|p| is_error(p)), "{what}");
            wait_for("freed", || server.metrics.active_transfers() == 0).await;
            assert_eq!(server.metrics.transfers(Ended::Timeout), 1, "{what}");
            server.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_transfers_are_rate_limited_per_source() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(10_000, 23)).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = Duration::from_secs(60);
        c.max_new_per_source_per_sec = 3;
        c.rate_limit_exempt = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let answered = |ip: &'static str, n: usize| {
        let addr = server.addr;
        async move {
            let mut socks = Vec::new();
            for _ in 0..n {
                let sock = client_on(ip).await;
                sock.send_to(&rrq(b"f", &[]), addr).await.unwrap();
                socks.push(sock);
            }
            let mut answered = 0;
            for sock in &socks {
                if recv_within(sock, Duration::from_millis(500))
                    .await
                    .is_some()
                {
                    answered += 1;
                }
            }
            answered
        }
    };
    // A burst of as many as the per-second rate, then silence (an answer would be reflection).
    assert_eq!(answered("127.0.0.2", 10).await, 3);
    // Other sources have their own allowance; exempt ones have none.
    assert_eq!(answered("127.0.0.3", 2).await, 2);
    assert_eq!(answered("127.0.0.1", 10).await, 10);
    // The allowance comes back with time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(answered("127.0.0.2", 10).await, 3);
    assert_eq!(server.metrics.transfers(Ended::RateLimited), 14);
    // Malformed requests are answered with an ERROR, so they count as well.
    let sock = client_on("127.0.0.4").await;
    for _ in 0..5 {
        sock.send_to(b"\x00\x01", server.addr).await.unwrap();
    }
    let mut errors = 0;
    while recv_within(&sock, Duration::from_millis(300))
        .await
        .is_some()
    {
        errors += 1;
    }
    assert_eq!(errors, 3);
    server.stop().await;
}

/// A spoofed RRQ from a client's address and port must not abort that client's transfer:
/// the old transfer runs on until the new one's first ACK. On both transfer paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_request_does_not_hijack_a_running_transfer() {
    let t = tree();
    let data = pattern(5000, 24);
    std::fs::write(t.root.join("f"), &data).unwrap();
    for streamed in [false, true] {
        let server = start("127.0.0.1:0", &t.root, |c| {
            c.timeout = Duration::from_secs(60);
            if streamed {
                c.cache.max_file_size = 0;
            }
        })
        .await;
        let sock = client().await;
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let (pkt, tid) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((1, 512)));
        let mut got = pkt[4..].to_vec();
        sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
        let pkt = recv_from_tid(&sock, tid).await;
        assert_eq!(data_block(&pkt), Some((2, 512)));
        got.extend_from_slice(&pkt[4..]);
        // The attacker's RRQ carries the client's address and port: indistinguishable.
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        // The client goes on acknowledging its own transfer, which must go on.
        for block in 2u16..=9 {
            sock.send_to(&packet::encode_ack(block), tid).await.unwrap();
            let pkt = recv_from_tid(&sock, tid).await;
            assert_eq!(
                data_block(&pkt).map(|(b, _)| b),
                Some(block + 1),
                "streamed={streamed}"
            );
            got.extend_from_slice(&pkt[4..]);
        }
        sock.send_to(&packet::encode_ack(10), tid).await.unwrap();
        assert_eq!(got, data, "streamed={streamed}");
        wait_outcome(&server.metrics, Ended::Complete, 1).await;
        assert_eq!(server.metrics.transfers(Ended::Aborted), 0);
        server.stop().await;
    }
}

/// A repeated request from the same port replaces the running transfer only when the new
/// transfer's first packet is acknowledged; until then both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_request_replaces_the_old_transfer_on_its_first_ack() {
    let t = tree();
    let data = pattern(3000, 25);
    std::fs::write(t.root.join("f"), &data).unwrap();
    for options in [&[][..], &[("tsize", "0"), ("blksize", "1024")][..]] {
        let server = start("127.0.0.1:0", &t.root, |c| {
            c.timeout = Duration::from_secs(60);
        })
        .await;
        let sock = client().await;
        sock.send_to(&rrq(b"f", options), server.addr)
            .await
            .unwrap();
        let (first, old_tid) = recv(&sock).await;
        sock.send_to(&rrq(b"f", options), server.addr)
            .await
            .unwrap();
        let (again, new_tid) = recv(&sock).await;
        assert_ne!(old_tid, new_tid);
        assert_eq!(first, again);
        assert_eq!(server.metrics.active_transfers(), 2, "{options:?}");
        assert_eq!(server.metrics.transfers(Ended::Aborted), 0);
        let first_ack = if options.is_empty() { 1 } else { 0 };
        sock.send_to(&packet::encode_ack(first_ack), new_tid)
            .await
            .unwrap();
        wait_outcome(&server.metrics, Ended::Aborted, 1).await;
        assert_eq!(server.metrics.active_transfers(), 1);
        server.stop().await;
    }
}

/// A stream of duplicate ACKs (which send nothing, and do not re-arm the retransmission timer)
/// must not keep a stalled transfer alive by keeping its socket readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ack_flood_does_not_starve_the_timer() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(100_000, 26)).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = Duration::from_millis(200);
        c.max_retries = 1;
        c.threads = 1;
    })
    .await;
    let sock = std::sync::Arc::new(client().await);
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, tid) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert_eq!(data_block(&pkt), Some((2, 512)));
    // Flood ACK 1 from the client's own port (the only port the transfer socket hears).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for _ in 0..3 {
        let (sock, stop) = (sock.clone(), stop.clone());
        flooders.push(std::thread::spawn(move || {
            let dup = packet::encode_ack(1);
            let fd = socket2::SockRef::from(&*sock);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fd.send_to(&dup, &tid.into());
            }
        }));
    }
    let started = std::time::Instant::now();
    let freed = async {
        while server.metrics.transfers(Ended::Timeout) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let in_time = tokio::time::timeout(Duration::from_secs(4), freed)
        .await
        .is_ok();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    assert!(
        in_time,
        "the stalled transfer outlived 4 s of duplicate ACKs (timeout 200 ms, 1 retry)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

/// Netascii from a file too large for the memory cache (read from disk as it is converted),
/// with windows and a client that keeps losing a window's last block, so that the server
/// restarts windows at blocks whose first byte may be the second half of a CR pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netascii_streams_from_disk_with_window_restarts() {
    let t = tree();
    let mut text = Vec::new();
    let mut i = 0u32;
    while text.len() < 60_000 {
        text.extend_from_slice(format!("{i}").as_bytes());
        text.extend_from_slice([&b"\n"[..], b"\r\n", b"\r", b"\n\n\r"][(i % 4) as usize]);
        i += 1;
    }
    std::fs::write(t.root.join("menu.txt"), &text).unwrap();
    let expected = pxeforge_tftp::netascii::encode(&text);
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.cache.max_file_size = 0;
        c.timeout = Duration::from_secs(60);
    })
    .await;
    let sock = client().await;
    let request = packet::encode_request(
        packet::OP_RRQ,
        b"menu.txt",
        packet::Mode::Netascii,
        &[("tsize", "0"), ("blksize", "512"), ("windowsize", "4")],
    );
    sock.send_to(&request, server.addr).await.unwrap();
    let (oack, tid) = recv(&sock).await;
    let tsize = format!("tsize\x00{}\x00", expected.len());
    assert!(oack.windows(tsize.len()).any(|w| w == tsize.as_bytes()));
    sock.send_to(&packet::encode_ack(0), tid).await.unwrap();
    let mut acked = 0u16;
    let mut round = 0u32;
    let mut restarts = 0;
    loop {
        let mut highest = acked;
        let mut last = false;
        for _ in 0..4 {
            let pkt = recv_from_tid(&sock, tid).await;
            let Ok(Packet::Data { block, data }) = packet::parse(&pkt) else {
                panic!("{pkt:?}")
            };
            assert_eq!(block, highest + 1);
            let offset = usize::from(block - 1) * 512;
            assert_eq!(
                data,
                &expected[offset..offset + data.len()],
                "block {block}"
            );
            highest = block;
            if data.len() < 512 {
                assert_eq!(offset + data.len(), expected.len());
                last = true;
                break;
            }
        }
        round += 1;
        let ack = if round % 2 == 1 && highest > acked + 1 {
            restarts += 1;
            highest - 1
        } else {
            highest
        };
        sock.send_to(&packet::encode_ack(ack), tid).await.unwrap();
        acked = ack;
        if last && ack == highest {
            break;
        }
    }
    assert!(restarts > 10, "{restarts} window restarts");
    wait_outcome(&server.metrics, Ended::Complete, 1).await;
    server.stop().await;
}

/// A flood of requests that are never acknowledged (spoofed sources cannot acknowledge) fills
/// the transfer table; a real client must still be served: each new request takes the place of
/// the oldest unacknowledged transfer, as a SYN cache does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_unacknowledged_requests_does_not_lock_out_a_client() {
    let t = tree();
    let data = pattern(20_000, 27);
    std::fs::write(t.root.join("f"), &data).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.max_transfers = 8;
        // Unacknowledged transfers would hold their slot for 2 minutes.
        c.timeout = Duration::from_secs(60);
    })
    .await;
    // One acknowledged transfer, which the flood must leave alone.
    let steady = client().await;
    steady.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, steady_tid) = recv(&steady).await;
    assert_eq!(data_block(&pkt), Some((1, 512)));
    steady
        .send_to(&packet::encode_ack(1), steady_tid)
        .await
        .unwrap();
    let (pkt, _) = recv(&steady).await;
    assert_eq!(data_block(&pkt), Some((2, 512)));
    // 200 requests from 50 ports that never acknowledge (and never read their replies).
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.push(client().await);
    }
    for _ in 0..4 {
        for sock in &flood {
            sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("the flood is admitted", || {
        server.metrics.transfers(Ended::Evicted) >= 150
    })
    .await;
    assert_eq!(server.metrics.transfers(Ended::Busy), 0);
    // The real client gets its file.
    let sock = client().await;
    assert_eq!(
        fetch_raw(&sock, server.addr, &rrq(b"f", &[("blksize", "1024")])).await,
        Fetch::Data(data.clone())
    );
    // And the acknowledged transfer ran on through the flood (blocks 1 and 2 seen above).
    let mut got = data[..512].to_vec();
    got.extend_from_slice(&pkt[4..]);
    for block in 2u16..=39 {
        steady
            .send_to(&packet::encode_ack(block), steady_tid)
            .await
            .unwrap();
        let pkt = recv_from_tid(&steady, steady_tid).await;
        assert_eq!(data_block(&pkt).map(|(b, _)| b), Some(block + 1));
        got.extend_from_slice(&pkt[4..]);
    }
    steady
        .send_to(&packet::encode_ack(40), steady_tid)
        .await
        .unwrap();
    assert_eq!(got, data);
    wait_outcome(&server.metrics, Ended::Complete, 2).await;
    assert!(server.metrics.active_transfers() <= 8 + 1);
    server.stop().await;
}

/// One client address may hold `max_transfers_per_addr` transfers (over all its ports); at the
/// cap its oldest unacknowledged transfer makes room, and when all are acknowledged it gets
/// ERROR 0 "busy". Other addresses, and exempt ones, are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_cap_on_concurrent_transfers() {
    let t = tree();
    std::fs::write(t.root.join("f"), pattern(10_000, 28)).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = Duration::from_secs(60);
        c.max_transfers_per_addr = 3;
        c.max_new_per_source_per_sec = 0;
        c.rate_limit_exempt = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    // Three acknowledged transfers from three ports of 127.0.0.2.
    let mut held = Vec::new();
    for _ in 0..3 {
        let sock = client_on("127.0.0.2").await;
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let (pkt, tid) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((1, 512)));
        sock.send_to(&packet::encode_ack(1), tid).await.unwrap();
        let (pkt, _) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((2, 512)));
        held.push((sock, tid));
    }
    // A fourth from yet another port: busy, from the listening port.
    let sock = client_on("127.0.0.2").await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, from) = recv(&sock).await;
    assert_eq!(from, server.addr);
    assert_eq!(
        packet::parse(&pkt).ok(),
        Some(Packet::Error {
            code: ErrorCode::NotDefined,
            message: b"busy"
        })
    );
    wait_outcome(&server.metrics, Ended::ClientBusy, 1).await;
    assert_eq!(server.metrics.active_transfers(), 3);
    // Another address has its own share; an exempt one has no cap.
    let mut others = Vec::new();
    for ip in [
        "127.0.0.3",
        "127.0.0.1",
        "127.0.0.1",
        "127.0.0.1",
        "127.0.0.1",
    ] {
        let sock = client_on(ip).await;
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let (pkt, from) = recv(&sock).await;
        assert_ne!(from, server.addr, "{ip}");
        assert_eq!(data_block(&pkt), Some((1, 512)), "{ip}");
        others.push(sock);
    }
    assert_eq!(server.metrics.transfers(Ended::ClientBusy), 1);
    // 127.0.0.3 at its cap with unacknowledged transfers: each new request takes the place of
    // the oldest of them instead of being refused.
    for _ in 0..4 {
        let sock = client_on("127.0.0.3").await;
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let (pkt, from) = recv(&sock).await;
        assert_ne!(from, server.addr);
        assert_eq!(data_block(&pkt), Some((1, 512)));
        others.push(sock);
    }
    wait_outcome(&server.metrics, Ended::Evicted, 2).await;
    assert_eq!(server.metrics.transfers(Ended::ClientBusy), 1);
    wait_for("127.0.0.2: 3, 127.0.0.3: 3, 127.0.0.1: 4", || {
        server.metrics.active_transfers() == 10
    })
    .await;
    // A slot the client frees is usable again.
    let abort = packet::encode_error(ErrorCode::NotDefined, "done");
    let (sock, tid) = &held[0];
    sock.send_to(&abort, *tid).await.unwrap();
    wait_outcome(&server.metrics, Ended::ClientAbort, 1).await;
    let sock = client_on("127.0.0.2").await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, from) = recv(&sock).await;
    assert_ne!(from, server.addr);
    assert_eq!(data_block(&pkt), Some((1, 512)));
    server.stop().await;
}
