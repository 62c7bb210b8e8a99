//! A request's facts → the host (by MAC, then SMBIOS UUID, then serial) → its profile,
//! or, for an unknown machine, the first profile whose match rule claims it.

use crate::render::{Facts, ScriptChoice};
use crate::site::Site;

pub fn select<'a>(site: &'a Site, facts: &Facts) -> ScriptChoice<'a> {
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
            return ScriptChoice::Host { host, profile };
        }
    }
    if let Some(mac) = facts.mac {
        if let Some(profile) = match_profile(site, facts) {
            return ScriptChoice::Matched { profile, mac };
        }
    }
    ScriptChoice::Unknown
}

/// Profiles are tried in name order so that the outcome never depends on file-system order.
pub fn match_profile<'a>(site: &'a Site, facts: &Facts) -> Option<&'a crate::site::Profile> {
    site.profiles.values().find(|p| {
        p.match_rules
            .iter()
            .any(|r| r.matches(facts.manufacturer.as_deref(), facts.product.as_deref()))
    })
}
