//! Fuzzes the TFTP server's per-datagram path (`pxeforge_tftp`): the packet decoder on the
//! whole input, then a session driven by it: the first datagram is the request (decoded,
//! negotiated against limits taken from the input), the rest are what the client sends to the
//! transfer port (decoded into events exactly as the socket loops do), interleaved with
//! retransmission timeouts and the transfer deadline. Every action of the transfer state
//! machine is checked against its invariants, and netascii blocks are read through the
//! streaming encoder in the order the state machine asks for them and compared with the
//! whole-file conversion.
//!
//! Input: 6 header bytes (flags, max_retries, max_blksize ×2, max_windowsize, max_timeout),
//! then datagrams, each a length byte and that many bytes; length 0 is a timeout, 255 the
//! deadline. Flag bit 0 serves the netascii encoding of the input itself, otherwise a
//! synthetic size from the next 4 bytes (block-number rollover included).
//!
//!     cargo +nightly fuzz run tftp_packet
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pxeforge_tftp::netascii;
use pxeforge_tftp::options::{negotiate, Limits};
use pxeforge_tftp::packet::{self, Packet, MAX_BLKSIZE, MAX_OPTIONS};
use pxeforge_tftp::transfer::{Action, Event, Outcome, Params, Transfer, FIRST_PACKET_SENDS};

/// What happens to the transfer next.
enum Step<'a> {
    Datagram(&'a [u8]),
    Timeout,
    Deadline,
}

fn steps(mut rest: &[u8]) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        match len {
            0 => out.push(Step::Timeout),
            255 => out.push(Step::Deadline),
            n => {
                let n = usize::from(n).min(tail.len());
                out.push(Step::Datagram(&tail[..n]));
                rest = &tail[n..];
                continue;
            }
        }
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The decoder on arbitrary bytes: no panic, borrowed fields inside the input.
    if let Ok(Packet::Rrq(r) | Packet::Wrq(r)) = packet::parse(data) {
        assert!(r.options.len() <= MAX_OPTIONS);
        assert!(r.filename.len() < data.len());
    }

    let [flags, max_retries, b0, b1, max_windowsize, max_timeout, body @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_blksize: u16::from_be_bytes([*b0, *b1]),
        max_windowsize: u16::from(*max_windowsize),
        max_timeout: Duration::from_secs(u64::from(*max_timeout)),
    };
    let netascii_mode = flags & 1 == 1;
    let (size, body) = if netascii_mode {
        (netascii::encoded_len(data), body)
    } else {
        match body {
            [a, b, c, d, rest @ ..] => (u64::from(u32::from_be_bytes([*a, *b, *c, *d])), rest),
            _ => return,
        }
    };
    let mut steps = steps(body).into_iter();
    let Some(Step::Datagram(request)) = steps.next() else {
        return;
    };
    let Ok(Packet::Rrq(request)) = packet::parse(request) else {
        return;
    };

    let n = negotiate(&request.options, Some(size), limits);
    assert!((8..=MAX_BLKSIZE).contains(&n.blksize));
    if n.oack.iter().any(|(name, _)| *name == "blksize") {
        assert!(n.blksize <= limits.max_blksize.clamp(8, MAX_BLKSIZE));
    } else {
        assert_eq!(n.blksize, packet::DEFAULT_BLKSIZE);
    }
    assert!(n.windowsize >= 1 && n.windowsize <= limits.max_windowsize.max(1));
    if let Some(t) = n.timeout {
        assert!(t >= Duration::from_secs(1) && t <= limits.max_timeout.max(Duration::from_secs(1)));
    }
    assert!(n.oack.len() <= 4);
    // The OACK we would send decodes back to the same options.
    let oack = packet::encode_oack(&n.oack);
    let Ok(Packet::Oack { options }) = packet::parse(&oack) else {
        panic!("own OACK does not decode");
    };
    assert_eq!(options.len(), n.oack.len());
    for (o, (name, value)) in options.iter().zip(&n.oack) {
        assert_eq!(o.name, name.as_bytes());
        assert_eq!(o.value, value.as_bytes());
    }

    let max_retries = u32::from(max_retries % 8);
    let params = Params {
        size,
        blksize: n.blksize,
        windowsize: n.windowsize,
        oack: !n.oack.is_empty(),
        max_retries,
    };
    let whole = if netascii_mode {
        netascii::encode(data)
    } else {
        Vec::new()
    };
    let mut stream = netascii::Stream::new();
    let mut block = vec![0u8; usize::from(n.blksize)];

    let (mut t, mut action) = Transfer::start(params);
    let mut sends_before_ack = 0u32;
    let mut timeouts_in_a_row = 0u32;
    let mut ended: Option<Outcome> = None;
    loop {
        match action {
            Action::SendOack { .. } => assert!(params.oack),
            Action::SendBlocks { first, last, .. } => {
                assert!(first >= 1 && first <= last && last <= t.last_block());
                assert!(last - first < u64::from(params.windowsize));
                for index in first..=last {
                    let (offset, len) = t.block_range(index);
                    assert!(offset + len as u64 <= size && len <= block.len());
                    if netascii_mode {
                        let mut source: &[u8] = data;
                        stream
                            .read_at(&mut source, offset, &mut block[..len])
                            .expect("in range");
                        let at = offset as usize;
                        assert_eq!(&block[..len], &whole[at..at + len], "block {index}");
                    }
                }
            }
            Action::Wait => {}
            Action::Fail { outcome, .. } => {
                // An ERROR only to a client that has acknowledged something.
                assert!(
                    t.acknowledged() || !matches!(outcome, Outcome::Timeout | Outcome::Deadline)
                );
                assert_eq!(t.outcome(), Some(outcome));
            }
            Action::Finish(outcome) => assert_eq!(t.outcome(), Some(outcome)),
        }
        if matches!(action, Action::SendOack { .. } | Action::SendBlocks { .. })
            && !t.acknowledged()
        {
            sends_before_ack += 1;
            assert!(sends_before_ack <= FIRST_PACKET_SENDS);
        }
        if let Some(o) = ended {
            // Once ended, always ended the same way.
            assert_eq!(action, Action::Finish(o));
        }
        ended = t.outcome();
        let Some(step) = steps.next() else {
            break;
        };
        let event = match step {
            Step::Datagram(d) => Event::from_datagram(d),
            Step::Timeout => Event::Timeout,
            Step::Deadline => Event::Deadline,
        };
        timeouts_in_a_row = if event == Event::Timeout {
            timeouts_in_a_row + 1
        } else {
            0
        };
        action = t.on_event(event);
        if timeouts_in_a_row > max_retries || event == Event::Deadline {
            assert!(t.outcome().is_some());
        }
    }
});
