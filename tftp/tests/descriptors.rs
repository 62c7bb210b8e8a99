//! Out of file descriptors: a request the server cannot give a socket (or a file) gets ERROR 0
//! "server busy", counted as `busy`, instead of silence; and the server serves again as soon
//! as descriptors are free.

mod common;

use std::time::Duration;

use common::*;
use pxeforge_tftp::packet::{self, ErrorCode, Packet};
use pxeforge_tftp::Ended;

/// Set in the environment of the child process that `out_of_descriptors_answers_busy` runs.
const EMFILE_CHILD: &str = "PXEFORGE_TFTP_TEST_EMFILE_CHILD";

/// Runs `emfile_child` in a child process: the descriptor limit is the whole process's, and
/// running out would break the tests running beside it here. Bounded to 60 s.
#[test]
fn out_of_descriptors_answers_busy() {
    pxeforge_child::run_test_in_child(
        "emfile_child",
        (EMFILE_CHILD, "1"),
        Duration::from_secs(60),
        "emfile-child: done",
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Opens /dev/null until the process has no descriptor left.
fn run_out(hog: &mut Vec<std::fs::File>) {
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
}

async fn reply_within(
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

fn is_busy(pkt: &[u8]) -> bool {
    packet::parse(pkt).ok()
        == Some(Packet::Error {
            code: ErrorCode::NotDefined,
            message: b"server busy",
        })
}

/// The child half of `out_of_descriptors_answers_busy`; does nothing unless `EMFILE_CHILD` is
/// set. With no descriptor left, a request gets "server busy" from the listening port; with one
/// left (the transfer socket takes it, the file open finds none), "server busy" from the
/// transfer port; with three left, a large lockstep transfer that cannot have its thread's
/// duplicate descriptors runs on the async path instead; with descriptors back, all is served.
#[test]
fn emfile_child() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        return;
    }
    // A low limit, so that running out takes a few hundred descriptors, not a million.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a valid struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = lim.rlim_max.min(256);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = tree();
        let small = pattern(3000, 40);
        let big = pattern(200_000, 41);
        write_aged(&t.root.join("f"), &small, 5);
        write_aged(&t.root.join("big"), &big, 5);
        let server = start("127.0.0.1:0", &t.root, |c| {
            c.timeout = Duration::from_secs(60);
            c.threads = 1;
            // `big` is streamed from disk, in lockstep on a thread of its own when it can.
            c.cache.max_file_size = 64 << 10;
        })
        .await;
        let sock = client().await;
        // Up and warm (threads started, the small file cached) while there are descriptors.
        assert_eq!(
            fetch_raw(&sock, server.addr, &rrq(b"f", &[])).await,
            Fetch::Data(small.clone())
        );
        assert_eq!(
            fetch_raw(&sock, server.addr, &rrq(b"big", &[])).await,
            Fetch::Data(big.clone())
        );

        let mut hog = Vec::new();
        run_out(&mut hog);
        tokio::time::sleep(Duration::from_millis(100)).await;
        run_out(&mut hog);

        // No descriptor for the transfer socket: busy, from the listening socket.
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let reply = reply_within(&sock, Duration::from_secs(3)).await;
        let Some((pkt, from)) = reply else {
            panic!("no answer while out of descriptors")
        };
        assert!(is_busy(&pkt), "{:?}", packet::parse(&pkt));
        assert_eq!(from, server.addr);
        wait_outcome(&server.metrics, Ended::Busy, 1).await;
        println!("emfile-child: no descriptor: busy from the listening port");

        // One descriptor: the transfer socket has it, the open of the file finds none.
        hog.pop();
        sock.send_to(&rrq(b"f", &[]), server.addr).await.unwrap();
        let reply = reply_within(&sock, Duration::from_secs(3)).await;
        let Some((pkt, from)) = reply else {
            panic!("no answer with one descriptor")
        };
        assert!(is_busy(&pkt), "{:?}", packet::parse(&pkt));
        assert_ne!(from, server.addr);
        wait_outcome(&server.metrics, Ended::Busy, 2).await;
        println!("emfile-child: no descriptor for the file: busy from the transfer port");

        // Three: socket, root directory (closed after the open), file; then only one of the
        // two duplicates the lockstep thread needs: the transfer runs on the async path.
        wait_for("the transfer socket closed", || {
            server.metrics.active_transfers() == 0
        })
        .await;
        run_out(&mut hog);
        hog.truncate(hog.len().saturating_sub(3));
        assert_eq!(
            fetch_raw(&sock, server.addr, &rrq(b"big", &[])).await,
            Fetch::Data(big.clone())
        );
        println!("emfile-child: lockstep without its duplicates: served on the async path");

        drop(hog);
        assert_eq!(
            fetch_raw(&sock, server.addr, &rrq(b"f", &[])).await,
            Fetch::Data(small)
        );
        wait_outcome(&server.metrics, Ended::Complete, 4).await;
        assert_eq!(server.metrics.transfers(Ended::IoError), 0);
        assert_eq!(server.metrics.transfers(Ended::Busy), 2);
        server.stop().await;
        println!("emfile-child: done");
    });
}
