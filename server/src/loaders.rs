//! The loaders store: every first-stage boot file (iPXE per firmware, shim and GRUB per release)
//! as a real file with its sha256, under `STATE/loaders/<id>/` with a `current` pointer; TFTP and
//! `/tftp/` serve its current item unless `tftp.root` is set.
//!
//! An item is built from `[loaders] sources`, tried in order (the first source that has a name
//! wins): a folder gives every regular file at its top (symlinks resolved at copy time, so
//! Debian's `ipxe.efi -> /boot/ipxe.efi` becomes a real file the confined server may open), and
//! `releases` gives the shim and GRUB of every synced release as `<release>/BOOTX64.EFI`,
//! `<release>/grubx64.efi`, ... (shim loads `grubx64.efi` from its own folder, so the names stay
//! the ones shim expects). The item id is a hash of its `SHA256SUMS`: the same files give the
//! same id, so a sync of unchanged sources publishes nothing new and only points `current`.

use pxeforge_site::settings::LOADERS_FROM_RELEASES;
use pxeforge_site::Site;
use pxeforge_store::{PublishOutcome, StoreError, Sums, SUMS};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The folder of the loaders store under the state directory.
pub const DIR: &str = "loaders";

/// The loaders store of a state directory (no key level: one `current` for the whole store).
pub fn store(state: &Path) -> pxeforge_store::Store {
    pxeforge_store::Store::new(state.join(DIR), 0)
}

/// What TFTP and `/tftp/` serve by default: the store's `current` item.
pub fn current_dir(state: &Path) -> PathBuf {
    state.join(DIR).join(pxeforge_store::CURRENT)
}

/// Where a synced compose keeps its shim and GRUB (taken out of `efiboot.img`).
const RELEASE_EFI_DIR: &str = "EFI/BOOT";

/// The first-stage files taken from a release: shim, GRUB and MokManager, x86-64 and ARM64. Only
/// these: `EFI/BOOT/grub.cfg` is the install ISO's menu, which a network-booted GRUB would read
/// from its own folder and fail on.
const RELEASE_LOADERS: [&str; 6] = [
    "BOOTX64.EFI",
    "grubx64.efi",
    "mmx64.efi",
    "BOOTAA64.EFI",
    "grubaa64.efi",
    "mmaa64.efi",
];

/// Hex digits of the sha256 of `SHA256SUMS` that name an item (as long as the image store's ids).
const ID_LEN: usize = 32;

/// One file an item would hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its name in the item (and on TFTP): `undionly.kpxe`, `stream9-x86_64/grubx64.efi`.
    pub name: String,
    /// Where it is copied from (symlinks are followed when it is opened).
    pub from: PathBuf,
    /// The `loaders.sources` entry it comes from.
    pub source: String,
}

/// What the sources provide now: the files by name, and what was passed over and why.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub files: BTreeMap<String, Planned>,
    /// `(name, why)`; the name is None for a whole source (a missing folder).
    pub skipped: Vec<(Option<String>, String)>,
}

impl Plan {
    /// Why `name` was passed over, when it was.
    pub fn skip_reason(&self, name: &str) -> Option<&str> {
        self.skipped
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, why)| why.as_str())
    }

    fn skip(&mut self, name: Option<&str>, why: String) {
        self.skipped.push((name.map(str::to_string), why));
    }

    /// Adds `name` unless an earlier source had it (first source wins) or it cannot be both a
    /// file and a folder of the item.
    fn offer(&mut self, name: &str, from: PathBuf, source: &str) {
        if self.files.contains_key(name) {
            tracing::debug!(name, source, "loaders: an earlier source has this file");
            return;
        }
        if let Some(other) = self.files.keys().find(|k| {
            k.strip_prefix(name).is_some_and(|r| r.starts_with('/'))
                || name
                    .strip_prefix(k.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        }) {
            let why = format!(
                "{}: skipped: {name} and {other} cannot both be in the store (a file and a folder of one name)",
                from.display()
            );
            self.skip(Some(name), why);
            return;
        }
        if let Err(why) = readable_regular(&from) {
            self.skip(Some(name), format!("{}: skipped: {why}", from.display()));
            return;
        }
        self.files.insert(
            name.to_string(),
            Planned {
                name: name.to_string(),
                from,
                source: source.to_string(),
            },
        );
    }
}

