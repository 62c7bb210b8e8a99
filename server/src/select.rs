//! Selection: what a booting machine told us (its facts), which host or profile that makes it,
//! and what it gets: the script choice *and* the kickstart choice. Pure functions of the site
//! and the request; the handlers and `pxeforge render` call exactly these.

use pxeforge_site::{BootMethod, Host, Mac, Profile, Site};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Machines outside the inventory that an operator decided on: approved (a host, by its MAC)
/// or rejected (never installed). Read from the build-state store, replaced at each decision.
#[derive(Debug, Default)]
pub struct Claims {
    pub approved: HashMap<Mac, Host>,
    pub rejected: HashSet<Mac>,
}

impl Claims {
    pub fn host_by_name(&self, name: &str) -> Option<&Host> {
        self.approved.values().find(|h| h.name == name)
    }
}

/// What a booting machine told us about itself (via `/ipxe` query parameters).
/// Only validated, printable values survive into this struct.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    pub mac: Option<Mac>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    /// iPXE's `${buildarch}`: i386, x86_64, arm64.
    pub arch: Option<String>,
    /// iPXE's `${platform}`: pcbios or efi.
    pub platform: Option<String>,
}

/// Keeps a fact only if it is short and made of characters that are inert in an iPXE script,
/// a kickstart and a URL.
pub fn clean_fact(v: &str) -> Option<String> {
    let v = v.trim();
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, ' ' | '.' | '_' | '-' | ',' | '(' | ')' | '/' | '+')
        });
    ok.then(|| v.to_string())
}

/// The facts iPXE reports, from the raw query string (form encoding, decoded by
/// `form_urlencoded`). Only the known keys are kept, the last of a repeated key wins, and
/// anything that fails validation is dropped, never echoed; a malformed MAC is an error.
pub fn facts_from_query(raw: &str) -> Result<Facts, String> {
    const KEYS: [&str; 7] = [
        "mac",
        "uuid",
        "serial",
        "manufacturer",
        "product",
        "arch",
        "platform",
    ];
    let mut vals: [Option<String>; 7] = Default::default();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if let Some(i) = KEYS.iter().position(|key| *key == k) {
            vals[i] = Some(v.into_owned());
        }
    }
    let [mac, uuid, serial, manufacturer, product, arch, platform] = vals;
    let mac = match mac.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(m) => Some(m.parse::<Mac>().map_err(|e| e.to_string())?),
        None => None,
    };
    let get = |v: Option<String>| v.and_then(|v| clean_fact(&v));
    Ok(Facts {
        mac,
        uuid: get(uuid).map(|u| u.to_lowercase()),
        serial: get(serial),
        manufacturer: get(manufacturer),
        product: get(product),
        arch: get(arch),
        platform: get(platform).filter(|p| matches!(p.as_str(), "pcbios" | "efi")),
    })
}

/// Which script a request gets, decided before anything is rendered.
#[derive(Debug, Clone)]
pub enum ScriptChoice<'a> {
    Host {
        host: &'a Host,
        profile: &'a Profile,
        /// What the host's build state says; `select` leaves it `Untracked` and the handler,
        /// which holds the state store, decides.
        build: BuildScript,
    },
    /// Unknown machine whose SMBIOS facts matched this profile's rules: discovered, with the
    /// profile as a suggestion. It is not installed until approved (or the profile sets
    /// `auto_install`): it gets what an unknown machine gets.
    Matched {
        profile: &'a Profile,
        mac: Mac,
    },
    /// A machine an operator rejected: its local disk, always.
    Rejected {
        mac: Mac,
    },
    Unknown,
}

/// The build state's part in a host's script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildScript {
    /// Not decided by build state: a host that is never installed from a kickstart (diskless,
    /// local), or `check` and `render`, which print `TOKEN` where the token goes.
    Untracked,
    /// Armed: the install script, carrying this build's token.
    /// Armed: the install script with its token, booting its pinned media
    /// (`<release>/<compose-id>`, or `None`: current or upstream).
    Install {
        token: String,
        media: Option<String>,
    },
    /// Installed, failed and held, paused, or the store cannot be read: the local-boot script.
    Local,
    /// Armed, but `install.max_installing` installs are under way: wait and ask again.
    Wait,
}

