//! DHCPv4 for pxeforge: proxyDHCP beside a site's own DHCP server, or a reservation server for an
//! isolated provisioning network. Data flows decode (`wire`) → facts (`facts`) → decision
//! (`decide`, pure) → encode (`encode`); `server` owns the sockets and `leases` the database.

pub mod decide;
pub mod encode;
pub mod facts;
pub mod leases;
pub mod metrics;
pub mod probe;
pub mod pxe;
pub mod server;
pub mod site;
pub mod watch;
pub mod wire;

pub use decide::{
    Action, Destination, Input, LeaseOp, LeaseOutcome, Mode, Port, RequestKind, Silence,
};
pub use facts::{ClientFacts, Firmware, MessageType};
pub use metrics::DhcpMetrics;
pub use server::{DhcpConfig, DhcpError, DhcpServer};
pub use site::{BootFiles, DhcpSite, HostEntry, Mac, Pool};

use std::net::{Ipv4Addr, SocketAddrV4};

/// Decode a datagram into client facts: exactly the path the server takes before deciding.
pub fn parse_request(data: &[u8]) -> Result<ClientFacts, String> {
    let packet = wire::decode(data).map_err(|e| e.to_string())?;
    ClientFacts::from_packet(&packet).map_err(|e| e.to_string())
}

/// The server's whole per-datagram path except the sockets: decode, facts, the lease operation
/// (performed by `lease`, the database in the server), and the decision. The server, the
/// property tests and the fuzz target all call this.
pub fn process(
    data: &[u8],
    port: Port,
    source: SocketAddrV4,
    server_ip: Ipv4Addr,
    site: &DhcpSite,
    mode: Mode,
    lease: impl FnOnce(&ClientFacts, LeaseOp) -> LeaseOutcome,
) -> Result<(ClientFacts, Action), String> {
    let facts = parse_request(data)?;
    let input = Input {
        facts: &facts,
        port,
        source,
        server_ip,
    };
    let op = decide::lease_op(&input, site, mode);
    let outcome = lease(&facts, op);
    let action = decide::decide(&input, site, mode, outcome);
    Ok((facts, action))
}
