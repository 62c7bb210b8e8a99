//! Host build state: `armed` → `installing` → `installed`, or `failed`. Pure decisions of
//! (record, request, time) → (what to serve, what the record becomes); `buildstate` persists
//! them and the handlers apply them.

use serde::Serialize;

/// Where a host is in its install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// To be installed at its next network boot; holds a token.
    Armed,
    /// Its installer fetched the kickstart; the token is bound to that address.
    Installing,
    /// Installed: boots its local disk.
    Installed,
    /// Failed (event, token misuse, expiry, or a network boot in the middle of an install).
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Armed => "armed",
            State::Installing => "installing",
            State::Installed => "installed",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "armed" => State::Armed,
            "installing" => State::Installing,
            "installed" => State::Installed,
            "failed" => State::Failed,
            _ => return None,
        })
    }
}

pub use pxeforge_site::settings::OnFailure;

/// One host's build-state record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub host: String,
    pub state: State,
    /// The per-build token (hex of 128 random bits); `None` once the build ended.
    pub token: Option<String>,
    /// When the token was made (seconds since the epoch).
    pub token_at: i64,
    /// The address the kickstart was first fetched from.
    pub bound: Option<String>,
    /// The MAC and iPXE platform the armed host booted with, for its kickstart's templates.
    pub boot_mac: Option<String>,
    pub platform: Option<String>,
    /// The host's and its profile's `generation` when it was last armed or adopted.
    pub host_generation: u64,
    pub profile_generation: u64,
    /// When the install script was last served (0: never in this build): an armed host that
    /// was sent it is starting its install, and counts against `install.max_installing`.
    pub served_at: i64,
    /// The token and status of the event that ended the last build (`finished`, `failed`): an
    /// installer that did not see the answer (the server was killed between the change and its
    /// answer) sends it again, and is answered the same, with nothing changed.
    pub spent_token: Option<String>,
    pub spent_status: Option<String>,
    /// The boot media of this build, `<release>/<compose-id>`: pinned when the host is armed
    /// (the releases store's current compose then), so that a host mid-install never changes
    /// compose. `None` while its release has never been synced.
    pub media: Option<String>,
}

impl Record {
    /// A first record: `host` in `state`, with no build under way.
    pub fn new(host: &str, state: State) -> Record {
        Record {
            host: host.to_string(),
            state,
            token: None,
            token_at: 0,
            bound: None,
            boot_mac: None,
            platform: None,
            host_generation: 0,
            profile_generation: 0,
            served_at: 0,
            spent_token: None,
            spent_status: None,
            media: None,
        }
    }
}

/// How long an armed host that was sent its install script counts as an install under way
/// before its installer fetches the kickstart (firmware, iPXE, kernel and initrd downloads).
pub const START_WINDOW_SECS: i64 = 15 * 60;

/// Whether `r` is an install under way at `now`, as `install.max_installing` counts them.
pub fn in_flight(r: &Record, now: i64) -> bool {
    match r.state {
        State::Installing => true,
        State::Armed => r.served_at > 0 && now.saturating_sub(r.served_at) < START_WINDOW_SECS,
        _ => false,
    }
}

/// A change of state, with why and from where: every transition is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub host: String,
    pub from: Option<State>,
    pub to: State,
    pub cause: String,
    pub source: String,
}

/// What the inventory says of a host at a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryHost {
    pub name: String,
    /// `install = true` and a profile that installs: a host pxeforge may arm.
    pub installable: bool,
    pub host_generation: u64,
    pub profile_generation: u64,
}

