//! `pxeforge.toml`: where the service listens, what it advertises, and site-wide install settings.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub tftp: TftpSettings,
    pub dhcp: DhcpSettings,
    pub install: InstallSettings,
    pub limits: LimitsSettings,
    pub admin: AdminSettings,
    pub loaders: LoadersSettings,
}

/// `[loaders]`: where the first-stage boot files of the loaders store come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadersSettings {
    /// Tried in order by `pxeforge loaders sync` (and by `serve` when the store is empty); the
    /// first source that has a file wins. A folder (Debian's `ipxe` package, a local iPXE
    /// build; symlinks are resolved at copy time), or `releases`: shim and GRUB of every synced
    /// release, under `<release>/`.
    pub sources: Vec<String>,
}

impl Default for LoadersSettings {
    fn default() -> Self {
        LoadersSettings {
            sources: vec!["/usr/lib/ipxe".into(), LOADERS_FROM_RELEASES.into()],
        }
    }
}

/// The `loaders.sources` entry that stands for the synced release trees.
pub const LOADERS_FROM_RELEASES: &str = "releases";

/// The admin listener: the inventory, the events and every state change, apart from the boot
/// network and behind a bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where the admin API listens.
    pub listen: SocketAddr,
    /// The bearer token, in a file of mode 0600 (relative: under the state directory);
    /// `serve` creates it when it does not exist.
    pub token_file: PathBuf,
    /// PEM certificate chain and key (relative: under the site): both set, the admin API is
    /// served over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Allows a non-loopback `listen` without TLS (the token then crosses the network in clear).
    pub allow_plain_remote: bool,
    /// Also serve `/metrics` on the boot listener (for a Prometheus that cannot reach the admin
    /// listener; the counters say nothing secret, but the boot network sees them).
    pub metrics_on_boot_listener: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token_file: PathBuf::from("admin.token"),
            tls_cert: None,
            tls_key: None,
            allow_plain_remote: false,
            metrics_on_boot_listener: false,
        }
    }
}

/// What one client may hold: the segment is not ours, so no client may take a service down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// HTTP connections one client address (an IPv6 /64) may hold at once; 0: no cap.
    pub http_connections_per_addr: usize,
    /// Requests served on one keep-alive connection before it is closed.
    pub http_requests_per_connection: usize,
    /// HTTP connections served at once (the rest wait in the listen queue).
    pub http_connections: usize,
    /// Seconds an idle keep-alive connection is kept.
    pub http_idle_secs: u64,
    /// Seconds from a request's first byte to its whole head (and body): else 408.
    pub http_request_secs: u64,
    /// Seconds without a byte leaving before a client that does not read is dropped.
    pub http_stall_secs: u64,
    /// Addresses and networks (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`) the per-client caps do
    /// not apply to: loopback benches, racks behind NAT, load balancers.
    pub exempt: Vec<String>,
    /// Rendered `/ipxe` scripts kept in memory (inventory hosts only); 0: none are kept.
    pub script_cache_entries: usize,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            http_connections_per_addr: 256,
            http_requests_per_connection: 10_000,
            http_connections: 16_384,
            http_idle_secs: 75,
            http_request_secs: 30,
            http_stall_secs: 60,
            exempt: Vec::new(),
            script_cache_entries: 16_384,
        }
    }
}

