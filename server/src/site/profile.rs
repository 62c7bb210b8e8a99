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
/// Every key given must match; values are shell-style globs, compared case-insensitively.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
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
    pub release: Option<Spanned<u32>>,
    #[serde(default)]
    pub kickstart: Option<Spanned<String>>,
    #[serde(default)]
    pub image: Option<Spanned<String>>,
    #[serde(default)]
    pub layer: Option<Spanned<PathBuf>>,
    #[serde(default, rename = "match")]
    pub match_rules: Vec<Spanned<MatchRule>>,
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
    pub release: Option<u32>,
    pub kickstart: String,
    pub image: Option<String>,
    pub layer: Option<PathBuf>,
    #[serde(rename = "match")]
    pub match_rules: Vec<MatchRule>,
    /// `profiles/NAME.toml`, for messages.
    #[serde(skip)]
    pub file: PathBuf,
}

impl MatchRule {
    pub fn matches(&self, manufacturer: Option<&str>, product: Option<&str>) -> bool {
        fn one(pattern: &Option<String>, value: Option<&str>) -> bool {
            match pattern {
                None => true,
                Some(p) => match value {
                    Some(v) => glob_match(&p.to_lowercase(), v.trim().to_lowercase().as_str()),
                    None => false,
                },
            }
        }
        (self.manufacturer.is_some() || self.product.is_some())
            && one(&self.manufacturer, manufacturer)
            && one(&self.product, product)
    }
}

/// `*` and `?` globbing; enough for SMBIOS strings, and linear in practice for short patterns.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = MatchRule {
            manufacturer: Some("Dell Inc.".into()),
            product: Some("PowerEdge R650*".into()),
        };
        assert!(r.matches(Some("Dell Inc."), Some("PowerEdge R650xs")));
        assert!(r.matches(Some("DELL INC. "), Some("poweredge r650")));
        assert!(!r.matches(Some("Dell Inc."), None));
        assert!(!r.matches(Some("HPE"), Some("PowerEdge R650")));
        assert!(!MatchRule::default().matches(Some("x"), Some("y")));
    }
}