/// What a load does to the store: records for hosts it has never seen, and re-arms for raised
/// generations. `empty`: the store has never held a record (first start, or the first start
/// after an upgrade): every host is adopted as installed, so nothing is wiped because a database
/// was new.
pub fn reconcile(
    inventory: &[InventoryHost],
    known: &dyn Fn(&str) -> Option<Record>,
    empty: bool,
) -> Vec<(Record, Transition)> {
    let mut out = Vec::new();
    for h in inventory {
        let existing = known(&h.name);
        let (to, cause) = match &existing {
            None if empty => (State::Installed, "adopted: first start with an empty store"),
            None if h.installable => (
                State::Armed,
                "new host in the inventory with install = true",
            ),
            None => (
                State::Installed,
                "new host in the inventory that is not installed",
            ),
            Some(r)
                if h.installable
                    && (h.host_generation > r.host_generation
                        || h.profile_generation > r.profile_generation) =>
            {
                (State::Armed, "generation raised")
            }
            Some(_) => continue,
        };
        let record = Record {
            // Lowering a generation never arms: the recorded value only goes up.
            host_generation: existing.as_ref().map_or(h.host_generation, |r| {
                r.host_generation.max(h.host_generation)
            }),
            profile_generation: existing.as_ref().map_or(h.profile_generation, |r| {
                r.profile_generation.max(h.profile_generation)
            }),
            ..Record::new(&h.name, to)
        };
        out.push((
            record,
            Transition {
                host: h.name.clone(),
                from: existing.map(|r| r.state),
                to,
                cause: cause.into(),
                source: "site load".into(),
            },
        ));
    }
    out
}

/// What `/ipxe` serves an inventory host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// The install script, with this token in its kickstart URL, booting these media
    /// (`<release>/<compose-id>`; `None`: the release's upstream tree).
    Install {
        token: String,
        media: Option<String>,
    },
    /// The local-boot script.
    Local,
    /// Armed, but `install.max_installing` installs are under way: wait and ask again.
    Wait,
}

/// Limits and policy of the lifecycle (`install.*`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub token_ttl_secs: i64,
    pub on_failure: OnFailure,
}

fn expired(r: &Record, now: i64, p: &Policy) -> bool {
    r.token.is_some() && now.saturating_sub(r.token_at) > p.token_ttl_secs
}

/// `/ipxe` for a host with record `r`: the script, and the new record when it changes. Serving a
/// script changes nothing, except for what the script request reveals: an installing host that
/// boots from the network again has not finished, and a token past its lifetime is dead.
/// `fresh_token` makes a token when the policy re-arms. `room`: whether another install may
/// start now (`install.max_installing`); without it an armed host waits, and nothing about it
/// changes but what the request revealed.
pub fn on_script(
    r: &Record,
    now: i64,
    p: &Policy,
    source: &str,
    fresh_token: &mut dyn FnMut() -> String,
    room: bool,
    current_media: &mut dyn FnMut() -> Option<String>,
) -> (Script, Option<(Record, Vec<Transition>)>) {
    let mut changes = Vec::new();
    let mut rec = r.clone();
    if matches!(rec.state, State::Armed | State::Installing) && expired(&rec, now, p) {
        changes.push(fail(&mut rec, "token expired", source));
    } else if rec.state == State::Installing {
        changes.push(fail(
            &mut rec,
            "booted from the network again before finishing its install",
            source,
        ));
    }
    if rec.state == State::Failed && p.on_failure == OnFailure::Rearm && !changes.is_empty() {
        changes.push(arm(
            &mut rec,
            now,
            "install.on_failure = rearm",
            source,
            fresh_token,
        ));
    }
    // An armed host that already started (it was sent its script within the start window)
    // keeps its slot: a retry of the same boot must not be told to wait.
    let room = room || in_flight(&rec, now);
    if rec.state == State::Armed && !room {
        let changed = (rec != *r).then_some((rec, changes));
        return (Script::Wait, changed);
    }
    if rec.state == State::Armed && rec.token.is_none() {
        // Armed by a load or a command, which make no token: the first script request does.
        rec.token = Some(fresh_token());
        rec.token_at = now;
    }
    pin(&mut rec, current_media);
    let script = match (&rec.state, &rec.token) {
        (State::Armed, Some(t)) => {
            // Once per start window, not per request: a retry of the same boot writes nothing.
            if !in_flight(&rec, now) {
                rec.served_at = now;
            }
            Script::Install {
                token: t.clone(),
                media: rec.media.clone(),
            }
        }
        _ => Script::Local,
    };
    let changed = (rec != *r).then_some((rec, changes));
    (script, changed)
}

