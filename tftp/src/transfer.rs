//! The read-transfer state machine: a pure function of (state, event) → action.
//!
//! Blocks are numbered internally from 1 with a `u64` so that files of more than 65535 blocks
//! work; on the wire the block number is that index modulo 65536 (the common rollover to 0).
//! The OACK, when one is sent, is "block 0" and is acknowledged by ACK 0.
//!
//! Until the client acknowledges something, nothing shows that it sent the request at all (the
//! source of a UDP request is easily spoofed), so the first packet is sent at most twice
//! ([`FIRST_PACKET_SENDS`]) and the transfer then ends without an ERROR: a spoofed request
//! reflects at most two packets at its supposed sender.

use crate::packet::{self, ErrorCode, Packet};

/// Times the first packet (OACK or the first window) is sent while nothing has been
/// acknowledged: once, and once again after a timeout.
pub const FIRST_PACKET_SENDS: u32 = 2;

/// Parameters fixed when the transfer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Bytes to send.
    pub size: u64,
    pub blksize: u16,
    pub windowsize: u16,
    /// Whether an OACK starts the transfer (the client then acknowledges block 0).
    pub oack: bool,
    /// Retransmissions allowed without progress before the transfer gives up (at most
    /// `FIRST_PACKET_SENDS - 1` while nothing has been acknowledged).
    pub max_retries: u32,
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Complete,
    /// The client sent an ERROR (for example ERROR 8 after a `tsize` probe).
    ClientAbort,
    /// The client stopped answering.
    Timeout,
    /// The client sent something that is not part of a read transfer.
    ProtocolError,
    /// The transfer's total time ran out (see `TftpConfig::transfer_deadline`).
    Deadline,
}

/// Something that happened to a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Ack(u16),
    /// An ERROR packet from the client.
    ClientError,
    /// The retransmission timer fired.
    Timeout,
    /// A packet from the client that has no place in a read transfer.
    Unexpected,
    /// The transfer's total deadline passed.
    Deadline,
}

impl Event {
    /// What a datagram from the client is to a read transfer (both socket loops use this).
    pub fn from_datagram(datagram: &[u8]) -> Event {
        match packet::parse(datagram) {
            Ok(Packet::Ack { block }) => Event::Ack(block),
            Ok(Packet::Error { .. }) => Event::ClientError,
            _ => Event::Unexpected,
        }
    }
}

/// What the socket loop must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SendOack {
        retransmit: bool,
    },
    /// Send data blocks `first..=last` (internal indices).
    SendBlocks {
        first: u64,
        last: u64,
        retransmit: bool,
    },
    /// Nothing to send; keep waiting with the current timer.
    Wait,
    /// Send an ERROR packet, then end the transfer.
    Fail {
        code: ErrorCode,
        message: &'static str,
        outcome: Outcome,
    },
    /// End the transfer without sending anything.
    Finish(Outcome),
}

/// State of one read transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    params: Params,
    last_block: u64,
    /// Lowest block index the client has not acknowledged (0 while the OACK is outstanding).
    next_unacked: u64,
    /// Highest block index sent so far.
    sent_upto: u64,
    retries: u32,
    /// Whether the client has acknowledged anything (the OACK or a block).
    acknowledged: bool,
    outcome: Option<Outcome>,
}

