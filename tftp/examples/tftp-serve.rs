//! Standalone TFTP server for benchmarks: `tftp-serve ROOT ADDR:PORT`.
//! Prints `listening on ADDR` and serves until SIGINT or SIGTERM.

use std::path::PathBuf;

use pxeforge_tftp::{TftpConfig, TftpServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: tftp-serve ROOT ADDR:PORT");
        std::process::exit(2);
    };
    let config = TftpConfig {
        root: PathBuf::from(root),
        ..TftpConfig::default()
    };
    let server = TftpServer::bind(addr.parse()?, config).await?;
    println!("listening on {}", server.local_addr());
    let metrics = server.metrics();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    server
        .run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    let mut text = String::new();
    metrics.write_prometheus(&mut text);
    eprint!("{text}");
    Ok(())
}
