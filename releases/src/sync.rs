//! `releases sync`: one release's install tree → a verified, published compose.

use crate::fetch::{FetchError, FetchOptions, Fetcher, Progress};
use crate::treeinfo::{TreeInfo, TreeInfoError};
use crate::{Pins, PinsError};
use nix::fcntl::{Flock, FlockArg};
use pxeforge_store::{PublishOptions, PublishOutcome, StoreError, Sums};
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The tree's metadata file, and the name it keeps in the published compose.
pub const TREEINFO: &str = ".treeinfo";

/// The boot media a sync downloads, at their paths in the tree; `true`: may be missing from the
/// tree (`efiboot.img`: then no shim or GRUB either).
pub const IMAGES: [(&str, bool); 4] = [
    ("images/pxeboot/vmlinuz", false),
    ("images/pxeboot/initrd.img", false),
    ("images/install.img", false),
    ("images/efiboot.img", true),
];

const EFIBOOT: &str = "images/efiboot.img";

/// A `.treeinfo` is a few kilobytes; anything much larger is not one.
const MAX_TREEINFO: u64 = 1024 * 1024;

/// Where partial downloads wait, per release: `STATE/releases/.partial/<release>/<sha256>`.
/// Outside the store's `.tmp`, so that stale-temporary cleanup never takes a download a later
/// sync can resume; named by the sha256 the file must have, so only the same file resumes it.
pub const PARTIAL: &str = ".partial";

/// The shim, GRUB and MokManager an `efiboot.img` carries in `EFI/BOOT/`, per architecture.
pub fn efi_files(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" => &["BOOTX64.EFI", "grubx64.efi", "mmx64.efi"],
        "aarch64" => &["BOOTAA64.EFI", "grubaa64.efi", "mmaa64.efi"],
        _ => &[],
    }
}

/// One release to sync.
pub struct SyncRequest<'a> {
    pub state: &'a Path,
    pub name: &'a str,
    /// The install tree's URL (holds `.treeinfo` and `images/`).
    pub upstream: &'a str,
    /// The architecture the release is for; the tree must be the same.
    pub arch: &'a str,
    /// When set, `.treeinfo` must have this sha256.
    pub treeinfo_sha256: Option<&'a str>,
    /// Then keep only the newest N composes (and the current one, and every pinned one).
    pub keep: Option<usize>,
    pub fetch: &'a FetchOptions,
    pub progress: &'a dyn Progress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A new compose was downloaded and published.
    Published,
    /// The compose was already published and verified: nothing but `.treeinfo` was fetched.
    Unchanged,
    /// The compose was published but damaged; it was downloaded again and swapped in.
    Repaired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedFile {
    /// Its path in the compose (`images/install.img`, `EFI/BOOT/BOOTX64.EFI`).
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Bytes transferred for it by this sync (0: resumed complete, or not downloaded).
    pub downloaded: u64,
}

#[derive(Debug, Clone)]
pub struct SyncReport {
    pub compose: String,
    pub dir: PathBuf,
    pub outcome: SyncOutcome,
    pub files: Vec<SyncedFile>,
    pub warnings: Vec<String>,
    /// Composes removed by `keep`.
    pub removed: Vec<PathBuf>,
}

/// Every error names the release, and the URL or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("release {release}: {url}: {source}; nothing published")]
    Fetch {
        release: String,
        url: String,
        source: FetchError,
    },
    #[error("release {release}: {url}: {file} does not match .treeinfo: sha256 {actual}, expected {expected}; nothing published")]
    Checksum {
        release: String,
        url: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("release {release}: {url}: sha256 {actual}, but treeinfo_sha256 pins {expected}; nothing published")]
    TreeinfoPin {
        release: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("release {release}: {url}: {source}")]
    TreeInfo {
        release: String,
        url: String,
        source: TreeInfoError,
    },
    #[error("release {release}: {url}: the tree is {tree}, but the release is {release_arch} (arch in [install.releases.{release}]); nothing published")]
    Arch {
        release: String,
        url: String,
        tree: String,
        release_arch: String,
    },
    #[error("release {release}: {url}: .treeinfo lists no checksum of {file} in [checksums]: it cannot be verified; nothing published")]
    NotListed {
        release: String,
        url: String,
        file: String,
    },
    #[error("release {release}: {source}")]
    Store { release: String, source: StoreError },
    #[error("release {release}: {path}: {source}")]
    Io {
        release: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("release {release}: {message}")]
    Other { release: String, message: String },
    #[error("release {release}: {source}")]
    Pins { release: String, source: PinsError },
}

