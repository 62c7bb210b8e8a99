//! The standard tools a build needs, checked before anything is written, each named with the
//! Debian package that provides it.

use crate::recipe::Output;
use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("{tool} not found in PATH (needed for {output}): install the Debian package `{package}`")]
pub struct MissingTool {
    pub tool: String,
    pub package: String,
    pub output: String,
}

/// (tool, Debian package, outputs that need it)
const TOOLS: &[(&str, &str, &[Output])] = &[
    ("mksquashfs", "squashfs-tools", &[Output::Squashfs]),
    (
        "mkfs.ext4",
        "e2fsprogs",
        &[Output::Ext4, Output::Disk, Output::Qcow2],
    ),
    (
        "debugfs",
        "e2fsprogs",
        &[Output::Ext4, Output::Disk, Output::Qcow2],
    ),
    ("sgdisk", "gdisk", &[Output::Disk, Output::Qcow2]),
    ("mkfs.vfat", "dosfstools", &[Output::Disk, Output::Qcow2]),
    ("mcopy", "mtools", &[Output::Disk, Output::Qcow2]),
    ("qemu-img", "qemu-utils", &[Output::Qcow2]),
];

/// PATH plus the sbin directories, where Debian puts mkfs.* even for users without them in PATH.
fn search_path() -> std::ffi::OsString {
    let mut p = std::env::var_os("PATH").unwrap_or_default();
    p.push(":/usr/sbin:/sbin");
    p
}

pub fn find_in(tool: &str, search: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(search)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    find_in(tool, &search_path())
}

/// A command for a tool, by its resolved path (so it runs even where sbin is not in PATH).
pub fn cmd(tool: &str) -> Command {
    Command::new(find_in_path(tool).unwrap_or_else(|| PathBuf::from(tool)))
}

/// The tools the given outputs need.
pub fn needed(outputs: &[Output]) -> Vec<(&'static str, &'static str, Output)> {
    let mut v = Vec::new();
    for (tool, pkg, outs) in TOOLS {
        if let Some(o) = outputs.iter().find(|o| outs.contains(o)) {
            v.push((*tool, *pkg, *o));
        }
    }
    v
}

pub fn check_tools(outputs: &[Output]) -> Result<(), MissingTool> {
    check_tools_in(outputs, &search_path())
}

/// [`check_tools`] against an explicit search path (`PATH` syntax).
pub fn check_tools_in(outputs: &[Output], search: &std::ffi::OsStr) -> Result<(), MissingTool> {
    for (tool, pkg, out) in needed(outputs) {
        if find_in(tool, search).is_none() {
            return Err(MissingTool {
                tool: tool.into(),
                package: pkg.into(),
                output: out.name().into(),
            });
        }
    }
    Ok(())
}

/// One line identifying each tool's version (part of the build id: another version may write
/// other bytes).
pub fn versions(outputs: &[Output]) -> Vec<(String, String)> {
    needed(outputs)
        .into_iter()
        .map(|(tool, ..)| {
            let arg = match tool {
                "mksquashfs" => "-version",
                "mkfs.ext4" => "-V",
                "debugfs" => "-V",
                "mkfs.vfat" => "--help",
                _ => "--version",
            };
            let v = find_in_path(tool)
                .and_then(|p| Command::new(p).arg(arg).output().ok())
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                    s.push_str(&String::from_utf8_lossy(&o.stderr));
                    s.lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            (tool.to_string(), v)
        })
        .collect()
}

/// Runs a tool, turning a failure into an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<(), crate::BuildError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(?cmd, "running");
    let out = cmd.output().map_err(crate::BuildError::io(&tool))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(crate::BuildError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(4000)
                .collect(),
        })
    }
}