/// `ADDR` or `ADDR/PREFIX` (IPv4 or IPv6): what `limits.exempt` accepts.
pub fn valid_network(s: &str) -> bool {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
    match addr.parse::<std::net::IpAddr>() {
        Ok(a) => {
            let max = if a.is_ipv4() { 32 } else { 128 };
            prefix.is_empty() || prefix.parse::<u8>().is_ok_and(|p| p <= max)
        }
        Err(_) => false,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub http: SocketAddr,
    /// What hosts are told to fetch from. Empty: derived per request from the Host header
    /// (so one server answers correctly on every interface), or from `http` offline.
    pub base_url: String,
    pub state_dir: PathBuf,
    pub assets_dir: PathBuf,
    /// Largest accepted POST /events body.
    pub max_event_bytes: usize,
    /// Started as root, `serve` drops to this user once every port is bound (and makes the
    /// state directory its own); empty: it keeps running as whoever started it.
    pub user: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            base_url: String::new(),
            state_dir: PathBuf::from("state"),
            assets_dir: PathBuf::from("assets"),
            max_event_bytes: 16 * 1024,
            user: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The folder TFTP and `/tftp/` serve; unset: the loaders store's current item
    /// (`STATE/loaders/current`, filled by `pxeforge loaders sync`, and by `serve` when empty).
    pub root: Option<PathBuf>,
    /// Largest `timeout` option (seconds) acknowledged; a larger one is left unacknowledged.
    pub max_timeout: u64,
    /// Seconds after which any transfer ends (longer for files that need it at 64 KiB/s).
    pub transfer_deadline_secs: u64,
    /// Transfers served at once (more answer ERROR "busy").
    pub max_transfers: usize,
    /// New transfers per second from one source address (0: no limit); `limits.exempt` and
    /// loopback are exempt.
    pub new_per_source_per_sec: u32,
    /// Transfers one client address may hold at once (0: no cap); `limits.exempt` and loopback
    /// are exempt.
    pub max_transfers_per_addr: usize,
    /// Time slice (microseconds) the thread of a large lockstep transfer asks the kernel for
    /// (Linux 6.12+): short, so that each ACK's wake-up preempts a CPU-bound neighbour at
    /// once. 0: the kernel's default.
    pub lockstep_slice_us: u64,
}

impl Default for TftpSettings {
    fn default() -> Self {
        TftpSettings {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 6969)),
            root: None,
            max_timeout: 10,
            transfer_deadline_secs: 600,
            max_transfers: 4096,
            new_per_source_per_sec: 20,
            max_transfers_per_addr: 16,
            lockstep_slice_us: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    #[default]
    Off,
    Proxy,
    Reservation,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpSettings {
    pub mode: DhcpMode,
    pub interface: String,
    pub lease_time_secs: u32,
    pub boot_files: BootFiles,
    /// Wave 1's single pool: read as one `[[dhcp.subnet]]` (network `start/prefix`), with a
    /// warning that names the new key.
    pub pool: Option<PoolSettings>,
    /// Reservation-mode pools, one per subnet: a request is served from the pool of its
    /// link's subnet (the relay's giaddr, or our address on the interface), never another's.
    pub subnet: Vec<SubnetSettings>,
    /// ICMP echo probe of an address before it is offered to a new client (reservation mode).
    pub ping_check: bool,
    /// How long a probe waits for an echo reply (milliseconds).
    pub ping_timeout_ms: u32,
    /// How long an OFFER holds its address for the client's REQUEST (seconds).
    pub offer_hold_secs: u32,
    /// DHCP servers expected on the segment (a second pxeforge, the site's server beside a
    /// proxy): their replies are counted, not warned about.
    pub peers: Vec<Ipv4Addr>,
    /// Receive buffer of each DHCP socket (bytes, SO_RCVBUF): room for a boot storm's burst
    /// while a batch of leases is being made durable. Read at start.
    pub recv_buffer_bytes: usize,
    /// Most ACKs made durable by one fsync (group commit): the requests waiting in the socket
    /// are committed together, then fsynced once, then answered.
    pub group_commit_max: usize,
}

impl Default for DhcpSettings {
    fn default() -> Self {
        DhcpSettings {
            mode: DhcpMode::Off,
            interface: String::new(),
            lease_time_secs: 3600,
            boot_files: BootFiles::default(),
            pool: None,
            subnet: Vec::new(),
            ping_check: true,
            ping_timeout_ms: 500,
            offer_hold_secs: 30,
            peers: Vec::new(),
            recv_buffer_bytes: 4 << 20,
            group_commit_max: 64,
        }
    }
}

impl DhcpSettings {
    /// Every pool, the wave-1 `[dhcp.pool]` first, as subnets.
    pub fn subnets(&self) -> Vec<SubnetSettings> {
        let legacy = self.pool.iter().map(|p| SubnetSettings {
            network: format!(
                "{}/{}",
                std::net::Ipv4Addr::from(
                    u32::from(p.start)
                        & u32::MAX
                            .checked_shl(32 - u32::from(p.prefix.min(32)))
                            .unwrap_or(0)
                ),
                p.prefix
            ),
            start: p.start,
            end: p.end,
            router: p.router,
            dns: p.dns.clone(),
            domain: p.domain.clone(),
        });
        legacy.chain(self.subnet.iter().cloned()).collect()
    }
}

/// First-stage boot file per firmware class, relative to the TFTP root: the one table of
/// defaults, used by the settings and by the DHCP service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootFiles {
    pub bios: String,
    pub efi_x64: String,
    pub efi_ia32: String,
    pub arm64: String,
    /// UEFI HTTP boot (x86-64, arch 16): served over HTTP at `<base>/tftp/<file>`.
    pub http_boot: String,
    /// UEFI HTTP boot on ARM64 (arch 19); unset: the `arm64` file over HTTP.
    pub http_boot_arm64: Option<String>,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            efi_x64: "snponly.efi".into(),
            efi_ia32: "ipxe-i386.efi".into(),
            arm64: "ipxe-arm64.efi".into(),
            http_boot: "ipxe.efi".into(),
            http_boot_arm64: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub prefix: u8,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
}

/// `[[dhcp.subnet]]`: one subnet's pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSettings {
    /// `10.0.0.0/24`
    pub network: String,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
}

impl SubnetSettings {
    /// (network address, prefix) when `network` is `A.B.C.D/N` with no host bits set.
    pub fn parse_network(&self) -> Option<(Ipv4Addr, u8)> {
        let (addr, prefix) = self.network.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        (u32::from(addr) & !mask == 0).then_some((addr, prefix))
    }

