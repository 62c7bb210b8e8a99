//! A large lockstep transfer wakes only its own thread for each block: the TFTP runtime's
//! threads (the listener's and the workers', named `pxeforge-tftp*`) sleep through it. Each
//! block used to wake a worker too (the transfer socket was also registered with its epoll),
//! two threads per block competing for the cores. Counted with the threads' context switches
//! in /proc: a count, not a time.

mod common;

use common::*;
use pxeforge_tftp::Ended;

/// This process's threads named `pxeforge-tftp*`, and their context switches so far.
fn tftp_thread_switches() -> (usize, u64) {
    let (mut threads, mut total) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with("pxeforge-tftp") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        threads += 1;
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    (threads, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockstep_blocks_do_not_wake_the_runtime_threads() {
    let t = tree();
    let data = pattern(4_000_001, 7);
    // Larger than the memory cache's per-file limit: streamed, on a lockstep thread.
    std::fs::write(t.root.join("large.img"), &data).unwrap();
    let server = start("127.0.0.1:0", &t.root, |c| {
        c.cache.max_file_size = 1 << 20;
        c.threads = 2;
    })
    .await;
    let blocks = data.len() as u64 / 1468 + 1;
    // The listener's thread and one worker's.
    wait_for("the TFTP threads", || tftp_thread_switches().0 == 2).await;
    let (_, before) = tftp_thread_switches();
    let socket = client().await;
    let fetched = fetch_raw(
        &socket,
        server.addr,
        &rrq(b"large.img", &[("blksize", "1468")]),
    )
    .await;
    assert_eq!(fetched, Fetch::Data(data));
    wait_outcome(&server.metrics, Ended::Complete, 1).await;
    let switches = tftp_thread_switches().1 - before;
    // Starting and ending the transfer takes a few; one per block is the fault.
    assert!(
        switches < blocks / 10,
        "the TFTP runtime threads switched {switches} times during a transfer of {blocks} blocks"
    );
    server.stop().await;
}
