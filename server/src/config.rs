//! The configuration in force: `pxeforge.toml`, then the command line, resolved once into one
//! value (on start and at every reload). Every path is absolute here, and the rule for "which
//! URL do hosts come back to" lives here and nowhere else.

use pxeforge_site::settings::DhcpMode;
use pxeforge_site::Site;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line values that take precedence over `pxeforge.toml`, on start and on every reload.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// HTTP listen address (port 0 picks a free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// TFTP listen address (port 0 picks a free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub tftp: Option<SocketAddr>,
    /// Directory served over TFTP (and at /tftp/ over HTTP)
    #[arg(long, value_name = "DIR")]
    pub tftp_root: Option<PathBuf>,
    /// Directory served at /assets/
    #[arg(long, value_name = "DIR")]
    pub assets: Option<PathBuf>,
    /// DHCP mode
    #[arg(long, value_enum)]
    pub dhcp: Option<DhcpMode>,
    /// Interface DHCP listens on
    #[arg(long, value_name = "NAME")]
    pub dhcp_interface: Option<String>,
    /// State directory (event and lease databases, image store); one serve per directory
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// URL hosts are told to fetch from (default: the Host header of each request)
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Disable TFTP
    #[arg(long)]
    pub no_tftp: bool,
    /// Admin API listen address (port 0 picks a free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,
    /// Started as root: the user to become once every port is bound (server.user)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// HTTP worker threads (default: one per CPU)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub http_workers: Option<u16>,
}

/// Where hosts are told to come back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseUrl {
    /// `--base-url` or `server.base_url`: the same URL for every client (no trailing slash).
    Fixed(String),
    /// Neither is set: the `Host` header of each request, so that a server on several networks
    /// answers each with an address it can reach; `offline` (`http://` + the HTTP listen
    /// address) where there is no request (`check`, `render`), and DHCP uses the address of
    /// the interface a request came in on.
    FromRequest { offline: String },
}

impl BaseUrl {
    /// The URL for a request that named `host` in its `Host` header. A header that is not a
    /// plain host[:port] is ignored, so nothing a client sends is pasted into a script.
    pub fn for_request(&self, host: Option<&str>) -> String {
        match self {
            BaseUrl::Fixed(u) => u.clone(),
            BaseUrl::FromRequest { offline } => match host.filter(|h| plain_host(h)) {
                Some(h) => format!("http://{h}"),
                None => offline.clone(),
            },
        }
    }

    /// The URL where there is no request to derive it from.
    pub fn offline(&self) -> &str {
        match self {
            BaseUrl::Fixed(u) => u,
            BaseUrl::FromRequest { offline } => offline,
        }
    }

    /// The URL DHCP hands out, when one is configured; `None`: DHCP derives it per packet.
    pub fn fixed(&self) -> Option<&str> {
        match self {
            BaseUrl::Fixed(u) => Some(u),
            BaseUrl::FromRequest { .. } => None,
        }
    }
}

fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'[' | b']'))
}

/// The settings in force: the site's, with the overrides applied and paths made absolute.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    pub tftp_root: PathBuf,
    pub assets: PathBuf,
    /// Event and lease databases, the image store.
    pub state: PathBuf,
    pub dhcp: DhcpMode,
    pub dhcp_interface: Option<String>,
    pub base_url: BaseUrl,
    pub http_workers: Option<u16>,
    pub admin: AdminConfig,
}

/// The admin listener, with its paths resolved.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Absolute: a relative `admin.token_file` is under the state directory.
    pub token_file: PathBuf,
    /// Certificate chain and key (PEM), absolute.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub allow_plain_remote: bool,
    pub metrics_on_boot_listener: bool,
}

impl AdminConfig {
    /// `http://ADDR` or `https://ADDR`: where the operator commands reach the API.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.listen)
    }
}

impl Config {
    pub fn resolve(site: &Site, o: &Overrides) -> Config {
        let s = &site.settings;
        let http = o.http.unwrap_or(s.server.http);
        let iface = o
            .dhcp_interface
            .clone()
            .or_else(|| (!s.dhcp.interface.is_empty()).then(|| s.dhcp.interface.clone()));
        let fixed = o
            .base_url
            .clone()
            .or_else(|| (!s.server.base_url.is_empty()).then(|| s.server.base_url.clone()));
        let base_url = match fixed {
            Some(u) => BaseUrl::Fixed(u.trim_end_matches('/').to_string()),
            None => BaseUrl::FromRequest {
                offline: format!("http://{http}"),
            },
        };
        let state = o
            .state
            .clone()
            .unwrap_or_else(|| site.path(&s.server.state_dir));
        let a = &s.admin;
        let admin = AdminConfig {
            listen: o.admin.unwrap_or(a.listen),
            token_file: state.join(&a.token_file),
            tls: a
                .tls_cert
                .as_ref()
                .zip(a.tls_key.as_ref())
                .map(|(c, k)| (site.path(c), site.path(k))),
            allow_plain_remote: a.allow_plain_remote,
            metrics_on_boot_listener: a.metrics_on_boot_listener,
        };
        Config {
            http,
            tftp: if o.no_tftp || !s.tftp.enabled && o.tftp.is_none() {
                None
            } else {
                Some(o.tftp.unwrap_or(s.tftp.listen))
            },
            tftp_root: o.tftp_root.clone().unwrap_or_else(|| match &s.tftp.root {
                Some(r) => site.path(r),
                None => crate::loaders::current_dir(&state),
            }),
            assets: o
                .assets
                .clone()
                .unwrap_or_else(|| site.path(&s.server.assets_dir)),
            state,
            dhcp: o.dhcp.unwrap_or(s.dhcp.mode),
            dhcp_interface: iface,
            base_url,
            http_workers: o.http_workers,
            admin,
        }
    }

    /// `--base-url` for the offline commands (`check`, `render`), which take nothing else.
    pub fn offline(site: &Site, base_url: Option<&str>, state: Option<PathBuf>) -> Config {
        Config::resolve(
            site,
            &Overrides {
                base_url: base_url.map(str::to_string),
                state,
                ..Overrides::default()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_policy() {
        let from = BaseUrl::FromRequest {
            offline: "http://127.0.0.1:8080".into(),
        };
        assert_eq!(
            from.for_request(Some("10.0.0.1:8080")),
            "http://10.0.0.1:8080"
        );
        assert_eq!(
            from.for_request(Some("x\r\nkernel http://evil")),
            "http://127.0.0.1:8080"
        );
        assert_eq!(from.for_request(None), "http://127.0.0.1:8080");
        assert_eq!(from.fixed(), None);
        let fixed = BaseUrl::Fixed("http://pxe.example".into());
        assert_eq!(fixed.for_request(Some("10.0.0.1")), "http://pxe.example");
        assert_eq!(fixed.offline(), "http://pxe.example");
        assert_eq!(fixed.fixed(), Some("http://pxe.example"));
    }
}
