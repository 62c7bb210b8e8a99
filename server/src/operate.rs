//! What an operator's commands decide, apart from how they arrive (the admin API, or
//! `reinstall --state` with no server running): which hosts a reinstall arms, and what an
//! approval makes of a discovered machine. Pure, but for [`arm`], which writes the store.

use crate::buildstate::{BuildState, StateError};
use crate::events::Discovered;
use crate::lifecycle::{self, State};
use crate::select::{self, Claims};
use pxeforge_site::{Mac, Site};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no host {0:?}")]
    UnknownHost(String),
    #[error("no profile {0:?} (profiles/{0}.toml)")]
    UnknownProfile(String),
    #[error("name the hosts to arm, or a profile, or all")]
    Nothing,
    #[error("{0}")]
    Refused(String),
    #[error("{0} never asked for a script: nothing to approve")]
    NeverSeen(Mac),
    #[error("{0}")]
    Taken(String),
}

/// The hosts a reinstall arms, and those it leaves alone with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReinstallPlan {
    pub arm: Vec<String>,
    pub skipped: Vec<(String, String)>,
}

/// Named hosts must each be installable (a named host that is not is an error: the operator
/// asked for something that cannot be done); a profile or `all` arms every installable host
/// of it and skips the others.
pub fn plan_reinstall(
    site: &Site,
    claims: &Claims,
    names: &[String],
    profile: Option<&str>,
    all: bool,
) -> Result<ReinstallPlan, PlanError> {
    if names.is_empty() && profile.is_none() && !all {
        return Err(PlanError::Nothing);
    }
    if let Some(p) = profile {
        if !site.profiles.contains_key(p) {
            return Err(PlanError::UnknownProfile(p.to_string()));
        }
    }
    let installable = |h: &pxeforge_site::Host| {
        site.profiles
            .get(&h.profile)
            .is_some_and(|p| select::tracked(h, p))
    };
    let mut arm = Vec::new();
    for n in names {
        let Some(h) = select::host_by_name(site, claims, n) else {
            return Err(PlanError::UnknownHost(n.clone()));
        };
        if !installable(h) {
            return Err(PlanError::Refused(format!(
                "host {n:?} is not installed from a kickstart (install = false, or its profile boots diskless or local)"
            )));
        }
        arm.push(h.name.clone());
    }
    let mut skipped = Vec::new();
    if all || profile.is_some() {
        let approved = claims
            .approved
            .values()
            .filter(|h| site.host_by_name(&h.name).is_none());
        for h in site.hosts.iter().chain(approved) {
            if !all && profile != Some(h.profile.as_str()) {
                continue;
            }
            if installable(h) {
                arm.push(h.name.clone());
            } else {
                skipped.push((h.name.clone(), "not installed from a kickstart".to_string()));
            }
        }
    }
    arm.sort();
    arm.dedup();
    skipped.sort();
    Ok(ReinstallPlan { arm, skipped })
}

/// Arms `name` again; its previous state is returned.
pub fn arm(store: &BuildState, name: &str, source: &str) -> Result<State, StateError> {
    let from = store.decide(name, crate::events::now(), |r| {
        let (next, t) = lifecycle::rearm(r, source);
        (r.state, Some((next, vec![t])))
    })?;
    from.ok_or_else(|| StateError::Refused(format!("host {name} has no build-state record")))
}

/// What an approval records: the host's name and profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPlan {
    pub name: String,
    pub profile: String,
}