/// Whether a host's installs go through build state: it is to be installed, from a kickstart.
pub fn tracked(host: &Host, profile: &Profile) -> bool {
    host.install && has_kickstart(profile)
}

/// A request's facts → the inventory host (by MAC, then SMBIOS UUID, then serial) or the
/// approved machine (by MAC) → its profile; or, for an unknown machine, whether an operator
/// rejected it, or the first profile whose match rule claims it.
pub fn select<'a>(site: &'a Site, claims: &'a Claims, facts: &Facts) -> ScriptChoice<'a> {
    let by_mac = facts.mac.and_then(|m| site.by_mac.get(&m));
    let by_uuid = || {
        facts
            .uuid
            .as_ref()
            .and_then(|u| site.by_uuid.get(&u.to_lowercase()))
    };
    let by_serial = || facts.serial.as_ref().and_then(|s| site.by_serial.get(s));
    if let Some(&i) = by_mac.or_else(by_uuid).or_else(by_serial) {
        let host = &site.hosts[i];
        if let Some(profile) = site.profiles.get(&host.profile) {
            return ScriptChoice::Host {
                host,
                profile,
                build: BuildScript::Untracked,
            };
        }
    }
    if let Some(mac) = facts.mac {
        if let Some(host) = claims.approved.get(&mac) {
            if let Some(profile) = site.profiles.get(&host.profile) {
                return ScriptChoice::Host {
                    host,
                    profile,
                    build: BuildScript::Untracked,
                };
            }
        }
        if claims.rejected.contains(&mac) {
            return ScriptChoice::Rejected { mac };
        }
        if let Some(profile) = match_profile(site, facts) {
            return ScriptChoice::Matched { profile, mac };
        }
    }
    ScriptChoice::Unknown
}

/// An inventory host by name, or else an approved machine's host.
pub fn host_by_name<'a>(site: &'a Site, claims: &'a Claims, name: &str) -> Option<&'a Host> {
    site.host_by_name(name)
        .or_else(|| claims.host_by_name(name))
}

/// Profiles are tried in name order so that the outcome never depends on file-system order.
pub fn match_profile<'a>(site: &'a Site, facts: &Facts) -> Option<&'a Profile> {
    site.profiles.values().find(|p| {
        p.match_rules
            .iter()
            .any(|r| r.matches(facts.manufacturer.as_deref(), facts.product.as_deref()))
    })
}

/// The name an approved machine gets when the operator gives none.
pub fn default_name(mac: Mac) -> String {
    format!("mac-{}", mac.hyphenated().replace('-', ""))
}

/// The host an approved machine is: its MAC, the profile it was approved for, installed.
pub fn approved_host(name: &str, profile: &str, mac: Mac, origin: String) -> Host {
    Host {
        name: name.to_string(),
        macs: vec![mac],
        profile: profile.to_string(),
        uuid: None,
        serial: None,
        install: true,
        network: Default::default(),
        vars: Default::default(),
        generation: 0,
        origin,
    }
}

/// Whether a profile's hosts get a kickstart at all.
pub fn has_kickstart(profile: &Profile) -> bool {
    matches!(profile.boot, BootMethod::Install | BootMethod::Image)
}

/// Which kickstart a request for MAC gets.
#[derive(Debug, Clone)]
pub enum KickstartChoice<'a> {
    /// An inventory host and its profile.
    Host {
        host: &'a Host,
        profile: &'a Profile,
    },
    /// A known host that is not installed from a kickstart.
    NotInstalled { host: &'a Host },
    /// Neither an inventory host nor an approved machine.
    Unknown,
}

/// The inventory host of `mac`, or else the approved machine of `mac`. A machine that a match
/// rule only suggested a profile for has no kickstart: approval comes first.
pub fn select_kickstart<'a>(site: &'a Site, claims: &'a Claims, mac: Mac) -> KickstartChoice<'a> {
    let Some(host) = site.host_by_mac(&mac).or_else(|| claims.approved.get(&mac)) else {
        return KickstartChoice::Unknown;
    };
    match site.profiles.get(&host.profile) {
        Some(profile) if host.install && has_kickstart(profile) => {
            KickstartChoice::Host { host, profile }
        }
        _ => KickstartChoice::NotInstalled { host },
    }
}