/// Opens `path` following symlinks, as the copy will: a regular file that can be read, or why
/// not. `O_NONBLOCK`, so that a FIFO left in a source folder never blocks the server's start.
fn open_source(path: &Path) -> Result<File, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("unreadable ({e})"))?;
    let m = f.metadata().map_err(|e| format!("unreadable ({e})"))?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    Ok(f)
}

fn readable_regular(path: &Path) -> Result<(), String> {
    open_source(path).map(drop)
}

/// What `[loaders] sources` provide now, in order, without copying anything.
pub fn plan(site: &Site, state: &Path) -> Plan {
    let mut plan = Plan::default();
    for source in &site.settings.loaders.sources {
        if source == LOADERS_FROM_RELEASES {
            scan_releases(site, state, &mut plan);
        } else {
            scan_folder(&site.path(Path::new(source)), source, &mut plan);
        }
    }
    plan
}

/// Every regular file at the top of a folder (symlinks followed); folders are not descended
/// into (Debian's `qemu/` holds NIC option ROMs, not boot files), dot files are left out.
fn scan_folder(dir: &Path, source: &str, plan: &mut Plan) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            plan.skip(None, format!("source {}: {e}", dir.display()));
            return;
        }
    };
    let mut entries: Vec<(std::ffi::OsString, PathBuf)> = Vec::new();
    for e in rd {
        match e {
            Ok(e) => entries.push((e.file_name(), e.path())),
            Err(e) => plan.skip(None, format!("source {}: {e}", dir.display())),
        }
    }
    entries.sort();
    for (name, path) in entries {
        let Some(name) = name.to_str() else {
            plan.skip(
                None,
                format!("{}: skipped: the name is not UTF-8", path.display()),
            );
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            tracing::debug!(path = %path.display(), "loaders: folders in a source are not copied");
            continue;
        }
        if name == SUMS || !pxeforge_store::valid_sums_name(name) {
            plan.skip(
                Some(name),
                format!("{}: skipped: not a name the store can hold", path.display()),
            );
            continue;
        }
        plan.offer(name, path, source);
    }
}

