//! pxeforge's image builder: recipes (`images/*.toml`) composed per hardware profile into kernel,
//! initramfs, squashfs, tar, ext4 and disk images, checksummed, and published atomically into the
//! image store that the boot service serves. See RECIPES.md for the recipe format.

mod build;
pub mod check;
pub mod compress;
pub mod cpio;
pub mod disk;
mod error;
pub mod ext4;
pub mod hashing;
pub mod inputs;
pub mod layers;
pub mod recipe;
pub mod source;
pub mod squashfs;
pub mod stage;
pub mod store;
pub mod tarout;
pub mod tools;
pub mod tree;

pub use build::{build, BuildOutcome, BuildRequest};
pub use check::{check_recipes, check_store_limits};
pub use error::BuildError;
pub use recipe::{load_recipes, Output, Recipe};
pub use store::{Mismatch, OutputFile, PublishedImage};
pub use tools::{check_tools, MissingTool};

use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found in a site file; `line` is 1-based (0 when no line applies). The boot
/// service's site loader reports its own problems with this same type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
    pub severity: Severity,
}

impl Diagnostic {
    pub fn error(file: &Path, line: usize, message: String) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            message,
            severity: Severity::Error,
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // `file:1` for file-wide problems, so editors and `grep -n`-style tools can jump there.
        write!(
            f,
            "{}:{}: {sev}: {}",
            self.file.display(),
            self.line.max(1),
            self.message
        )
    }
}

/// What a hardware profile contributes to the images built for it (the lead maps
/// `profiles/NAME.toml` onto this).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProfileLayer {
    pub name: String,
    pub arch: String,
    /// bios | uefi | both
    pub firmware: String,
    pub memory_mib: Option<u64>,
    pub console: Option<String>,
    pub kernel_args: Vec<String>,
    pub drivers: Vec<String>,
    /// Site-relative paths of firmware blobs, installed into /lib/firmware/.
    pub firmware_files: Vec<PathBuf>,
    /// Site-relative directory layered onto the root.
    pub layer_dir: Option<PathBuf>,
}

/// Progress reports of a build: a stage name when one starts, bytes within the stage.
pub trait Progress: Sync {
    fn stage(&self, name: &str);
    fn bytes(&self, done: u64, total: Option<u64>);
}

/// Ignores progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str) {}
    fn bytes(&self, _done: u64, _total: Option<u64>) {}
}

/// The kernel command line of an image: the recipe's arguments, the profile's, then its console.
pub fn kernel_args(recipe: &Recipe, profile: &ProfileLayer) -> Vec<String> {
    let mut v = recipe.spec.kernel_args.clone();
    v.extend(profile.kernel_args.iter().cloned());
    if let Some(c) = &profile.console {
        v.push(format!("console={c}"));
    }
    v
}

/// Reads the image-relevant keys of a `profiles/NAME.toml` text, ignoring the others (the site
/// loader validates the whole file strictly). Used by the example and tests; the server maps its
/// own profile model onto [`ProfileLayer`].
pub fn profile_layer_from_toml(name: &str, text: &str) -> Result<ProfileLayer, String> {
    let v: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let list = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ProfileLayer {
        name: name.to_string(),
        arch: s("arch").unwrap_or_else(|| "x86_64".into()),
        firmware: s("firmware").unwrap_or_else(|| "bios".into()),
        memory_mib: v
            .get("memory_mib")
            .and_then(|x| x.as_integer())
            .and_then(|x| u64::try_from(x).ok()),
        console: s("console"),
        kernel_args: list("kernel_args"),
        drivers: list("drivers"),
        firmware_files: list("firmware_files")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        layer_dir: s("layer").map(PathBuf::from),
    })
}
