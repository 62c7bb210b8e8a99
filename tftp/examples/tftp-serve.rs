//! Standalone TFTP server for benchmarks: `tftp-serve ROOT ADDR:PORT`.
//! Prints `listening on ADDR` and serves until SIGINT or SIGTERM. `TFTP_LOCKSTEP_SLICE_US`
//! overrides `lockstep_slice` (0: the kernel's default slice).

use std::path::PathBuf;

use pxeforge_tftp::{TftpConfig, TftpServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: tftp-serve ROOT ADDR:PORT");
        std::process::exit(2);
    };
    let mut config = TftpConfig {
        root: PathBuf::from(root),
        ..TftpConfig::default()
    };
    // For A/B runs of the bench: the lockstep thread's time slice, 0 = the kernel's default.
    if let Some(us) = std::env::var("TFTP_LOCKSTEP_SLICE_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.lockstep_slice = std::time::Duration::from_micros(us);
    }
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
