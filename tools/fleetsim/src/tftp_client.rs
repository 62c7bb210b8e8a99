//! A minimal TFTP client (RFC 1350 with the blksize option of RFC 2348), as PXE firmware uses
//! it to fetch the iPXE binary: one lock-step transfer per host, retransmitting on silence.
//! Packets are encoded and decoded by the TFTP crate's `packet` module, the server's own code.

use pxeforge_tftp::packet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer after {0} tries")]
    Timeout(u32),
    #[error("server error {code}: {message}")]
    Server { code: u16, message: String },
    #[error("unexpected packet: {0}")]
    Protocol(String),
    #[error("received {got} bytes, the file has {want}")]
    Length { got: u64, want: u64 },
    #[error("data differs from the served file at byte {0}")]
    Mismatch(u64),
}

/// A server's packet as this client sees it: the few kinds a reader acts on, decoded by the
/// TFTP crate ([`pxeforge_tftp::packet::parse`]) and simplified for matching.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Data {
        block: u16,
        data: &'a [u8],
    },
    /// Options with lower-case names, values as sent.
    Oack(Vec<(String, String)>),
    Error {
        code: u16,
        message: String,
    },
    /// A packet a server does not send to a reader (RRQ, WRQ, ACK), by opcode.
    Other(u16),
}

/// A read request in octet mode asking for `blksize`.
pub fn rrq(file: &str, blksize: u16) -> Vec<u8> {
    packet::encode_request(
        packet::OP_RRQ,
        file.as_bytes(),
        packet::Mode::Octet,
        &[("blksize", &blksize.to_string())],
    )
}

pub fn ack(block: u16) -> [u8; 4] {
    packet::encode_ack(block)
}

pub fn parse(buf: &[u8]) -> Result<Packet<'_>, String> {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(match packet::parse(buf).map_err(|e| e.to_string())? {
        packet::Packet::Data { block, data } => Packet::Data { block, data },
        packet::Packet::Oack { options } => Packet::Oack(
            options
                .iter()
                .map(|o| (lossy(o.name).to_ascii_lowercase(), lossy(o.value)))
                .collect(),
        ),
        packet::Packet::Error { code, message } => Packet::Error {
            code: code.as_u16(),
            message: lossy(message),
        },
        packet::Packet::Rrq(_) => Packet::Other(packet::OP_RRQ),
        packet::Packet::Wrq(_) => Packet::Other(packet::OP_WRQ),
        packet::Packet::Ack { .. } => Packet::Other(packet::OP_ACK),
    })
}

/// Fetches `file` and checks it equals `expect`; returns the number of bytes received.
pub async fn fetch(
    server: SocketAddr,
    file: &str,
    blksize: u16,
    expect: &[u8],
) -> Result<u64, TftpError> {
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| TftpError::Protocol("address".into()))?;
    let sock = UdpSocket::bind(local).await?;
    let request = rrq(file, blksize);
    let mut last_sent: Vec<u8> = request.clone();
    let mut peer: Option<SocketAddr> = None;
    let mut block_size = 512usize;
    let mut expected_block: u16 = 1;
    let mut got: u64 = 0;
    let mut buf = vec![0u8; 65536];
    let tries = 5;
    sock.send_to(&request, server).await?;
    let mut silent = 0;
    loop {
        let recv = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await;
        let (n, from) = match recv {
            Ok(r) => r?,
            Err(_) => {
                silent += 1;
                if silent >= tries {
                    return Err(TftpError::Timeout(tries));
                }
                sock.send_to(&last_sent, peer.unwrap_or(server)).await?;
                continue;
            }
        };
        // Packets from anyone but the transfer's peer belong to no transfer of ours.
        match peer {
            Some(p) if p != from => continue,
            None if from.ip() != server.ip() => continue,
            _ => {}
        }
        match parse(&buf[..n]).map_err(TftpError::Protocol)? {
            Packet::Oack(opts) if peer.is_none() => {
                peer = Some(from);
                if let Some((_, v)) = opts.iter().find(|(k, _)| k == "blksize") {
                    block_size = v
                        .parse()
                        .map_err(|_| TftpError::Protocol(format!("blksize {v:?}")))?;
                }
                last_sent = ack(0).to_vec();
                sock.send_to(&last_sent, from).await?;
                silent = 0;
            }
            Packet::Oack(_) if peer == Some(from) && expected_block == 1 => {
                // The server repeated its OACK: our ACK 0 was lost or late.
                sock.send_to(&last_sent, from).await?;
            }
            Packet::Data { block, data } => {
                peer.get_or_insert(from);
                if block == expected_block {
                    let at = got as usize;
                    let end = at + data.len();
                    if end > expect.len() {
                        return Err(TftpError::Length {
                            got: end as u64,
                            want: expect.len() as u64,
                        });
                    }
                    if expect[at..end] != *data {
                        return Err(TftpError::Mismatch(got));
                    }
                    got += data.len() as u64;
                    last_sent = ack(block).to_vec();
                    sock.send_to(&last_sent, from).await?;
                    silent = 0;
                    if data.len() < block_size {
                        if got != expect.len() as u64 {
                            return Err(TftpError::Length {
                                got,
                                want: expect.len() as u64,
                            });
                        }
                        return Ok(got);
                    }
                    expected_block = expected_block.wrapping_add(1);
                } else if block == expected_block.wrapping_sub(1) {
                    // Our ACK was lost: say it again.
                    sock.send_to(&last_sent, from).await?;
                }
            }
            Packet::Error { code, message } => return Err(TftpError::Server { code, message }),
            other => return Err(TftpError::Protocol(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packets() {
        assert_eq!(
            rrq("a.bin", 1468),
            b"\0\x01a.bin\0octet\0blksize\x001468\0".to_vec()
        );
        assert_eq!(ack(258), [0, 4, 1, 2]);
        assert_eq!(
            parse(b"\0\x03\0\x07xyz").unwrap(),
            Packet::Data {
                block: 7,
                data: b"xyz"
            }
        );
        assert_eq!(
            parse(b"\0\x06BLKSIZE\x001468\0").unwrap(),
            Packet::Oack(vec![("blksize".into(), "1468".into())])
        );
        assert_eq!(
            parse(b"\0\x05\0\x01not found\0").unwrap(),
            Packet::Error {
                code: 1,
                message: "not found".into()
            }
        );
        assert!(parse(b"\0").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&data);
        }
    }

    /// Against the real TFTP server crate: a file spanning several blocks arrives intact.
    #[tokio::test]
    async fn fetches_from_the_tftp_server() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
        std::fs::write(dir.path().join("undionly.kpxe"), &data).unwrap();
        let config = pxeforge_tftp::TftpConfig {
            root: dir.path().to_path_buf(),
            ..Default::default()
        };
        let server = pxeforge_tftp::TftpServer::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        assert_eq!(
            fetch(addr, "undionly.kpxe", 1468, &data).await.unwrap(),
            data.len() as u64
        );
        let mut wrong = data.clone();
        wrong[50_000] ^= 1;
        assert!(matches!(
            fetch(addr, "undionly.kpxe", 1468, &wrong).await,
            Err(TftpError::Mismatch(_))
        ));
        assert!(matches!(
            fetch(addr, "missing.efi", 1468, &data).await,
            Err(TftpError::Server { .. })
        ));
        let _ = tx.send(());
        let _ = task.await;
    }
}
