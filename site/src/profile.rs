//! Hardware profiles: a class of machines and how they are booted.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The name written in profiles, `.treeinfo` and Debian's and CentOS's trees.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
    Both,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootMethod {
    /// CentOS Stream network install from a kickstart.
    #[default]
    Install,
    /// Kickstart that installs a built image with `liveimg`.
    Image,
    /// Kernel + initramfs (+ root image) of a built image, nothing written to disk.
    Diskless,
    /// Never install: boot the local disk.
    Local,
}

/// SMBIOS facts (as iPXE reports them) that identify an unknown machine of a known model.
/// Every key given must match; values are shell-style globs (globset), compared
/// case-insensitively.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    /// The two globs, compiled once at load (`compile`), not per request.
    #[serde(skip)]
    compiled: [Option<globset::GlobMatcher>; 2],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    #[serde(default)]
    pub description: String,
    pub arch: Arch,
    pub firmware: Firmware,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub console: Option<String>,
    #[serde(default)]
    pub kernel_args: Vec<String>,
    pub disk: Spanned<String>,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub drivers: Vec<String>,
    #[serde(default)]
    pub firmware_files: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    pub boot: BootMethod,
    #[serde(default)]
    pub release: Option<Spanned<ReleaseRef>>,
    #[serde(default)]
    pub kickstart: Option<Spanned<String>>,
    #[serde(default)]
    pub image: Option<Spanned<String>>,
    #[serde(default)]
    pub layer: Option<Spanned<PathBuf>>,
    #[serde(default, rename = "match")]
    pub match_rules: Vec<Spanned<MatchRule>>,
    /// Raise it to re-arm every host of the profile.
    #[serde(default)]
    pub generation: u64,
    /// An unknown machine that a match rule of this profile claims is installed without an
    /// operator's approval (zero-touch sites). Off: it is recorded as discovered and boots its
    /// local disk until `pxeforge hosts approve`.
    #[serde(default)]
    pub auto_install: bool,
}

/// `release = "stream9-x86_64"`, or the wave-1 `release = 9`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ReleaseRef {
    Name(String),
    Version(u32),
}

/// A validated profile, as templates and the selector see it.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub arch: Arch,
    pub firmware: Firmware,
    pub memory_mib: Option<u64>,
    pub console: Option<String>,
    pub kernel_args: Vec<String>,
    pub disk: String,
    pub interface: Option<String>,
    pub drivers: Vec<String>,
    pub firmware_files: Vec<PathBuf>,
    pub boot: BootMethod,
    /// The name of an `[install.releases.NAME]` (a wave-1 number is resolved at load).
    pub release: Option<String>,
    /// `release` was written as a number (wave-1): resolved by version and arch at load.
    #[serde(skip)]
    pub release_by_version: Option<u32>,
    pub kickstart: String,
    pub image: Option<String>,
    pub layer: Option<PathBuf>,
    #[serde(rename = "match")]
    pub match_rules: Vec<MatchRule>,
    /// Raise it to re-arm every host of the profile.
    pub generation: u64,
    /// Machines its match rules claim install without approval.
    pub auto_install: bool,
    /// `profiles/NAME.toml`, for messages.
    #[serde(skip)]
    pub file: PathBuf,
}

impl MatchRule {
    pub fn new(manufacturer: Option<&str>, product: Option<&str>) -> Result<MatchRule, String> {
        let mut r = MatchRule {
            manufacturer: manufacturer.map(str::to_string),
            product: product.map(str::to_string),
            compiled: Default::default(),
        };
        r.compile()?;
        Ok(r)
    }

    /// Compiles the globs; an invalid one is an error that the loader pins to the file.
    pub fn compile(&mut self) -> Result<(), String> {
        let glob = |p: &Option<String>| -> Result<Option<globset::GlobMatcher>, String> {
            p.as_ref()
                .map(|p| {
                    globset::GlobBuilder::new(p.trim())
                        .case_insensitive(true)
                        .build()
                        .map(|g| g.compile_matcher())
                        .map_err(|e| format!("match pattern {p:?}: {e}"))
                })
                .transpose()
        };
        self.compiled = [glob(&self.manufacturer)?, glob(&self.product)?];
        Ok(())
    }

    /// Whether the facts satisfy every key the rule gives. A rule that was never compiled
    /// matches nothing, so a forgotten `compile` can only under-match.
    pub fn matches(&self, manufacturer: Option<&str>, product: Option<&str>) -> bool {
        fn one(
            pattern: &Option<String>,
            m: &Option<globset::GlobMatcher>,
            value: Option<&str>,
        ) -> bool {
            match (pattern, m) {
                (None, _) => true,
                (Some(_), Some(m)) => value.is_some_and(|v| m.is_match(v.trim())),
                (Some(_), None) => false,
            }
        }
        (self.manufacturer.is_some() || self.product.is_some())
            && one(&self.manufacturer, &self.compiled[0], manufacturer)
            && one(&self.product, &self.compiled[1], product)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob_match(pattern: &str, text: &str) -> bool {
        MatchRule::new(None, Some(pattern))
            .expect("valid glob")
            .matches(None, Some(text))
    }

    #[test]
    fn globs() {
        assert!(glob_match("poweredge r650*", "poweredge r650xs"));
        assert!(glob_match("*r650", "poweredge r650"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(!glob_match("poweredge r650*", "poweredge r750"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn rules_need_every_given_key() {
        let r = MatchRule::new(Some("Dell Inc."), Some("PowerEdge R650*")).expect("valid");
        assert!(r.matches(Some("Dell Inc."), Some("PowerEdge R650xs")));
        assert!(r.matches(Some("DELL INC. "), Some("poweredge r650")));
        assert!(!r.matches(Some("Dell Inc."), None));
        assert!(!r.matches(Some("HPE"), Some("PowerEdge R650")));
        assert!(!MatchRule::default().matches(Some("x"), Some("y")));
    }
}
