//! TFTP packet decoding and encoding (RFC 1350, RFC 2347 OACK).
//!
//! Decoding works on a borrowed datagram and never allocates more than the datagram's own size,
//! so the receive buffer bounds every allocation.

use std::fmt;

/// Largest block size any TFTP peer may negotiate (RFC 2348).
pub const MAX_BLKSIZE: u16 = 65464;
/// Block size when no option was negotiated (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// At most this many options are read from a request; more are ignored.
pub const MAX_OPTIONS: usize = 16;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

impl Mode {
    fn parse(raw: &[u8]) -> Option<Mode> {
        if raw.eq_ignore_ascii_case(b"octet") {
            Some(Mode::Octet)
        } else if raw.eq_ignore_ascii_case(b"netascii") {
            Some(Mode::Netascii)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTransferId,
    FileExists,
    NoSuchUser,
    OptionRefused,
    Other(u16),
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            other => ErrorCode::Other(other),
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(code) => code,
        }
    }
}

/// A request option as sent by the client: name and value, not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOption<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// A decoded TFTP packet borrowing from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: ErrorCode, message: &'a [u8] },
    Oack { options: Vec<RawOption<'a>> },
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a [u8],
    pub mode: Mode,
    pub options: Vec<RawOption<'a>>,
}

/// Why a datagram is not a valid TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet shorter than its header")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("field not terminated by NUL")]
    Unterminated,
    #[error("empty file name")]
    EmptyFilename,
    #[error("unsupported transfer mode {0:?}")]
    BadMode(String),
}

/// Decodes one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    if buf.len() < 2 {
        return Err(ParseError::Truncated);
    }
    let opcode = u16::from_be_bytes([buf[0], buf[1]]);
    let body = &buf[2..];
    match opcode {
        OP_RRQ => parse_request(body).map(Packet::Rrq),
        OP_WRQ => parse_request(body).map(Packet::Wrq),
        OP_DATA => {
            let block = read_u16(body)?;
            Ok(Packet::Data {
                block,
                data: &body[2..],
            })
        }
        OP_ACK => Ok(Packet::Ack {
            block: read_u16(body)?,
        }),
        OP_ERROR => {
            let code = ErrorCode::from_u16(read_u16(body)?);
            // Some clients omit the trailing NUL of the message; accept that.
            let rest = &body[2..];
            let message = match rest.iter().position(|&b| b == 0) {
                Some(end) => &rest[..end],
                None => rest,
            };
            Ok(Packet::Error { code, message })
        }
        OP_OACK => {
            let mut fields = Fields { rest: body };
            Ok(Packet::Oack {
                options: parse_options(&mut fields)?,
            })
        }
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn read_u16(body: &[u8]) -> Result<u16, ParseError> {
    match body {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(ParseError::Truncated),
    }
}

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<Option<&'a [u8]>, ParseError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Unterminated)?;
        let field = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Ok(Some(field))
    }
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let mut fields = Fields { rest: body };
    let filename = fields.next()?.ok_or(ParseError::Truncated)?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let mode_raw = fields.next()?.ok_or(ParseError::Truncated)?;
    let mode = Mode::parse(mode_raw)
        .ok_or_else(|| ParseError::BadMode(String::from_utf8_lossy(mode_raw).into_owned()))?;
    let options = parse_options(&mut fields)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

fn parse_options<'a>(fields: &mut Fields<'a>) -> Result<Vec<RawOption<'a>>, ParseError> {
    let mut options = Vec::new();
    while let Some(name) = fields.next()? {
        // A name without a value (some clients pad requests with NULs) ends the list.
        let value = match fields.next() {
            Ok(Some(value)) => value,
            Ok(None) | Err(_) => break,
        };
        if name.is_empty() {
            break;
        }
        if options.len() < MAX_OPTIONS {
            options.push(RawOption { name, value });
        }
    }
    Ok(options)
}

/// Encodes an ACK packet.
pub fn encode_ack(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// Encodes an ERROR packet. The message is truncated so the packet fits a minimal datagram.
pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let msg = message.as_bytes();
    let msg = &msg[..msg.len().min(400)];
    let mut out = Vec::with_capacity(5 + msg.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.as_u16().to_be_bytes());
    out.extend(msg.iter().map(|&b| if b == 0 { b'?' } else { b }));
    out.push(0);
    out
}

