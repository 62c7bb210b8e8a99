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
use std::path::PathBuf;

/// Problems are reported with the site model's one diagnostic type.
pub use pxeforge_site::{Diagnostic, Severity};

/// What a hardware profile contributes to the images built for it, taken from the site model's
/// [`pxeforge_site::Profile`].
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

impl From<&pxeforge_site::Profile> for ProfileLayer {
    fn from(p: &pxeforge_site::Profile) -> ProfileLayer {
        let firmware = match p.firmware {
            pxeforge_site::Firmware::Bios => "bios",
            pxeforge_site::Firmware::Uefi => "uefi",
            pxeforge_site::Firmware::Both => "both",
        };
        let arch = match p.arch {
            pxeforge_site::Arch::X86_64 => "x86_64",
            pxeforge_site::Arch::Aarch64 => "aarch64",
        };
        ProfileLayer {
            name: p.name.clone(),
            arch: arch.into(),
            firmware: firmware.into(),
            memory_mib: p.memory_mib,
            console: p.console.clone(),
            kernel_args: p.kernel_args.clone(),
            drivers: p.drivers.clone(),
            firmware_files: p.firmware_files.clone(),
            layer_dir: p.layer.clone(),
        }
    }
}

/// What every profile of a site contributes to images, in profile name order.
pub fn profile_layers(site: &pxeforge_site::Site) -> Vec<ProfileLayer> {
    site.profiles.values().map(ProfileLayer::from).collect()
}