    /// Whether `ip` is inside `network`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.parse_network().is_some_and(|(net, prefix)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net)
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownHostPolicy {
    /// Exit iPXE so the firmware boots the next device (the local disk).
    #[default]
    Local,
    /// Record the machine's facts as an event and retry later.
    Discover,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstallSettings {
    pub unknown_hosts: UnknownHostPolicy,
    /// Seconds a discovered machine waits before asking again.
    pub discover_retry_secs: u32,
    /// Not in the template context as `install.releases`: templates get the host's own
    /// release as `release`, `repo`, `kernel_url`, ...; leaving the table out keeps the
    /// per-request context small.
    #[serde(skip_serializing)]
    pub releases: BTreeMap<String, ReleaseSettings>,
    pub admin_user: String,
    pub ssh_keys: Vec<String>,
    pub timezone: String,
    pub lang: String,
    pub keyboard: String,
    /// Lifetime of a per-build token, from arming to `finished` (seconds).
    pub token_ttl_secs: u64,
    /// What follows a failed install: arm again, or hold the host on its local disk.
    pub on_failure: OnFailure,
    /// Install events kept per MAC (older ones are deleted as new ones arrive).
    pub events_per_host: u32,
    /// Unknown machines remembered at most; the least recently seen go first.
    pub max_discovered: u32,
    /// Events accepted per minute from one source address (more answer 429).
    pub events_per_minute: u32,
    /// Installs under way at once (hosts `installing`, or sent their install script in the last
    /// 15 minutes); armed hosts beyond it wait and ask again. 0: no cap.
    pub max_installing: u32,
    /// A host `installing` longer than this is reported stuck (log line and metric); 0: never.
    pub stuck_after_secs: u64,
}

/// What follows `failed` (`install.on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Arm again with a new token: the next network boot retries the install.
    Rearm,
    /// Boot the local disk until an operator re-arms the host.
    #[default]
    Hold,
}

impl Default for InstallSettings {
    fn default() -> Self {
        InstallSettings {
            unknown_hosts: UnknownHostPolicy::Local,
            discover_retry_secs: 60,
            releases: BTreeMap::new(),
            admin_user: "admin".into(),
            ssh_keys: Vec::new(),
            timezone: "Etc/UTC".into(),
            lang: "en_US.UTF-8".into(),
            keyboard: "us".into(),
            token_ttl_secs: 24 * 3600,
            on_failure: OnFailure::Hold,
            events_per_host: 200,
            max_discovered: 10_000,
            events_per_minute: 600,
            max_installing: 0,
            stuck_after_secs: 4 * 3600,
        }
    }
}

/// `[install.releases.NAME]`: one CentOS Stream install tree, by version and architecture.
/// The wave-1 form (`repo`, `boot_tree`, a number as the name) still loads: the loader fills
/// `version`, `arch` and `upstream` from it with a warning naming the new keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSettings {
    /// CentOS Stream major version, 9 or 10; wave-1: taken from a numeric name.
    #[serde(default)]
    pub version: Option<u32>,
    /// The tree's architecture; wave-1: x86_64.
    #[serde(default)]
    pub arch: Option<crate::Arch>,
    /// The install tree's URL (it holds `.treeinfo` and `images/`): what `pxeforge releases
    /// sync` downloads, and where hosts get the boot media from while it is not synced.
    /// `{base_url}` is replaced by the server's advertised URL.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Where packages come from (`inst.repo=`, the kickstart's `url`); unset: `upstream`.
    #[serde(default)]
    pub repo: Option<String>,
    /// Wave-1: where `images/pxeboot/` was fetched from; read as `upstream`.
    #[serde(default)]
    pub boot_tree: Option<String>,
    /// Extra repositories added with `repo --name=... --baseurl=...`.
    #[serde(default)]
    pub extra_repos: BTreeMap<String, String>,
    /// The sha256 of the tree's `.treeinfo`, which comes unsigned: when set, a sync of any other
    /// `.treeinfo` fails.
    #[serde(default)]
    pub treeinfo_sha256: Option<String>,
    /// Hosts may only boot from synced media: while the release is not synced, their install
    /// scripts fail instead of falling back to `upstream`.
    #[serde(default)]
    pub require_synced: bool,
}

impl ReleaseSettings {
    /// The install tree (after the loader's wave-1 mapping, always set).
    pub fn upstream(&self) -> &str {
        self.upstream
            .as_deref()
            .or(self.boot_tree.as_deref())
            .or(self.repo.as_deref())
            .unwrap_or_default()
    }

    /// The package source: `repo`, else the install tree.
    pub fn repo(&self) -> &str {
        self.repo.as_deref().unwrap_or_else(|| self.upstream())
    }

    /// The tree's architecture (x86_64 when a wave-1 site leaves it out).
    pub fn arch(&self) -> crate::Arch {
        self.arch.unwrap_or(crate::Arch::X86_64)
    }
}
