//! Which machine the VM plays: a host of the site (by name, MAC or profile) or an unknown MAC.

use super::Firmware;
use anyhow::{bail, Result};
use pxeforge_site::profile::{BootMethod, Firmware as ProfileFirmware};
use pxeforge_site::{Mac, Site};

#[derive(Debug, Clone)]
pub struct Target {
    pub host: Option<String>,
    pub mac: Mac,
    pub profile: Option<String>,
    pub firmware: Firmware,
    /// A host of the site that installs from a kickstart (`install = true`, a profile that boots
    /// `install` or `image`): its build state decides its script, so it is armed before the boot.
    pub armable: bool,
}

pub fn resolve(
    site: &Site,
    host: Option<&str>,
    mac: Option<&str>,
    profile: Option<&str>,
    firmware: Option<Firmware>,
) -> Result<Target> {
    let (host, mac) = match (host, mac) {
        (Some(name), _) => {
            let Some(h) = site.host_by_name(name) else {
                bail!("no host named {name:?} in {}/hosts", site.dir.display());
            };
            let Some(m) = h.macs.first() else {
                bail!("host {name:?} has no MAC address");
            };
            (Some(h), *m)
        }
        (None, Some(m)) => {
            let mac: Mac = m.parse()?;
            (site.host_by_mac(&mac), mac)
        }
        (None, None) => {
            let Some(p) = profile else {
                bail!("say which machine to boot: --profile NAME, --host NAME or --mac MAC");
            };
            if !site.profiles.contains_key(p) {
                bail!("no profile named {p:?} in {}/profiles", site.dir.display());
            }
            let found = site
                .hosts
                .iter()
                .find(|h| h.profile == p && h.install && !h.macs.is_empty());
            let Some(h) = found else {
                bail!("no host to install uses profile {p:?}: add one to hosts/ or pass --mac");
            };
            (Some(h), h.macs[0])
        }
    };
    let profile = host
        .map(|h| h.profile.clone())
        .or_else(|| profile.map(str::to_string));
    if let (Some(h), Some(p)) = (host, profile.as_deref()) {
        if h.profile != p {
            bail!("host {:?} has profile {:?}, not {p:?}", h.name, h.profile);
        }
    }
    let profile_firmware = profile
        .as_deref()
        .and_then(|p| site.profiles.get(p))
        .map(|p| p.firmware);
    let firmware = firmware.unwrap_or(match profile_firmware {
        Some(ProfileFirmware::Uefi) => Firmware::Uefi,
        _ => Firmware::Bios,
    });
    let armable = host.is_some_and(|h| {
        h.install
            && site
                .profiles
                .get(&h.profile)
                .is_some_and(|p| matches!(p.boot, BootMethod::Install | BootMethod::Image))
    });
    Ok(Target {
        armable,
        host: host.map(|h| h.name.clone()),
        mac,
        profile,
        firmware,
    })
}