/// Shim and GRUB of the current compose of every release the site defines and that was synced.
fn scan_releases(site: &Site, state: &Path, plan: &mut Plan) {
    for release in site.settings.install.releases.keys() {
        let Some(compose) = pxeforge_releases::current_compose(state, release) else {
            tracing::debug!(
                release,
                "loaders: release not synced: no shim or GRUB from it"
            );
            continue;
        };
        let dir = pxeforge_releases::compose_dir(state, release, &compose).join(RELEASE_EFI_DIR);
        for f in RELEASE_LOADERS {
            let from = dir.join(f);
            // Absent is normal: an x86_64 tree has no ARM64 files, an old one no MokManager.
            if std::fs::symlink_metadata(&from).is_ok() {
                plan.offer(&format!("{release}/{f}"), from, LOADERS_FROM_RELEASES);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadersError {
    #[error("no loaders source has a file (loaders.sources = {sources:?}){}", fmt_skipped(.skipped))]
    NothingToSync {
        sources: Vec<String>,
        skipped: Vec<String>,
    },
    #[error("copying {} into the loaders store: {message}", from.display())]
    Copy { from: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn fmt_skipped(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {}", s.join("; "))
    }
}

/// One file of a published item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub source: String,
}

/// What a sync did.
#[derive(Debug, Clone)]
pub struct Synced {
    pub id: String,
    pub dir: PathBuf,
    /// False when the same files were already published (only `current` was pointed at them).
    pub new: bool,
    pub files: Vec<SyncedFile>,
    /// What the sources had that was passed over, and why.
    pub skipped: Vec<String>,
}

/// `pxeforge loaders sync`: copies what the sources provide into a new item, publishes it
/// atomically (fsynced) and points `current` at it. Nothing from any source is an error, and the
/// store is left as it was.
pub fn sync(site: &Site, state: &Path) -> Result<Synced, LoadersError> {
    let plan = plan(site, state);
    if plan.files.is_empty() {
        return Err(LoadersError::NothingToSync {
            sources: site.settings.loaders.sources.clone(),
            skipped: plan.skipped.into_iter().map(|(_, w)| w).collect(),
        });
    }
    publish(state, &plan)
}

/// Copies the plan's files into a temporary, writes `SHA256SUMS` and publishes the item.
fn publish(state: &Path, plan: &Plan) -> Result<Synced, LoadersError> {
    let store = store(state);
    // A sync killed half-way leaves its temporary: its lock is gone, so it can go now.
    store.clean_stale_tmp()?;
    let staging = store.staging("sync-")?;
    let out = staging.out();
    let mut sums = Sums::new();
    let mut files = Vec::new();
    for p in plan.files.values() {
        let to = out.join(&p.name);
        let copy_err = |message: String| LoadersError::Copy {
            from: p.from.clone(),
            message,
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| copy_err(format!("{}: {e}", parent.display())))?;
        }
        let mut src = open_source(&p.from).map_err(copy_err)?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&to)
            .map_err(|e| copy_err(format!("{}: {e}", to.display())))?;
        std::io::copy(&mut src, &mut dst).map_err(|e| copy_err(e.to_string()))?;
        drop(dst);
        // The sum is of the copy: what the store vouches for is what it holds.
        let (size, sha256) = pxeforge_store::hash_file(&to)
            .map_err(|e| copy_err(format!("{}: {e}", to.display())))?;
        sums.insert(&p.name, &sha256).map_err(|e| {
            copy_err(format!(
                "line {}: {}: not a name SHA256SUMS can list",
                e.line(),
                e.message()
            ))
        })?;
        files.push(SyncedFile {
            name: p.name.clone(),
            size,
            sha256,
            source: p.source.clone(),
        });
    }
    let sums_path = out.join(SUMS);
    pxeforge_store::write_sums(&sums_path, &sums)?;
    let (_, digest) = pxeforge_store::hash_file(&sums_path).map_err(|e| LoadersError::Copy {
        from: sums_path.clone(),
        message: e.to_string(),
    })?;
    let id = digest[..ID_LEN].to_string();
    let published = staging.publish(store.root(), &id, Default::default())?;
    Ok(Synced {
        id,
        dir: published.dir,
        new: published.outcome != PublishOutcome::AlreadyPresent,
        files,
        skipped: plan.skipped.iter().map(|(_, w)| w.clone()).collect(),
    })
}

/// The current item's files, or None when there is no current item.
pub fn current_sums(state: &Path) -> Option<Sums> {
    let root = state.join(DIR);
    let item = pxeforge_store::resolve(&root, pxeforge_store::CURRENT)?;
    pxeforge_store::read_sums(&item.join(SUMS)).ok()
}

/// Whether the store has nothing to serve: no current item, or an empty one.
pub fn is_empty(state: &Path) -> bool {
    current_sums(state).is_none_or(|s| s.is_empty())
}

/// Whether a configuration serves the loaders store (`tftp.root` unset, no `--tftp-root`).
pub fn serves_store(config: &crate::config::Config) -> bool {
    config.tftp_root == current_dir(&config.state)
}

/// `serve`'s start, before TFTP binds: fills an empty store from the sources when it is what
/// TFTP and `/tftp/` serve, then logs every boot-file problem `check` reports. Never fails:
/// with nothing to copy the server still starts (on an empty item, so that the TFTP root exists
/// and a later `pxeforge loaders sync` is served over HTTP at once).
pub fn at_start(cat: &crate::catalog::Catalog) {
    let state = &cat.config.state;
    if serves_store(&cat.config) && is_empty(state) {
        match sync(&cat.site, state) {
            Ok(s) => log_synced("filled the empty loaders store", &s),
            Err(e) => {
                tracing::warn!(
                    "loaders store {} is empty and could not be filled: {e}; TFTP and /tftp/ have nothing to serve until `pxeforge loaders sync` succeeds (`pxeforge check` lists what is missing)",
                    state.join(DIR).display()
                );
                if current_sums(state).is_none() {
                    if let Err(e) = publish(state, &Plan::default()) {
                        tracing::warn!("loaders store: publishing an empty item: {e}");
                    }
                }
            }
        }
    }
    // A file a profile boots through is worth a warning at every start; the classes no
    // profile uses (Debian has no 32-bit or ARM64 iPXE) only at info, `check` lists them.
    for d in crate::check::boot_file_diagnostics(cat) {
        match d.severity {
            pxeforge_site::Severity::Error => tracing::warn!("{d}"),
            pxeforge_site::Severity::Warning => tracing::info!("{d}"),
        }
    }
}

/// One log line per source: what was copied from it.
pub fn log_synced(what: &str, s: &Synced) {
    let mut by_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in &s.files {
        by_source.entry(&f.source).or_default().push(&f.name);
    }
    tracing::info!(
        item = %s.dir.display(),
        files = s.files.len(),
        new = s.new,
        "{what}"
    );
    for (source, names) in by_source {
        tracing::info!(source, "loaders: copied {}", names.join(", "));
    }
    for why in &s.skipped {
        tracing::warn!("loaders: {why}");
    }
}

/// What TFTP and `/tftp/` serve (or will serve), for `check`.
#[derive(Debug)]
pub enum Served {
    /// `tftp.root`, served as it is.
    Root(PathBuf),
    /// The loaders store's current item (through the `current` link, as the server opens it).
    Store(PathBuf),
    /// The store is empty: `serve` fills it from these at start.
    Sources(Plan, Vec<String>),
}

impl Served {
    /// What the site's configuration serves: `tftp.root` if set, else the store's current item,
    /// else (store empty) what the sources would fill it with.
    pub fn of(cat: &crate::catalog::Catalog) -> Served {
        let state = &cat.config.state;
        if !serves_store(&cat.config) {
            Served::Root(cat.config.tftp_root.clone())
        } else if !is_empty(state) {
            Served::Store(current_dir(state))
        } else {
            Served::Sources(
                plan(&cat.site, state),
                cat.site.settings.loaders.sources.clone(),
            )
        }
    }

    /// Where the files are looked up, for messages.
    pub fn describe(&self) -> String {
        match self {
            Served::Root(r) => format!("TFTP serves tftp.root {}", r.display()),
            Served::Store(c) => format!(
                "TFTP serves the loaders store's current item {}",
                c.display()
            ),
            Served::Sources(_, s) => format!(
                "the loaders store is empty: `serve` fills it at start from loaders.sources {s:?}"
            ),
        }
    }

    /// What fixes a missing file, for messages.
    pub fn hint(&self) -> &'static str {
        match self {
            Served::Root(_) => {
                "put the file itself in tftp.root, or leave tftp.root unset to serve the loaders store (which copies what symlinks point at), or change dhcp.boot_files"
            }
            Served::Store(_) | Served::Sources(..) => {
                "add it to a folder of loaders.sources and run `pxeforge loaders sync`, or change dhcp.boot_files"
            }
        }
    }

    /// Ok when `name` is a readable regular file of what is served, opened the way the servers
    /// open it (confined beneath the root: a symlink out of it is refused); else why not.
    pub fn lookup(&self, name: &str) -> Result<(), String> {
        let rel = name.trim_start_matches('/');
        match self {
            Served::Root(root) | Served::Store(root) => {
                match pxeforge_confine::open_beneath(root, Path::new(rel)) {
                    Ok(_) => Ok(()),
                    Err(pxeforge_confine::ConfineError::NotFound) => Err("is missing".into()),
                    Err(pxeforge_confine::ConfineError::Refused(
                        pxeforge_confine::Refusal::OutsideRoot,
                    )) => Err(
                        "is a symlink out of the served folder, which the servers refuse to follow"
                            .into(),
                    ),
                    Err(pxeforge_confine::ConfineError::Refused(r)) => {
                        Err(format!("is refused by the servers ({r})"))
                    }
                    Err(pxeforge_confine::ConfineError::Io(e)) => {
                        Err(format!("is unreadable ({e})"))
                    }
                }
            }
            Served::Sources(plan, _) => {
                if plan.files.contains_key(rel) {
                    Ok(())
                } else if let Some(why) = plan.skip_reason(rel) {
                    Err(format!("is not taken from the sources ({why})"))
                } else {
                    Err("is in none of the sources".into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(dir: &Path, sources: &[&str]) -> Site {
        std::fs::write(
            dir.join("pxeforge.toml"),
            format!(
                "[install.releases.stream9-x86_64]\nversion = 9\narch = \"x86_64\"\nupstream = \"http://127.0.0.1:1/os\"\n\n[loaders]\nsources = {sources:?}\n"
            ),
        )
        .unwrap();
        Site::load(dir).unwrap_or_else(|e| panic!("{:?}", e.0))
    }

    /// Publishes a compose of `stream9-x86_64` holding `files` through the releases store.
    fn synced_release(state: &Path, files: &[(&str, &[u8])]) {
        let store = pxeforge_releases::store(state);
        let staging = store.staging("test-").unwrap();
        let mut sums = Sums::new();
        for (name, data) in files {
            let p = staging.out().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            sums.insert(name, &pxeforge_store::hash_file(&p).unwrap().1)
                .unwrap();
        }
        pxeforge_store::write_sums(&staging.out().join(SUMS), &sums).unwrap();
        let dir = store.key_dir(&["stream9-x86_64"]).unwrap();
        staging.publish(&dir, "c0ffee", Default::default()).unwrap();
    }

    #[test]
    fn releases_give_shim_and_grub_under_their_name_and_folders_come_first() {
        let d = tempfile::tempdir().unwrap();
        let (site_dir, state, src) = (
            d.path().join("site"),
            d.path().join("state"),
            d.path().join("src"),
        );
        for p in [&site_dir, &src] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(src.join("undionly.kpxe"), b"bios").unwrap();
        // A top-level file named like the release cannot sit beside its folder.
        std::fs::write(src.join("stream9-x86_64"), b"clash").unwrap();
        let site = site(&site_dir, &[src.to_str().unwrap(), LOADERS_FROM_RELEASES]);

        // Not synced: nothing from the releases.
        let p = plan(&site, &state);
        assert_eq!(
            p.files.keys().collect::<Vec<_>>(),
            ["stream9-x86_64", "undionly.kpxe"]
        );

        synced_release(
            &state,
            &[
                (".treeinfo", b"[general]\n"),
                ("EFI/BOOT/BOOTX64.EFI", b"shim"),
                ("EFI/BOOT/grubx64.efi", b"grub"),
                ("EFI/BOOT/grub.cfg", b"the ISO's menu"),
            ],
        );
        let p = plan(&site, &state);
        assert!(p
            .skip_reason("stream9-x86_64/BOOTX64.EFI")
            .is_some_and(|w| w.contains("cannot both")));
        std::fs::remove_file(src.join("stream9-x86_64")).unwrap();

        let s = sync(&site, &state).unwrap();
        let names: Vec<&str> = s.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "stream9-x86_64/BOOTX64.EFI",
                "stream9-x86_64/grubx64.efi",
                "undionly.kpxe"
            ]
        );
        let cur = current_dir(&state);
        assert_eq!(
            std::fs::read(cur.join("stream9-x86_64/grubx64.efi")).unwrap(),
            b"grub"
        );
        assert!(pxeforge_store::verify(&s.dir).unwrap().is_empty());
        assert!(!is_empty(&state));
    }

    #[test]
    fn nothing_to_copy_is_an_error_that_leaves_the_store_alone() {
        let d = tempfile::tempdir().unwrap();
        let site = site(d.path(), &["/nonexistent-loaders-source"]);
        let state = d.path().join("state");
        let e = sync(&site, &state).unwrap_err().to_string();
        assert!(
            e.contains("no loaders source has a file") && e.contains("/nonexistent-loaders-source"),
            "{e}"
        );
        assert!(store(&state).list().is_empty());
        assert!(is_empty(&state));
    }
}