/// Approval (`install`) or adoption of `mac`: it must have asked for a script, must not be a
/// host already, and gets the given name and profile, or its default name and the profile its
/// facts suggested. An approved machine must be installable by its profile.
pub fn plan_claim(
    site: &Site,
    claims: &Claims,
    mac: Mac,
    seen: Option<&Discovered>,
    name: Option<&str>,
    profile: Option<&str>,
    install: bool,
) -> Result<ClaimPlan, PlanError> {
    if let Some(h) = site.host_by_mac(&mac) {
        return Err(PlanError::Taken(format!(
            "{mac} is already host {} of the inventory",
            h.name
        )));
    }
    if let Some(h) = claims.approved.get(&mac) {
        return Err(PlanError::Taken(format!(
            "{mac} is already approved as {}: its claim cannot change",
            h.name
        )));
    }
    let Some(seen) = seen else {
        return Err(PlanError::NeverSeen(mac));
    };
    let name = name.map_or_else(|| select::default_name(mac), str::to_string);
    if !pxeforge_site::valid_hostname(&name) {
        return Err(PlanError::Refused(format!(
            "host name {name:?} must be a DNS label: letters, digits and '-', at most 63"
        )));
    }
    if site.host_by_name(&name).is_some() || claims.host_by_name(&name).is_some() {
        return Err(PlanError::Taken(format!(
            "the name {name:?} is already a host's"
        )));
    }
    let Some(profile) = profile.map(str::to_string).or_else(|| seen.profile.clone()) else {
        return Err(PlanError::Refused(format!(
            "no profile matched {mac}: name one"
        )));
    };
    let Some(p) = site.profiles.get(&profile) else {
        return Err(PlanError::UnknownProfile(profile));
    };
    if install && !select::has_kickstart(p) {
        return Err(PlanError::Refused(format!(
            "profile {profile:?} does not install (boot = {:?}): adopt the machine instead",
            p.boot
        )));
    }
    Ok(ClaimPlan { name, profile })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        crate::check::load(&dir, &crate::config::Overrides::default())
            .expect("example site")
            .site
    }

    fn seen(profile: Option<&str>) -> Discovered {
        Discovered {
            mac: "02:00:00:00:00:09".into(),
            profile: profile.map(str::to_string),
            facts: "{}".into(),
            seen_at: 1,
        }
    }

    #[test]
    fn reinstall_of_nothing_or_unknown_is_refused() {
        let s = site();
        let c = Claims::default();
        assert_eq!(
            plan_reinstall(&s, &c, &[], None, false),
            Err(PlanError::Nothing)
        );
        assert_eq!(
            plan_reinstall(&s, &c, &["nope".into()], None, false),
            Err(PlanError::UnknownHost("nope".into()))
        );
        assert!(matches!(
            plan_reinstall(&s, &c, &[], Some("nope"), false),
            Err(PlanError::UnknownProfile(_))
        ));
        let all = plan_reinstall(&s, &c, &[], None, true).expect("all");
        assert!(!all.arm.is_empty());
        assert!(
            all.arm.windows(2).all(|w| w[0] < w[1]),
            "sorted, no repeats"
        );
    }

    #[test]
    fn a_claim_needs_a_sighting_a_free_name_and_an_installing_profile() {
        let s = site();
        let c = Claims::default();
        let mac: Mac = "02:00:00:00:00:09".parse().expect("mac");
        assert_eq!(
            plan_claim(&s, &c, mac, None, None, None, true),
            Err(PlanError::NeverSeen(mac))
        );
        assert!(matches!(
            plan_claim(&s, &c, mac, Some(&seen(None)), None, None, true),
            Err(PlanError::Refused(_))
        ));
        let installs = s
            .profiles
            .values()
            .find(|p| select::has_kickstart(p))
            .expect("an installing profile");
        let plan = plan_claim(
            &s,
            &c,
            mac,
            Some(&seen(Some(&installs.name))),
            None,
            None,
            true,
        )
        .expect("approved");
        assert_eq!(plan.name, "mac-020000000009");
        let taken = &s.hosts[0].name;
        assert!(matches!(
            plan_claim(
                &s,
                &c,
                mac,
                Some(&seen(Some(&installs.name))),
                Some(taken),
                None,
                true
            ),
            Err(PlanError::Taken(_))
        ));
        let inventory_mac = s.hosts[0].macs[0];
        assert!(matches!(
            plan_claim(
                &s,
                &c,
                inventory_mac,
                Some(&seen(None)),
                None,
                Some(&installs.name),
                true
            ),
            Err(PlanError::Taken(_))
        ));
        assert!(matches!(
            plan_claim(
                &s,
                &c,
                mac,
                Some(&seen(None)),
                Some("Bad_Name"),
                Some(&installs.name),
                true
            ),
            Err(PlanError::Refused(_))
        ));
    }
}