/// Anaconda with `inst.ks.sendmac` sends `X-RHN-Provisioning-MAC-0: eth0 52:54:00:12:34:56`,
/// one header per interface, in index order.
pub fn macs_from_sendmac<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> Vec<Mac> {
    let mut found: Vec<(u32, Mac)> = headers
        .filter_map(|(name, v)| {
            let n = name
                .to_ascii_lowercase()
                .strip_prefix("x-rhn-provisioning-mac-")?
                .parse::<u32>()
                .ok()?;
            let v = std::str::from_utf8(v).ok()?;
            let mac = v.split_whitespace().last()?.parse::<Mac>().ok()?;
            Some((n, mac))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, m)| m).collect()
}

/// The first sendmac MAC that names a known host, or else the first one sent.
pub fn sendmac_choice(site: &Site, macs: &[Mac]) -> Option<Mac> {
    macs.iter()
        .find(|m| site.host_by_mac(m).is_some())
        .or(macs.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_cleaned() {
        assert_eq!(clean_fact(" Dell Inc. "), Some("Dell Inc.".into()));
        assert_eq!(clean_fact("PowerEdge R650"), Some("PowerEdge R650".into()));
        assert_eq!(clean_fact("x\nkernel http://evil"), None);
        assert_eq!(clean_fact("a;b"), None);
        assert_eq!(clean_fact("${x}"), None);
        assert_eq!(clean_fact(&"a".repeat(200)), None);
        assert_eq!(clean_fact(""), None);
    }

    #[test]
    fn sendmac_headers() {
        let h = [
            ("X-RHN-Provisioning-MAC-1", "eth1 52:54:00:00:00:02"),
            ("X-RHN-Provisioning-MAC-0", "eth0 52:54:00:00:00:01"),
            ("X-RHN-Provisioning-MAC-2", "eth2 garbage"),
            ("Host", "x"),
        ];
        let macs = macs_from_sendmac(h.iter().map(|(k, v)| (*k, v.as_bytes())));
        assert_eq!(macs.len(), 2);
        assert_eq!(macs[0].to_string(), "52:54:00:00:00:01");
    }

    #[test]
    fn query_facts() {
        let f = facts_from_query(
            "mac=52-54-00-AA-BB-CC&manufacturer=QEMU&product=x%0Akernel+evil&platform=efi&x=1",
        )
        .unwrap();
        assert_eq!(f.mac.unwrap().to_string(), "52:54:00:aa:bb:cc");
        assert_eq!(f.manufacturer.as_deref(), Some("QEMU"));
        assert_eq!(f.product, None);
        assert_eq!(f.platform.as_deref(), Some("efi"));
        let f = facts_from_query("manufacturer=Dell+Inc.&product=PowerEdge%20R650&mac=").unwrap();
        assert_eq!(f.manufacturer.as_deref(), Some("Dell Inc."));
        assert_eq!(f.product.as_deref(), Some("PowerEdge R650"));
        assert_eq!(f.mac, None);
        // The last of a repeated key wins; a key may be encoded too.
        let f = facts_from_query("serial=a&%73erial=b").unwrap();
        assert_eq!(f.serial.as_deref(), Some("b"));
        assert!(facts_from_query("mac=zz").is_err());
        assert!(facts_from_query("platform=bios&&=&mac").is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_query_parses_or_refuses_without_panicking(q in "\\PC{0,200}") {
            let _ = facts_from_query(&q);
        }

        #[test]
        fn encoded_facts_come_back(
            manufacturer in "[A-Za-z0-9 .,()/+_-]{1,40}",
            serial in "[A-Za-z0-9]{1,20}",
        ) {
            let enc = |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
            let q = format!("serial={}&manufacturer={}", enc(&serial), enc(&manufacturer));
            let f = facts_from_query(&q).unwrap();
            proptest::prop_assert_eq!(f.serial.as_deref(), Some(serial.as_str()));
            proptest::prop_assert_eq!(f.manufacturer, clean_fact(&manufacturer));
        }
    }
}
