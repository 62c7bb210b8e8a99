//! OVMF's own PXE client, from a real capture: `tsize 0 blksize 1468 windowsize 4` probe, ERROR 8
//! abort, then the real fetch. The captured client packets drive the pure functions and are then
//! replayed byte for byte against a running server.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use pxeforge_tftp::options::{negotiate, Limits};
use pxeforge_tftp::packet::{self, ErrorCode, Mode, Packet};
use pxeforge_tftp::transfer::{Action, Event, Outcome, Params, Transfer};
use pxeforge_tftp::Ended;

/// The client's packets of `../shared/captures/ovmf-native-pxe.pcap`, cut with
/// `tcpdump -w data/ovmf-native-pxe-tftp-client.pcap 'src host 10.77.0.104 and udp and not port
/// 67 and not port 68 and not port 4011'` so that the vectors live in the repository.
fn capture() -> Option<PathBuf> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ovmf-native-pxe-tftp-client.pcap");
    if path.is_file() {
        Some(path)
    } else {
        pxeforge_tests::skip(format_args!("capture {} not found", path.display()));
        None
    }
}

/// The client's TFTP packets: its requests to port 69 and everything it sent to transfer ports.
fn client_packets(path: &std::path::Path) -> Vec<Udp> {
    let all = read_pcap_udp(path);
    let client = all
        .iter()
        .find(|u| u.dst.port() == 69)
        .expect("an RRQ in the capture")
        .src
        .ip();
    all.into_iter()
        .filter(|u| u.src.ip() == client && ![67, 68, 4011].contains(&u.dst.port()))
        .collect()
}

#[test]
fn captured_requests_decode_and_negotiate() {
    let Some(path) = capture() else { return };
    let packets = client_packets(&path);
    let rrqs: Vec<_> = packets.iter().filter(|u| u.dst.port() == 69).collect();
    assert_eq!(rrqs.len(), 2, "probe and real fetch");

    let Packet::Rrq(probe) = packet::parse(&rrqs[0].payload).unwrap() else {
        panic!("first request is not an RRQ")
    };
    assert_eq!(probe.filename, b"snponly.efi");
    assert_eq!(probe.mode, Mode::Octet);
    let n = negotiate(&probe.options, Some(173_792), Limits::default());
    assert_eq!(
        n.oack,
        vec![
            ("tsize", "173792".to_string()),
            ("blksize", "1468".to_string()),
            ("windowsize", "4".to_string())
        ]
    );

    // The client's answer to the OACK: ERROR 8, which must end the transfer at once.
    let abort = packets
        .iter()
        .find(|u| u.src.port() == rrqs[0].src.port() && u.dst.port() != 69)
        .unwrap();
    let Packet::Error { code, message } = packet::parse(&abort.payload).unwrap() else {
        panic!("abort is not an ERROR")
    };
    assert_eq!(code, ErrorCode::OptionRefused);
    assert_eq!(message, b"User aborted the transfer");
    let (mut t, first) = Transfer::start(Params {
        size: 173_792,
        blksize: n.blksize,
        windowsize: n.windowsize,
        oack: true,
        max_retries: 5,
    });
    assert_eq!(first, Action::SendOack { retransmit: false });
    assert_eq!(
        t.on_event(Event::ClientError),
        Action::Finish(Outcome::ClientAbort)
    );

    // The real fetch: every ACK the client sent, fed to our state machine, must complete it.
    let Packet::Rrq(fetch) = packet::parse(&rrqs[1].payload).unwrap() else {
        panic!("second request is not an RRQ")
    };
    let n = negotiate(&fetch.options, Some(173_792), Limits::default());
    assert_eq!(
        n.oack.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ["blksize", "windowsize"]
    );
    let (mut t, _) = Transfer::start(Params {
        size: 173_792,
        blksize: n.blksize,
        windowsize: n.windowsize,
        oack: true,
        max_retries: 5,
    });
    let mut last = Action::Wait;
    let mut acks = 0;
    for u in packets
        .iter()
        .filter(|u| u.src.port() == rrqs[1].src.port() && u.dst.port() != 69)
    {
        if let Ok(Packet::Ack { block }) = packet::parse(&u.payload) {
            acks += 1;
            last = t.on_event(Event::Ack(block));
        }
    }
    assert!(
        acks > 100,
        "the capture holds the whole fetch ({acks} ACKs)"
    );
    assert_eq!(last, Action::Finish(Outcome::Complete));
    assert_eq!(t.last_block(), 119);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_probe_abort_then_fetch_against_the_server() {
    let Some(path) = capture() else { return };
    let packets = client_packets(&path);
    let rrqs: Vec<_> = packets.iter().filter(|u| u.dst.port() == 69).collect();
    let abort = packets
        .iter()
        .find(|u| u.src.port() == rrqs[0].src.port() && u.dst.port() != 69)
        .unwrap();

    let t = tree();
    let content = pattern(173_792, 7);
    std::fs::write(t.root.join("snponly.efi"), &content).unwrap();
    // A long timeout: if the abort did not free the transfer, it would linger for minutes.
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.timeout = std::time::Duration::from_secs(60);
    })
    .await;

    let sock = client().await;
    sock.send_to(&rrqs[0].payload, server.addr).await.unwrap();
    let (oack, from) = recv(&sock).await;
    assert_eq!(
        oack,
        b"\x00\x06tsize\x00173792\x00blksize\x001468\x00windowsize\x004\x00"
    );
    assert_eq!(server.metrics.active_transfers(), 1);
    sock.send_to(&abort.payload, from).await.unwrap();
    wait_outcome(&server.metrics, Ended::ClientAbort, 1).await;
    wait_for("the aborted transfer is freed", || {
        server.metrics.active_transfers() == 0
    })
    .await;

    let fetch = client().await;
    assert_eq!(
        fetch_raw(&fetch, server.addr, &rrqs[1].payload).await,
        Fetch::Data(content)
    );
    wait_outcome(&server.metrics, Ended::Complete, 1).await;
    assert_eq!(server.metrics.active_transfers(), 0);
    assert_eq!(server.metrics.blocks_retransmitted(), 0);
    server.stop().await;
}