impl Transfer {
    /// Starts a transfer and returns the first thing to send.
    pub fn start(params: Params) -> (Transfer, Action) {
        let params = Params {
            blksize: params.blksize.max(1),
            windowsize: params.windowsize.max(1),
            ..params
        };
        // The last block is always shorter than blksize, possibly empty.
        let last_block = params.size / u64::from(params.blksize) + 1;
        let mut t = Transfer {
            params,
            last_block,
            next_unacked: 0,
            sent_upto: 0,
            retries: 0,
            acknowledged: false,
            outcome: None,
        };
        let action = if params.oack {
            Action::SendOack { retransmit: false }
        } else {
            t.next_unacked = 1;
            t.send_window()
        };
        (t, action)
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn last_block(&self) -> u64 {
        self.last_block
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Whether the client has acknowledged anything yet: the first sign that the request came
    /// from where it says (a repeated request replaces the old transfer only then).
    pub fn acknowledged(&self) -> bool {
        self.acknowledged
    }

    /// Byte range of block `index` (1-based) within the content.
    pub fn block_range(&self, index: u64) -> (u64, usize) {
        let blksize = u64::from(self.params.blksize);
        let offset = index.saturating_sub(1).saturating_mul(blksize);
        let len = self.params.size.saturating_sub(offset).min(blksize);
        (offset, len as usize)
    }

    /// The block number that goes on the wire for block `index`.
    pub fn wire_block(index: u64) -> u16 {
        (index & 0xffff) as u16
    }

    /// Advances the state machine by one event.
    pub fn on_event(&mut self, event: Event) -> Action {
        if let Some(outcome) = self.outcome {
            return Action::Finish(outcome);
        }
        match event {
            Event::Ack(wire) => self.on_ack(wire),
            Event::ClientError => self.finish(Outcome::ClientAbort),
            Event::Timeout => {
                self.retries = self.retries.saturating_add(1);
                let budget = if self.acknowledged {
                    self.params.max_retries
                } else {
                    self.params.max_retries.min(FIRST_PACKET_SENDS - 1)
                };
                if self.retries > budget {
                    return self.give_up(Outcome::Timeout, "timed out");
                }
                if self.next_unacked == 0 {
                    Action::SendOack { retransmit: true }
                } else {
                    Action::SendBlocks {
                        first: self.next_unacked,
                        last: self.sent_upto,
                        retransmit: true,
                    }
                }
            }
            Event::Deadline => self.give_up(Outcome::Deadline, "transfer deadline exceeded"),
            Event::Unexpected => {
                self.outcome = Some(Outcome::ProtocolError);
                Action::Fail {
                    code: ErrorCode::IllegalOperation,
                    message: "only ACK or ERROR expected",
                    outcome: Outcome::ProtocolError,
                }
            }
        }
    }

    fn on_ack(&mut self, wire: u16) -> Action {
        // Map the 16-bit number onto the outstanding window. An ACK of an earlier block (a
        // duplicate, or a delayed one) lands far beyond `sent_upto` and is ignored: answering
        // it would double every later send (the Sorcerer's Apprentice bug).
        let base = self.next_unacked;
        let index = base + u64::from(wire.wrapping_sub(Self::wire_block(base)));
        if index > self.sent_upto {
            return Action::Wait;
        }
        self.acknowledged = true;
        if index == self.last_block {
            return self.finish(Outcome::Complete);
        }
        self.next_unacked = index + 1;
        self.retries = 0;
        self.send_window()
    }

    fn send_window(&mut self) -> Action {
        let first = self.next_unacked;
        let last = first
            .saturating_add(u64::from(self.params.windowsize) - 1)
            .min(self.last_block);
        self.sent_upto = self.sent_upto.max(last);
        Action::SendBlocks {
            first,
            last,
            retransmit: false,
        }
    }

    /// Ends the transfer from our side: with an ERROR to a client that has shown it is there,
    /// silently otherwise (an ERROR to a spoofed source would be one more reflected packet).
    fn give_up(&mut self, outcome: Outcome, message: &'static str) -> Action {
        if !self.acknowledged {
            return self.finish(outcome);
        }
        self.outcome = Some(outcome);
        Action::Fail {
            code: ErrorCode::NotDefined,
            message,
            outcome,
        }
    }

    fn finish(&mut self, outcome: Outcome) -> Action {
        self.outcome = Some(outcome);
        Action::Finish(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(size: u64, blksize: u16, windowsize: u16, oack: bool) -> Params {
        Params {
            size,
            blksize,
            windowsize,
            oack,
            max_retries: 3,
        }
    }

    fn blocks(first: u64, last: u64) -> Action {
        Action::SendBlocks {
            first,
            last,
            retransmit: false,
        }
    }

    #[test]
    fn lockstep_without_options() {
        let (mut t, a) = Transfer::start(params(1024, 512, 1, false));
        assert_eq!(a, blocks(1, 1));
        assert_eq!(t.last_block(), 3, "1024 bytes need an empty third block");
        assert_eq!(t.on_event(Event::Ack(1)), blocks(2, 2));
        assert_eq!(t.on_event(Event::Ack(2)), blocks(3, 3));
        assert_eq!(t.block_range(3), (1024, 0));
        assert_eq!(t.on_event(Event::Ack(3)), Action::Finish(Outcome::Complete));
        assert_eq!(t.on_event(Event::Ack(3)), Action::Finish(Outcome::Complete));
    }

    #[test]
    fn duplicate_ack_sends_nothing() {
        let (mut t, _) = Transfer::start(params(5000, 512, 1, false));
        assert_eq!(t.on_event(Event::Ack(1)), blocks(2, 2));
        assert_eq!(t.on_event(Event::Ack(1)), Action::Wait);
        assert_eq!(t.on_event(Event::Ack(0)), Action::Wait);
        assert_eq!(t.on_event(Event::Ack(2)), blocks(3, 3));
    }

    #[test]
    fn oack_then_windows() {
        let (mut t, a) = Transfer::start(params(10 * 1468, 1468, 4, true));
        assert_eq!(a, Action::SendOack { retransmit: false });
        assert_eq!(
            t.on_event(Event::Ack(3)),
            Action::Wait,
            "ACK before OACK ack"
        );
        assert_eq!(t.on_event(Event::Ack(0)), blocks(1, 4));
        assert_eq!(t.on_event(Event::Ack(4)), blocks(5, 8));
        // The client lost block 6: it acknowledges 5 and the window restarts at 6.
        assert_eq!(t.on_event(Event::Ack(5)), blocks(6, 9));
        assert_eq!(t.on_event(Event::Ack(9)), blocks(10, 11));
        assert_eq!(
            t.on_event(Event::Ack(11)),
            Action::Finish(Outcome::Complete)
        );
    }

    #[test]
    fn timeout_retransmits_then_gives_up() {
        let (mut t, _) = Transfer::start(params(100_000, 1024, 4, false));
        assert_eq!(t.on_event(Event::Ack(4)), blocks(5, 8));
        let resend = Action::SendBlocks {
            first: 5,
            last: 8,
            retransmit: true,
        };
        for _ in 0..3 {
            assert_eq!(t.on_event(Event::Timeout), resend);
        }
        assert!(matches!(
            t.on_event(Event::Timeout),
            Action::Fail {
                outcome: Outcome::Timeout,
                ..
            }
        ));
        assert_eq!(t.outcome(), Some(Outcome::Timeout));
    }

    #[test]
    fn first_packet_is_sent_at_most_twice_before_any_ack() {
        // Nothing acknowledged means nothing shows the source is real (it may be spoofed):
        // one retransmission, then a silent end, whatever the retry budget.
        for oack in [false, true] {
            let (mut t, first) = Transfer::start(params(100_000, 512, 4, oack));
            let again = match first {
                Action::SendOack { .. } => Action::SendOack { retransmit: true },
                Action::SendBlocks { first, last, .. } => Action::SendBlocks {
                    first,
                    last,
                    retransmit: true,
                },
                other => panic!("{other:?}"),
            };
            assert_eq!(t.on_event(Event::Timeout), again, "oack={oack}");
            assert_eq!(
                t.on_event(Event::Timeout),
                Action::Finish(Outcome::Timeout),
                "oack={oack}"
            );
            assert_eq!(t.outcome(), Some(Outcome::Timeout));
        }
        // Once something was acknowledged, the whole budget applies.
        let (mut t, _) = Transfer::start(params(100_000, 512, 1, false));
        assert_eq!(t.on_event(Event::Ack(1)), blocks(2, 2));
        for _ in 0..3 {
            assert!(matches!(
                t.on_event(Event::Timeout),
                Action::SendBlocks {
                    retransmit: true,
                    ..
                }
            ));
        }
        assert!(matches!(
            t.on_event(Event::Timeout),
            Action::Fail {
                outcome: Outcome::Timeout,
                ..
            }
        ));
    }

    #[test]
    fn progress_resets_retries() {
        let (mut t, _) = Transfer::start(params(100_000, 1024, 1, true));
        assert_eq!(
            t.on_event(Event::Timeout),
            Action::SendOack { retransmit: true }
        );
        assert_eq!(t.on_event(Event::Ack(0)), blocks(1, 1));
        for _ in 0..3 {
            assert!(matches!(
                t.on_event(Event::Timeout),
                Action::SendBlocks { .. }
            ));
        }
        assert_eq!(t.on_event(Event::Ack(1)), blocks(2, 2));
        for _ in 0..3 {
            assert!(matches!(
                t.on_event(Event::Timeout),
                Action::SendBlocks { .. }
            ));
        }
    }

    #[test]
    fn tsize_probe_abort_ends_at_once() {
        let (mut t, _) = Transfer::start(params(173_792, 1468, 4, true));
        assert_eq!(
            t.on_event(Event::ClientError),
            Action::Finish(Outcome::ClientAbort)
        );
        assert_eq!(
            t.on_event(Event::Timeout),
            Action::Finish(Outcome::ClientAbort)
        );
    }

    #[test]
    fn deadline_ends_the_transfer() {
        let (mut t, _) = Transfer::start(params(100_000, 512, 1, false));
        assert_eq!(t.on_event(Event::Ack(1)), blocks(2, 2));
        assert!(matches!(
            t.on_event(Event::Deadline),
            Action::Fail {
                outcome: Outcome::Deadline,
                ..
            }
        ));
        assert_eq!(t.on_event(Event::Ack(2)), Action::Finish(Outcome::Deadline));
        // Never acknowledged: ends without an ERROR to a source that may be spoofed.
        let (mut t, _) = Transfer::start(params(100_000, 512, 1, true));
        assert_eq!(
            t.on_event(Event::Deadline),
            Action::Finish(Outcome::Deadline)
        );
    }

    #[test]
    fn block_numbers_roll_over() {
        // 32 MiB at 512 bytes: 65536 full blocks and an empty 65537th.
        let size = 32 * 1024 * 1024;
        let (mut t, _) = Transfer::start(params(size, 512, 1, false));
        assert_eq!(t.last_block(), 65537);
        for index in 1..65537u64 {
            let a = t.on_event(Event::Ack(Transfer::wire_block(index)));
            assert_eq!(a, blocks(index + 1, index + 1));
        }
        assert_eq!(Transfer::wire_block(65536), 0);
        assert_eq!(Transfer::wire_block(65537), 1);
        assert_eq!(t.on_event(Event::Ack(1)), Action::Finish(Outcome::Complete));
    }

    #[test]
    fn unexpected_packet_fails_the_transfer() {
        let (mut t, _) = Transfer::start(params(10, 512, 1, false));
        assert!(matches!(
            t.on_event(Event::Unexpected),
            Action::Fail {
                code: ErrorCode::IllegalOperation,
                ..
            }
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                8 => any::<u16>().prop_map(Event::Ack),
                1 => Just(Event::ClientError),
                3 => Just(Event::Timeout),
                1 => Just(Event::Unexpected),
                1 => Just(Event::Deadline),
            ]
        }

        proptest! {
            #[test]
            fn any_event_sequence_is_safe(
                size in 0u64..5_000_000,
                blksize in 8u16..=65464,
                windowsize in 1u16..=64,
                oack in any::<bool>(),
                max_retries in 0u32..6,
                events in proptest::collection::vec(event(), 0..300),
            ) {
                let p = Params { size, blksize, windowsize, oack, max_retries };
                let (mut t, first) = Transfer::start(p);
                let mut actions = vec![first];
                let mut timeouts_in_a_row = 0u32;
                let mut sends_before_any_ack = 1u32;
                for ev in events {
                    timeouts_in_a_row = if ev == Event::Timeout { timeouts_in_a_row + 1 } else { 0 };
                    let action = t.on_event(ev);
                    if !t.acknowledged()
                        && matches!(action, Action::SendOack { .. } | Action::SendBlocks { .. })
                    {
                        sends_before_any_ack += 1;
                    }
                    actions.push(action);
                    // A run of timeouts longer than the retry budget always ends the transfer.
                    if timeouts_in_a_row > max_retries {
                        prop_assert!(t.outcome().is_some());
                    }
                    if ev == Event::Deadline {
                        prop_assert!(t.outcome().is_some());
                    }
                }
                // Nothing acknowledged: the first packet went out at most twice, and no ERROR.
                prop_assert!(sends_before_any_ack <= FIRST_PACKET_SENDS);
                if !t.acknowledged() {
                    let gave_up_loudly = actions.iter().any(|a| matches!(a, Action::Fail { outcome, .. }
                        if *outcome == Outcome::Timeout || *outcome == Outcome::Deadline));
                    prop_assert!(!gave_up_loudly);
                }
                for a in actions {
                    if let Action::SendBlocks { first, last, .. } = a {
                        prop_assert!(first >= 1 && first <= last);
                        prop_assert!(last <= t.last_block());
                        prop_assert!(last - first < u64::from(windowsize));
                        let (offset, len) = t.block_range(last);
                        prop_assert!(offset + len as u64 <= size);
                        prop_assert!(len <= usize::from(blksize));
                    }
                }
            }

            #[test]
            fn in_order_acks_complete_every_transfer(
                size in 0u64..200_000,
                blksize in 8u16..=4096,
                windowsize in 1u16..=16,
                oack in any::<bool>(),
            ) {
                let p = Params { size, blksize, windowsize, oack, max_retries: 1 };
                let (mut t, mut action) = Transfer::start(p);
                let mut sent = 0u64;
                let mut steps = 0u64;
                loop {
                    steps += 1;
                    prop_assert!(steps < 1_000_000);
                    action = match action {
                        Action::SendOack { .. } => t.on_event(Event::Ack(0)),
                        Action::SendBlocks { first, last, .. } => {
                            for i in first..=last { sent += t.block_range(i).1 as u64; }
                            t.on_event(Event::Ack(Transfer::wire_block(last)))
                        }
                        Action::Finish(o) => { prop_assert_eq!(o, Outcome::Complete); break; }
                        other => return Err(TestCaseError::fail(format!("{other:?}"))),
                    };
                }
                prop_assert_eq!(sent, size);
            }
        }
    }
}
