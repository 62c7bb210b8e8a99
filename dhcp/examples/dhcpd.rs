//! A standalone pxeforge DHCP server for benchmarks and manual tests:
//!
//! ```text
//! dhcpd --mode reservation --interface eth0 --lease-db /tmp/leases.db \
//!       --pool 10.1.1.0-10.1.255.254/16 [--router 10.1.0.1] [--http-port 8080]
//! ```
//! Logs go to stderr; set RUST_LOG (default `info`: one line per decision).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pxeforge_dhcp::{DhcpConfig, DhcpServer, DhcpSite, Mode, Pool};

fn usage() -> ! {
    eprintln!(
        "usage: dhcpd --mode off|proxy|reservation [--interface IF] [--lease-db PATH] \
         [--pool START-END/PREFIX]... [--router IP] [--http-port N] [--port N] [--pxe-port N] \
         [--ping-check on|off] [--recv-buffer BYTES] [--group-commit-max N]"
    );
    std::process::exit(2)
}

fn parse_pool(s: &str) -> Option<Pool> {
    let (range, prefix) = s.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some(Pool {
        start: start.parse().ok()?,
        end: end.parse().ok()?,
        prefix: prefix.parse().ok()?,
        router: None,
        dns: Vec::new(),
        domain: None,
    })
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut config = DhcpConfig::new(Mode::Proxy, PathBuf::from("leases.db"));
    let mut site = DhcpSite::default();
    let mut router: Option<Ipv4Addr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--mode" => config.mode = value.parse().unwrap_or_else(|_| usage()),
            "--interface" => config.interface = Some(value),
            "--lease-db" => config.lease_db = PathBuf::from(value),
            "--pool" => site
                .pools
                .push(parse_pool(&value).unwrap_or_else(|| usage())),
            "--ping-check" => {
                site.ping_check = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => usage(),
                }
            }
            "--router" => router = Some(value.parse().unwrap_or_else(|_| usage())),
            "--http-port" => site.http_port = value.parse().unwrap_or_else(|_| usage()),
            "--port" => config.port = value.parse().unwrap_or_else(|_| usage()),
            "--pxe-port" => config.pxe_port = value.parse().unwrap_or_else(|_| usage()),
            "--recv-buffer" => config.recv_buffer_bytes = value.parse().unwrap_or_else(|_| usage()),
            "--group-commit-max" => {
                config.group_commit_max = value.parse().unwrap_or_else(|_| usage())
            }
            _ => usage(),
        }
    }
    for pool in &mut site.pools {
        pool.router = router;
    }
    let mode = config.mode;
    let interface = config.interface.clone().unwrap_or_else(|| "*".into());
    let server = match DhcpServer::bind(config, Arc::new(ArcSwap::from_pointee(site))).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dhcpd: {e}");
            std::process::exit(1);
        }
    };
    for addr in server.local_addrs() {
        println!(
            "dhcpd: {} listening on {addr} (interface {interface})",
            mode.name()
        );
    }
    println!("dhcpd: ready");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = server.run(shutdown).await {
        eprintln!("dhcpd: {e}");
        std::process::exit(1);
    }
}