/// Pins the boot media of an armed build that has none yet to what `current` says is current
/// (nothing when its release was never synced: it is asked again at the next write). The one
/// rule for pinning, used by every path that arms (`/ipxe`, and the store's writes for loads and
/// commands).
pub fn pin(rec: &mut Record, current: &mut dyn FnMut() -> Option<String>) {
    if rec.state == State::Armed && rec.media.is_none() {
        rec.media = current();
    }
}

/// Moves `rec` to `to` and says so: the one place a transition is made.
fn move_to(rec: &mut Record, to: State, cause: &str, source: &str) -> Transition {
    let from = rec.state;
    rec.state = to;
    if to == State::Armed {
        // A new build: its media are pinned afresh when it is written (BuildState::pin).
        rec.media = None;
    }
    Transition {
        host: rec.host.clone(),
        from: Some(from),
        to,
        cause: cause.into(),
        source: source.into(),
    }
}

fn fail(rec: &mut Record, cause: &str, source: &str) -> Transition {
    rec.token = None;
    move_to(rec, State::Failed, cause, source)
}

fn arm(
    rec: &mut Record,
    now: i64,
    cause: &str,
    source: &str,
    fresh_token: &mut dyn FnMut() -> String,
) -> Transition {
    rec.token = Some(fresh_token());
    rec.token_at = now;
    rec.bound = None;
    move_to(rec, State::Armed, cause, source)
}

/// The answer to a kickstart fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kickstart {
    Serve,
    /// No valid token (wrong, expired, or the build is over): 403.
    Forbidden(&'static str),
}

