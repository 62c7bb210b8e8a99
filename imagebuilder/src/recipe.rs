//! Recipe files (`images/NAME.toml`): strict parsing with line numbers for every diagnostic.

use crate::{Diagnostic, Severity};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One loaded recipe: its name (file stem), where it came from, and the parsed spec.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub file: PathBuf,
    /// The file's bytes, part of the build id.
    pub raw: Vec<u8>,
    pub spec: RecipeSpec,
}

impl Recipe {
    /// 1-based line of a byte offset in the recipe file.
    pub fn line_of(&self, offset: usize) -> usize {
        line_of(&self.raw, offset)
    }

    /// Parses one recipe from its text; `file` is used for the name and diagnostics.
    pub fn parse(file: &Path, raw: Vec<u8>) -> Result<Recipe, Diagnostic> {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let text = String::from_utf8_lossy(&raw).into_owned();
        match toml::from_str::<RecipeSpec>(&text) {
            Ok(spec) => Ok(Recipe {
                name,
                file: file.to_path_buf(),
                raw,
                spec,
            }),
            Err(e) => {
                let line = e.span().map(|s| line_of(&raw, s.start)).unwrap_or(1);
                Err(Diagnostic {
                    file: file.to_path_buf(),
                    line,
                    message: e.message().to_string(),
                    severity: Severity::Error,
                })
            }
        }
    }

    /// The effective timestamp of every entry in the outputs.
    pub fn source_date_epoch(&self) -> u64 {
        if let Some(e) = self.spec.source_date_epoch {
            return e;
        }
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn wants(&self, output: Output) -> bool {
        self.spec
            .outputs
            .iter()
            .any(|o| o.get_ref() == output.name())
    }
}

pub(crate) fn line_of(raw: &[u8], offset: usize) -> usize {
    raw.iter()
        .take(offset.min(raw.len()))
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Loads every `images/*.toml` of the site, sorted by name. Files that fail to parse are left out
/// and reported.
pub fn load_recipes(site_dir: &Path) -> (Vec<Recipe>, Vec<Diagnostic>) {
    let dir = site_dir.join("images");
    let mut recipes = Vec::new();
    let mut diags = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (recipes, diags),
        Err(e) => {
            diags.push(Diagnostic::error(&dir, 0, format!("cannot read: {e}")));
            return (recipes, diags);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    for file in files {
        match std::fs::read(&file) {
            Ok(raw) => match Recipe::parse(&file, raw) {
                Ok(r) => recipes.push(r),
                Err(d) => diags.push(d),
            },
            Err(e) => diags.push(Diagnostic::error(&file, 0, format!("cannot read: {e}"))),
        }
    }
    (recipes, diags)
}

/// The outputs a recipe can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    Kernel,
    Initramfs,
    Squashfs,
    Tar,
    Ext4,
    Disk,
    Qcow2,
}

impl Output {
    pub const ALL: [Output; 7] = [
        Output::Kernel,
        Output::Initramfs,
        Output::Squashfs,
        Output::Tar,
        Output::Ext4,
        Output::Disk,
        Output::Qcow2,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Output::Kernel => "kernel",
            Output::Initramfs => "initramfs",
            Output::Squashfs => "squashfs",
            Output::Tar => "tar",
            Output::Ext4 => "ext4",
            Output::Disk => "disk",
            Output::Qcow2 => "qcow2",
        }
    }
    pub fn parse(s: &str) -> Option<Output> {
        Output::ALL.into_iter().find(|o| o.name() == s)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    #[serde(default)]
    pub description: String,
    pub profiles: Vec<Spanned<String>>,
    pub outputs: Vec<Spanned<String>>,
    #[serde(default)]
    pub kernel_args: Vec<String>,
    #[serde(default)]
    pub units: Vec<Spanned<String>>,
    pub source_date_epoch: Option<u64>,
    pub base: Spanned<Base>,
    #[serde(default)]
    pub tree: Vec<Spanned<TreeLayer>>,
    #[serde(default)]
    pub dir: Vec<DirEntry>,
    #[serde(default)]
    pub file: Vec<Spanned<FileEntry>>,
    #[serde(default)]
    pub symlink: Vec<SymlinkEntry>,
    #[serde(default)]
    pub device: Vec<Spanned<DeviceEntry>>,
    #[serde(default)]
    pub user: Vec<Spanned<User>>,
    #[serde(default)]
    pub kernel: Option<Spanned<KernelSpec>>,
    #[serde(default)]
    pub initramfs: CompressionOpt,
    #[serde(default)]
    pub tar: CompressionOpt,
    #[serde(default)]
    pub squashfs: SquashfsOpt,
    #[serde(default)]
    pub disk: DiskOpt,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub dir: Option<Spanned<String>>,
    pub owner: Option<[u32; 2]>,
    pub tarball: Option<Spanned<String>>,
    pub oci: Option<Spanned<String>>,
    pub oci_ref: Option<String>,
    #[serde(default)]
    pub scratch: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TreeLayer {
    pub dir: String,
    #[serde(default = "root_str")]
    pub dest: String,
}

fn root_str() -> String {
    "/".into()
}
fn mode_dir() -> u32 {
    0o755
}
fn mode_file() -> u32 {
    0o644
}
fn mode_dev() -> u32 {
    0o600
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    pub path: String,
    #[serde(default = "mode_dir")]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub contents: Option<String>,
    pub source: Option<String>,
    #[serde(default = "mode_file")]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkEntry {
    pub path: String,
    pub target: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    pub path: String,
    pub kind: String,
    pub major: u32,
    pub minor: u32,
    #[serde(default = "mode_dev")]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub password_hash: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    pub path: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompressionOpt {
    #[serde(default)]
    pub compression: Compression,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SquashComp {
    #[default]
    Gzip,
    Xz,
    Zstd,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SquashfsOpt {
    #[serde(default)]
    pub compression: SquashComp,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DiskOpt {
    #[serde(default)]
    pub size_mib: u64,
    #[serde(default)]
    pub esp_mib: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line() {
        let raw = b"profiles = [\"a\"]\noutputs = [\"tar\"]\nbogus = 1\n[base]\nscratch = true\n"
            .to_vec();
        let d = Recipe::parse(Path::new("images/x.toml"), raw).unwrap_err();
        assert_eq!(d.line, 3, "{d:?}");
        assert!(d.message.contains("bogus"), "{}", d.message);
    }

    #[test]
    fn parses_worked_example() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RECIPES.md")).unwrap();
        let start = doc.find("# images/busybox.toml").unwrap();
        let end = start + doc[start..].find("```").unwrap();
        let r = Recipe::parse(
            Path::new("images/busybox.toml"),
            doc.as_bytes()[start..end].to_vec(),
        )
        .unwrap();
        assert_eq!(r.name, "busybox");
        assert!(r.wants(Output::Initramfs));
        assert_eq!(r.source_date_epoch(), 1_700_000_000);
        assert_eq!(r.spec.device[0].get_ref().major, 5);
    }
}
