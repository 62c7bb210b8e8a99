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
    // DATA 1, then the same block again for each retry; nothing is ever acknowledged.
    for _ in 0..3 {
        let (pkt, _) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((1, 512)));
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
    let mut held = Vec::new();
    for _ in 0..2 {
        let sock = client().await;
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let (pkt, _) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((1, 512)));
        held.push(sock);
    }
    let sock = client().await;
    sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
    let (pkt, _) = recv(&sock).await;
    assert!(is_error(&pkt), "{pkt:?}");
    wait_outcome(&server.metrics, Ended::Busy, 1).await;
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
    for _ in 0..3 {
        let (pkt, _) = recv(&sock).await;
        assert_eq!(data_block(&pkt), Some((1, 512)));
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