impl SyncError {
    fn store(release: &str, source: StoreError) -> SyncError {
        SyncError::Store {
            release: release.to_string(),
            source,
        }
    }
}

/// The URL of `rel` in the tree at `upstream`.
pub fn tree_url(upstream: &str, rel: &str) -> String {
    format!("{}/{rel}", upstream.trim_end_matches('/'))
}

/// The partial downloads of one release, locked for one sync at a time.
pub struct PartialDir {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl PartialDir {
    /// Locks `STATE/releases/.partial/<release>/` (creating it); None when another process
    /// holds it (a sync of the same release under way).
    pub fn try_lock(state: &Path, release: &str) -> std::io::Result<Option<PartialDir>> {
        let dir = state.join(crate::DIR).join(PARTIAL).join(release);
        std::fs::create_dir_all(&dir)?;
        // The lock file is never removed: a sync and a gc must always lock the same inode.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".lock"))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(PartialDir { dir, _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(std::io::Error::from(e)),
        }
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Removes every partial download (what a finished sync no longer needs; a new compose's
    /// files have other checksums). Returns the bytes freed.
    pub fn clear(&self) -> std::io::Result<u64> {
        let mut freed = 0;
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_name() == ".lock" {
                continue;
            }
            freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(e.path()) {
                Err(err) if err.kind() != ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(freed)
    }
}

/// Syncs one release: `.treeinfo` fetched (and checked against `treeinfo_sha256` and the
/// release's arch); when that compose is published and verifies, `current` is pointed at it and
/// nothing else is downloaded; else each image is downloaded (resuming a partial download),
/// verified against `[checksums]` as it streams, shim and GRUB taken out of `efiboot.img`, and
/// the compose published in one rename with `current` moved to it.
pub fn sync(req: &SyncRequest) -> Result<SyncReport, SyncError> {
    let release = req.name.to_string();
    if !pxeforge_store::valid_name(req.name) {
        return Err(SyncError::Other {
            release,
            message: "not a valid release name (letters, digits, '-', '_', '.')".into(),
        });
    }
    let store = crate::store(req.state);
    let key_dir = store.key_dir(&[req.name]).ok_or_else(|| SyncError::Other {
        release: release.clone(),
        message: "not a valid release name".into(),
    })?;
    let fetcher = Fetcher::new(req.fetch).map_err(|source| SyncError::Fetch {
        release: release.clone(),
        url: req.upstream.to_string(),
        source,
    })?;
    // Before anything is downloaded: a gc that cannot tell which composes are pinned must not run.
    let pins = match req.keep {
        Some(_) => Some(
            crate::read_pins(req.state).map_err(|source| SyncError::Pins {
                release: release.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let partial = PartialDir::try_lock(req.state, req.name)
        .map_err(|source| SyncError::Io {
            release: release.clone(),
            path: req.state.join(crate::DIR).join(PARTIAL).join(req.name),
            source,
        })?
        .ok_or_else(|| SyncError::Other {
            release: release.clone(),
            message: "another `pxeforge releases sync` of this release is under way".into(),
        })?;

    let ti_url = tree_url(req.upstream, TREEINFO);
    let ti_bytes = fetcher
        .small(&ti_url, MAX_TREEINFO, req.progress)
        .map_err(|source| SyncError::Fetch {
            release: release.clone(),
            url: ti_url.clone(),
            source,
        })?;
    let compose = crate::sha256_hex(&ti_bytes);
    if let Some(pin) = req.treeinfo_sha256 {
        if !pin.eq_ignore_ascii_case(&compose) {
            return Err(SyncError::TreeinfoPin {
                release,
                url: ti_url,
                expected: pin.to_ascii_lowercase(),
                actual: compose,
            });
        }
    }
    let ti = TreeInfo::parse(&ti_bytes).map_err(|source| SyncError::TreeInfo {
        release: release.clone(),
        url: ti_url.clone(),
        source,
    })?;
    if ti.arch != req.arch {
        return Err(SyncError::Arch {
            release,
            url: ti_url,
            tree: ti.arch,
            release_arch: req.arch.to_string(),
        });
    }

    let mut warnings = Vec::new();
    let mut warn = |m: String| {
        tracing::warn!(release = %req.name, "{m}");
        warnings.push(m);
    };
    // Same .treeinfo, same compose id: when it is published and intact, there is nothing to do.
    let mut repair = false;
    if let Some(dir) = pxeforge_store::resolve(&key_dir, &compose) {
        let bad = pxeforge_store::verify(&dir).map_err(|e| SyncError::store(req.name, e))?;
        if bad.is_empty() {
            if pxeforge_store::current(&key_dir).as_deref() != Some(compose.as_str()) {
                store
                    .set_current(&key_dir, &compose)
                    .map_err(|e| SyncError::store(req.name, e))?;
            }
            let _ = partial.clear();
            let removed = collect(req, &store, &key_dir, pins.as_ref())?;
            return Ok(SyncReport {
                files: published_files(&dir),
                compose,
                dir,
                outcome: SyncOutcome::Unchanged,
                warnings,
                removed,
            });
        }
        for m in &bad {
            warn(format!(
                "published compose {compose} is damaged, downloading it again: {m}"
            ));
        }
        repair = true;
    }

    // Every checksum is looked up before the first byte is downloaded.
    let mut wanted = Vec::new();
    for (rel, optional) in IMAGES {
        let err = |source| SyncError::TreeInfo {
            release: release.clone(),
            url: ti_url.clone(),
            source,
        };
        match ti.sha256(rel).map_err(err)? {
            Some(sum) => wanted.push((rel, sum.to_string())),
            None if optional => warn(format!(
                "{ti_url}: .treeinfo lists no {rel}: the compose has no efiboot.img, so no shim or GRUB"
            )),
            None => {
                return Err(SyncError::NotListed {
                    release,
                    url: ti_url,
                    file: rel.to_string(),
                })
            }
        }
    }
    let mut files = Vec::new();
    for (rel, sum) in &wanted {
        let url = tree_url(req.upstream, rel);
        let path = partial.path_of(sum);
        let (size, downloaded) =
            fetcher
                .file(&url, &path, sum, rel, req.progress)
                .map_err(|source| match source {
                    FetchError::Checksum { expected, actual } => SyncError::Checksum {
                        release: release.clone(),
                        url: url.clone(),
                        file: rel.to_string(),
                        expected,
                        actual,
                    },
                    source => SyncError::Fetch {
                        release: release.clone(),
                        url: url.clone(),
                        source,
                    },
                })?;
        files.push(SyncedFile {
            name: rel.to_string(),
            size,
            sha256: sum.clone(),
            downloaded,
        });
    }

    // Assemble the compose in a locked temporary of the store, on the same filesystem as the
    // partial files (hard links, no copy) and as the published composes (one rename).
    let staging = store
        .staging("sync-")
        .map_err(|e| SyncError::store(req.name, e))?;
    let out = staging.out().to_path_buf();
    let io = |path: &Path| {
        let release = release.clone();
        let path = path.to_path_buf();
        move |source| SyncError::Io {
            release,
            path,
            source,
        }
    };
    let ti_path = out.join(TREEINFO);
    std::fs::write(&ti_path, &ti_bytes).map_err(io(&ti_path))?;
    let mut sums = Sums::new();
    let mut add_sum = |name: &str, sha: &str| {
        sums.insert(name, sha).map_err(|e| SyncError::Other {
            release: release.clone(),
            message: format!("{name}: {e}"),
        })
    };
    add_sum(TREEINFO, &compose)?;
    for f in &files {
        let dest = out.join(&f.name);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let src = partial.path_of(&f.sha256);
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(io(&dest))?;
        }
        add_sum(&f.name, &f.sha256)?;
    }
    if files.iter().any(|f| f.name == EFIBOOT) {
        for name in extract_efi(&out, req.arch, &mut warn).map_err(|m| SyncError::Other {
            release: release.clone(),
            message: m,
        })? {
            let p = out.join(&name);
            let (size, sha) = pxeforge_store::hash_file(&p).map_err(io(&p))?;
            add_sum(&name, &sha)?;
            files.push(SyncedFile {
                name,
                size,
                sha256: sha,
                downloaded: 0,
            });
        }
    }
    let sums_path = out.join(pxeforge_store::SUMS);
    pxeforge_store::write_sums(&sums_path, &sums).map_err(|e| SyncError::store(req.name, e))?;
    let published = staging
        .publish(
            &key_dir,
            &compose,
            PublishOptions {
                replace: repair,
                set_current: true,
            },
        )
        .map_err(|e| SyncError::store(req.name, e))?;
    if let Err(e) = partial.clear() {
        warn(format!("could not remove the partial downloads: {e}"));
    }
    let removed = collect(req, &store, &key_dir, pins.as_ref())?;
    Ok(SyncReport {
        compose,
        dir: published.dir,
        outcome: match published.outcome {
            PublishOutcome::Replaced => SyncOutcome::Repaired,
            _ => SyncOutcome::Published,
        },
        files,
        warnings,
        removed,
    })
}

fn collect(
    req: &SyncRequest,
    store: &pxeforge_store::Store,
    key_dir: &Path,
    pins: Option<&Pins>,
) -> Result<Vec<PathBuf>, SyncError> {
    match (req.keep, pins) {
        (Some(keep), Some(pins)) => crate::gc_release(store, key_dir, req.name, keep, pins)
            .map_err(|e| SyncError::store(req.name, e)),
        _ => Ok(Vec::new()),
    }
}

/// The files of a published compose, from its SHA256SUMS (for the report of an unchanged one).
fn published_files(dir: &Path) -> Vec<SyncedFile> {
    pxeforge_store::ItemSums::load(dir)
        .map(|s| {
            s.files
                .iter()
                .map(|(name, f)| SyncedFile {
                    name: name.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                    downloaded: 0,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Takes the shim, GRUB and MokManager out of the verified `out/images/efiboot.img` into
/// `out/EFI/BOOT/` with mtools; a file the image lacks is a warning. Returns the compose paths
/// of what was taken.
fn extract_efi(
    out: &Path,
    arch: &str,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<String>, String> {
    let img = out.join(EFIBOOT);
    let dir = out.join("EFI/BOOT");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut taken = Vec::new();
    for name in efi_files(arch) {
        let dest = dir.join(name);
        let r = std::process::Command::new("mcopy")
            // The image is a bare FAT filesystem, not a floppy: skip mtools' geometry check.
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-n")
            .arg("-i")
            .arg(&img)
            .arg(format!("::/EFI/BOOT/{name}"))
            .arg(&dest)
            .output();
        match r {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(
                    "mcopy not found: install mtools to take shim and GRUB out of efiboot.img"
                        .into(),
                )
            }
            Err(e) => return Err(format!("running mcopy: {e}")),
            Ok(o) if o.status.success() && dest.is_file() => taken.push(format!("EFI/BOOT/{name}")),
            Ok(o) => {
                let _ = std::fs::remove_file(&dest);
                warn(format!(
                    "{EFIBOOT} has no EFI/BOOT/{name}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
    }
    if taken.is_empty() {
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(out.join("EFI"));
    }
    Ok(taken)
}