/// Constant-time comparison, so that timing does not reveal how much of a token was right.
pub fn token_matches(expected: Option<&str>, given: &str) -> bool {
    let Some(expected) = expected else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/ks` with `token` from `addr`: the first valid fetch binds the token to the address and the
/// host starts installing; a fetch from another address kills the token and fails the host.
pub fn on_kickstart(
    r: &Record,
    token: &str,
    addr: &str,
    now: i64,
    p: &Policy,
) -> (Kickstart, Option<(Record, Transition)>) {
    if !token_matches(r.token.as_deref(), token) {
        return (Kickstart::Forbidden("no valid token"), None);
    }
    let mut rec = r.clone();
    if expired(r, now, p) {
        let t = fail(&mut rec, "token expired", addr);
        return (Kickstart::Forbidden("token expired"), Some((rec, t)));
    }
    match (&r.state, &r.bound) {
        (State::Armed, _) => {
            rec.bound = Some(addr.to_string());
            let t = move_to(&mut rec, State::Installing, "kickstart fetched", addr);
            (Kickstart::Serve, Some((rec, t)))
        }
        (State::Installing, Some(b)) if b == addr => (Kickstart::Serve, None),
        (State::Installing, _) => {
            let t = fail(
                &mut rec,
                "kickstart fetched from a second address: token killed",
                addr,
            );
            (Kickstart::Forbidden("token killed"), Some((rec, t)))
        }
        _ => (Kickstart::Forbidden("no build in progress"), None),
    }
}

/// An install event with `token`. `None`: refused (403), nothing changes.
pub fn on_event(
    r: &Record,
    token: &str,
    status: &str,
    source: &str,
    now: i64,
    p: &Policy,
    fresh_token: &mut dyn FnMut() -> String,
) -> Option<(Record, Vec<Transition>)> {
    if token_matches(r.spent_token.as_deref(), token) && r.spent_status.as_deref() == Some(status) {
        return Some((r.clone(), Vec::new()));
    }
    if !token_matches(r.token.as_deref(), token) || expired(r, now, p) {
        return None;
    }
    if !matches!(r.state, State::Armed | State::Installing) {
        return None;
    }
    let mut rec = r.clone();
    let mut changes = Vec::new();
    if matches!(status, "finished" | "failed") {
        rec.spent_token = r.token.clone();
        rec.spent_status = Some(status.to_string());
    }
    match status {
        "finished" => {
            rec.token = None;
            changes.push(move_to(
                &mut rec,
                State::Installed,
                "finished event",
                source,
            ));
        }
        "failed" => {
            changes.push(fail(&mut rec, "failed event", source));
            if p.on_failure == OnFailure::Rearm {
                changes.push(arm(
                    &mut rec,
                    now,
                    "install.on_failure = rearm",
                    source,
                    fresh_token,
                ));
            }
        }
        _ => {}
    }
    Some((rec, changes))
}

/// `pxeforge reinstall`: arm the host again (a new token is made at its next script request).
pub fn rearm(r: &Record, source: &str) -> (Record, Transition) {
    let mut rec = r.clone();
    rec.token = None;
    rec.bound = None;
    rec.served_at = 0;
    rec.spent_token = None;
    rec.spent_status = None;
    let t = move_to(&mut rec, State::Armed, "pxeforge reinstall", source);
    (rec, t)
}

/// `pxeforge hosts cancel`: an armed or installing host goes back to its local disk, its token
/// dead. `None`: there is no install to cancel.
pub fn cancel(r: &Record, source: &str) -> Option<(Record, Transition)> {
    if !matches!(r.state, State::Armed | State::Installing) {
        return None;
    }
    let mut rec = r.clone();
    rec.token = None;
    rec.bound = None;
    rec.served_at = 0;
    let t = move_to(
        &mut rec,
        State::Installed,
        "install cancelled by an operator",
        source,
    );
    Some((rec, t))
}

/// The first record of a machine an operator approved (`armed`: it installs) or adopted
/// (`installed`: it keeps its disk).
pub fn approved(host: &str, install: bool, source: &str) -> (Record, Transition) {
    let to = if install {
        State::Armed
    } else {
        State::Installed
    };
    let cause = if install {
        "approved: installs at its next network boot"
    } else {
        "adopted: keeps its disk"
    };
    let record = Record::new(host, to);
    let t = Transition {
        host: host.to_string(),
        from: None,
        to,
        cause: cause.into(),
        source: source.into(),
    };
    (record, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: State, token: Option<&str>) -> Record {
        Record {
            token: token.map(str::to_string),
            token_at: 1000,
            ..Record::new("h", state)
        }
    }

    const P: Policy = Policy {
        token_ttl_secs: 86400,
        on_failure: OnFailure::Hold,
    };

    fn tok() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("t{n}")
        }
    }

    #[test]
    fn media_are_pinned_once_per_build() {
        let r = rec(State::Armed, None);
        let mut current = || Some("stream9/aaa".to_string());
        let (s, ch) = on_script(&r, 1000, &P, "x", &mut tok(), true, &mut current);
        assert_eq!(
            s,
            Script::Install {
                token: "t1".into(),
                media: Some("stream9/aaa".into())
            }
        );
        let r = ch.expect("pinned").0;
        // A new compose published mid-install does not move the build.
        let (s, ch) = on_script(&r, 1001, &P, "x", &mut tok(), true, &mut || {
            Some("stream9/bbb".into())
        });
        assert!(matches!(s, Script::Install { media: Some(m), .. } if m == "stream9/aaa"));
        assert!(ch.is_none());
        // A new build takes the compose current then.
        let (r, _) = rearm(&r, "op");
        assert_eq!(r.media, None);
        let (s, _) = on_script(&r, 1002, &P, "x", &mut tok(), true, &mut || {
            Some("stream9/bbb".into())
        });
        assert!(matches!(s, Script::Install { media: Some(m), .. } if m == "stream9/bbb"));
        // Never synced: nothing pinned, asked again next time.
        let (s, _) = on_script(
            &rec(State::Armed, None),
            1000,
            &P,
            "x",
            &mut tok(),
            true,
            &mut || None,
        );
        assert!(matches!(s, Script::Install { media: None, .. }));
    }

    #[test]
    fn a_whole_build() {
        let r = rec(State::Armed, None);
        let (s, ch) = on_script(&r, 1000, &P, "10.0.0.5", &mut tok(), true, &mut || None);
        assert_eq!(
            s,
            Script::Install {
                token: "t1".into(),
                media: None
            }
        );
        let r = ch.expect("token made").0;
        // Serving the script again changes nothing.
        let (s2, ch2) = on_script(&r, 1001, &P, "10.0.0.5", &mut tok(), true, &mut || None);
        assert_eq!(s2, s);
        assert!(ch2.is_none());
        assert_eq!(
            on_kickstart(&r, "nope", "10.0.0.5", 1002, &P).0,
            Kickstart::Forbidden("no valid token")
        );
        let (k, ch) = on_kickstart(&r, "t1", "10.0.0.5", 1002, &P);
        assert_eq!(k, Kickstart::Serve);
        let r = ch.expect("installing").0;
        assert_eq!(r.state, State::Installing);
        assert_eq!(
            on_kickstart(&r, "t1", "10.0.0.5", 1003, &P).0,
            Kickstart::Serve
        );
        assert!(on_event(&r, "wrong", "finished", "x", 1004, &P, &mut tok()).is_none());
        let (r, t) = on_event(&r, "t1", "finished", "10.0.0.9", 1004, &P, &mut tok()).expect("ok");
        assert_eq!(r.state, State::Installed);
        assert_eq!(t[0].to, State::Installed);
        assert_eq!(
            on_script(&r, 1005, &P, "x", &mut tok(), true, &mut || None).0,
            Script::Local
        );
        // The build is over: its token opens nothing but a repeat of the event that ended it.
        assert!(on_event(&r, "t1", "progress", "x", 1006, &P, &mut tok()).is_none());
        let (same, ts) = on_event(&r, "t1", "finished", "x", 1006, &P, &mut tok()).expect("repeat");
        assert!(same == r && ts.is_empty());
    }

    #[test]
    fn without_room_an_armed_host_waits_and_a_started_one_keeps_its_slot() {
        let r = rec(State::Armed, None);
        let (s, ch) = on_script(&r, 1000, &P, "x", &mut tok(), false, &mut || None);
        assert_eq!(s, Script::Wait);
        assert!(ch.is_none(), "waiting makes no token and changes nothing");
        let (s, ch) = on_script(&r, 1000, &P, "x", &mut tok(), true, &mut || None);
        assert_eq!(
            s,
            Script::Install {
                token: "t1".into(),
                media: None
            }
        );
        let r = ch.expect("token and start").0;
        assert_eq!(r.served_at, 1000);
        assert!(in_flight(&r, 1000 + START_WINDOW_SECS - 1));
        assert!(!in_flight(&r, 1000 + START_WINDOW_SECS));
        // The same boot asking again is not told to wait, though the cap is now full.
        let (s, _) = on_script(&r, 1010, &P, "x", &mut tok(), false, &mut || None);
        assert_eq!(
            s,
            Script::Install {
                token: "t1".into(),
                media: None
            }
        );
        // Past the window, it is a new start and needs room again.
        let (s, _) = on_script(
            &r,
            1000 + START_WINDOW_SECS,
            &P,
            "x",
            &mut tok(),
            false,
            &mut || None,
        );
        assert_eq!(s, Script::Wait);
    }

    #[test]
    fn the_last_event_sent_again_is_answered_the_same_and_changes_nothing() {
        let r = rec(State::Installing, Some("t"));
        let (done, _) = on_event(&r, "t", "finished", "x", 1001, &P, &mut tok()).expect("ok");
        assert_eq!(
            (done.state, done.token.as_deref()),
            (State::Installed, None)
        );
        // The answer was lost: the installer sends it again.
        let (again, ts) =
            on_event(&done, "t", "finished", "x", 1002, &P, &mut tok()).expect("accepted again");
        assert_eq!(again, done);
        assert!(ts.is_empty());
        // Only that event, with that token.
        assert!(on_event(&done, "t", "failed", "x", 1002, &P, &mut tok()).is_none());
        assert!(on_event(&done, "t", "progress", "x", 1002, &P, &mut tok()).is_none());
        assert!(on_event(&done, "u", "finished", "x", 1002, &P, &mut tok()).is_none());
        // A new build forgets it.
        let (armed, _) = rearm(&done, "op");
        assert!(on_event(&armed, "t", "finished", "x", 1003, &P, &mut tok()).is_none());
    }

    #[test]
    fn cancel_only_stops_an_install() {
        let r = rec(State::Installing, Some("t"));
        let (c, t) = cancel(&r, "op").expect("cancelled");
        assert_eq!((c.state, c.token.as_deref()), (State::Installed, None));
        assert_eq!(t.from, Some(State::Installing));
        assert!(cancel(&c, "op").is_none());
        assert!(cancel(&rec(State::Failed, None), "op").is_none());
    }

    #[test]
    fn a_second_address_kills_the_token() {
        let r = rec(State::Armed, Some("t"));
        let r = on_kickstart(&r, "t", "10.0.0.5", 1001, &P)
            .1
            .expect("bound")
            .0;
        let (k, ch) = on_kickstart(&r, "t", "10.0.0.66", 1002, &P);
        assert_eq!(k, Kickstart::Forbidden("token killed"));
        let r = ch.expect("failed").0;
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.token, None);
        assert_eq!(
            on_kickstart(&r, "t", "10.0.0.5", 1003, &P).0,
            Kickstart::Forbidden("no valid token")
        );
    }

    #[test]
    fn a_network_boot_while_installing_fails_then_policy_decides() {
        let r = rec(State::Installing, Some("t"));
        let (s, ch) = on_script(&r, 1001, &P, "x", &mut tok(), true, &mut || None);
        assert_eq!(s, Script::Local);
        assert_eq!(ch.expect("failed").0.state, State::Failed);
        let rearm = Policy {
            on_failure: OnFailure::Rearm,
            ..P
        };
        let (s, ch) = on_script(&r, 1001, &rearm, "x", &mut tok(), true, &mut || None);
        assert_eq!(
            s,
            Script::Install {
                token: "t1".into(),
                media: None
            }
        );
        let (rec2, ts) = ch.expect("rearmed");
        assert_eq!(rec2.state, State::Armed);
        assert_eq!(ts.len(), 2);
    }

    #[test]
    fn tokens_expire() {
        let r = rec(State::Armed, Some("t"));
        let (s, ch) = on_script(&r, 1000 + 86401, &P, "x", &mut tok(), true, &mut || None);
        assert_eq!(s, Script::Local);
        assert_eq!(ch.expect("failed").0.state, State::Failed);
        assert_eq!(
            on_kickstart(&r, "t", "a", 1000 + 86401, &P).0,
            Kickstart::Forbidden("token expired")
        );
    }

    #[test]
    fn adoption_new_hosts_and_generations() {
        let inv = |g: u64, pg: u64| InventoryHost {
            name: "h".into(),
            installable: true,
            host_generation: g,
            profile_generation: pg,
        };
        let none = |_: &str| None;
        let adopted = reconcile(&[inv(0, 0)], &none, true);
        assert_eq!(adopted[0].0.state, State::Installed);
        let new = reconcile(&[inv(0, 0)], &none, false);
        assert_eq!(new[0].0.state, State::Armed);
        let mut installed = rec(State::Installed, None);
        installed.host_generation = 2;
        let known = |_: &str| Some(installed.clone());
        assert!(reconcile(&[inv(2, 0)], &known, false).is_empty());
        assert!(
            reconcile(&[inv(1, 0)], &known, false).is_empty(),
            "lowering never arms"
        );
        let raised = reconcile(&[inv(3, 0)], &known, false);
        assert_eq!(raised[0].0.state, State::Armed);
        assert_eq!(raised[0].0.host_generation, 3);
        assert_eq!(
            reconcile(&[inv(2, 1)], &known, false)[0].0.state,
            State::Armed
        );
    }

    #[test]
    fn constant_time_compare_is_exact() {
        assert!(token_matches(Some("abc"), "abc"));
        assert!(!token_matches(Some("abc"), "abd"));
        assert!(!token_matches(Some("abc"), "ab"));
        assert!(!token_matches(None, ""));
    }
}