/// Encodes an OACK packet from accepted options.
pub fn encode_oack(options: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&OP_OACK.to_be_bytes());
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Encodes a read or write request (used by tests and benchmarks acting as a client).
pub fn encode_request(
    opcode: u16,
    filename: &[u8],
    mode: Mode,
    options: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + filename.len() + 16);
    out.extend_from_slice(&opcode.to_be_bytes());
    out.extend_from_slice(filename);
    out.push(0);
    out.extend_from_slice(mode.as_str().as_bytes());
    out.push(0);
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rrq_with_options() {
        let bytes = encode_request(
            OP_RRQ,
            b"snponly.efi",
            Mode::Octet,
            &[("tsize", "0"), ("blksize", "1468")],
        );
        let Packet::Rrq(req) = parse(&bytes).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(req.filename, b"snponly.efi");
        assert_eq!(req.mode, Mode::Octet);
        assert_eq!(req.options.len(), 2);
        assert_eq!(req.options[1].name, b"blksize");
        assert_eq!(req.options[1].value, b"1468");
    }

    #[test]
    fn mode_is_case_insensitive_and_mail_is_refused() {
        let bytes = b"\x00\x01f\x00NetASCII\x00";
        let Packet::Rrq(req) = parse(bytes).unwrap() else {
            panic!()
        };
        assert_eq!(req.mode, Mode::Netascii);
        assert!(matches!(
            parse(b"\x00\x01f\x00mail\x00"),
            Err(ParseError::BadMode(_))
        ));
    }

    #[test]
    fn embedded_nul_in_filename_cannot_smuggle_a_path() {
        // The NUL ends the name; what follows becomes the mode, which is rejected.
        let bytes = b"\x00\x01ok\x00../../etc/passwd\x00octet\x00";
        assert!(matches!(parse(bytes), Err(ParseError::BadMode(_))));
    }

    #[test]
    fn rejects_truncated_and_unknown() {
        assert_eq!(parse(b""), Err(ParseError::Truncated));
        assert_eq!(parse(b"\x00\x04\x00"), Err(ParseError::Truncated));
        assert_eq!(parse(b"\x00\x09"), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(parse(b"\x00\x01abc"), Err(ParseError::Unterminated));
        assert_eq!(
            parse(b"\x00\x01\x00octet\x00"),
            Err(ParseError::EmptyFilename)
        );
    }

    #[test]
    fn error_packet_round_trip() {
        let bytes = encode_error(ErrorCode::OptionRefused, "User aborted the transfer");
        assert_eq!(
            parse(&bytes).unwrap(),
            Packet::Error {
                code: ErrorCode::OptionRefused,
                message: b"User aborted the transfer"
            }
        );
    }

    #[test]
    fn options_beyond_the_limit_are_dropped() {
        let opts: Vec<(String, String)> = (0..40).map(|i| (format!("o{i}"), "1".into())).collect();
        let refs: Vec<(&str, &str)> = opts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let bytes = encode_request(OP_RRQ, b"f", Mode::Octet, &refs);
        let Packet::Rrq(req) = parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(req.options.len(), MAX_OPTIONS);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                if let Ok(Packet::Rrq(req) | Packet::Wrq(req)) = parse(&bytes) {
                    prop_assert!(req.options.len() <= MAX_OPTIONS);
                    prop_assert!(req.filename.len() < bytes.len());
                }
            }

            #[test]
            fn request_round_trip(
                name in proptest::collection::vec(1u8..=255, 1..200),
                blksize in any::<u16>(),
            ) {
                let value = blksize.to_string();
                let bytes = encode_request(OP_RRQ, &name, Mode::Octet, &[("blksize", &value)]);
                let Ok(Packet::Rrq(req)) = parse(&bytes) else {
                    return Err(TestCaseError::fail("not an RRQ"));
                };
                prop_assert_eq!(req.filename, &name[..]);
                prop_assert_eq!(req.options[0].value, value.as_bytes());
            }

            #[test]
            fn ack_round_trip(block in any::<u16>()) {
                let bytes = encode_ack(block);
                prop_assert_eq!(parse(&bytes), Ok(Packet::Ack { block }));
            }
        }
    }
}
