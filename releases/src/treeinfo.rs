//! `.treeinfo`: the INI file at the top of an install tree (written by productmd for CentOS
//! Stream composes). Only what a sync needs is read: the tree's architecture and the sha256 of
//! each image in `[checksums]`.

use std::collections::BTreeMap;

/// What a sync needs of a `.treeinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeInfo {
    /// `[tree] arch` (productmd), else `[general] arch` (older trees).
    pub arch: String,
    /// `[checksums]`: relative path → (checksum type, lowercase hex).
    pub checksums: BTreeMap<String, (String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeInfoError {
    #[error(".treeinfo is not UTF-8 text")]
    NotText,
    #[error(".treeinfo line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error(".treeinfo names no architecture ([tree] arch or [general] arch)")]
    NoArch,
    #[error(".treeinfo [checksums] {path} = {value:?}: {message}")]
    BadChecksum {
        path: String,
        value: String,
        message: String,
    },
}

impl TreeInfo {
    /// Parses `.treeinfo` bytes. Quotes and backslashes are taken literally, as Python's
    /// configparser (which writes the file) does.
    pub fn parse(bytes: &[u8]) -> Result<TreeInfo, TreeInfoError> {
        let text = std::str::from_utf8(bytes).map_err(|_| TreeInfoError::NotText)?;
        let opt = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..ini::ParseOption::default()
        };
        let ini = ini::Ini::load_from_str_opt(text, opt).map_err(|e| TreeInfoError::Syntax {
            line: e.line + 1,
            message: e.msg.to_string(),
        })?;
        let arch = ini
            .get_from(Some("tree"), "arch")
            .or_else(|| ini.get_from(Some("general"), "arch"))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or(TreeInfoError::NoArch)?
            .to_string();
        let mut checksums = BTreeMap::new();
        if let Some(sec) = ini.section(Some("checksums")) {
            for (path, value) in sec.iter() {
                let bad = |message: &str| TreeInfoError::BadChecksum {
                    path: path.to_string(),
                    value: value.to_string(),
                    message: message.to_string(),
                };
                let value = value.trim();
                // productmd writes `sha256:<hex>`; a bare digest is read by its length, as
                // productmd reads it.
                let (kind, hex) = match value.split_once(':') {
                    Some((k, h)) => (k.trim().to_ascii_lowercase(), h.trim()),
                    None => match value.len() {
                        32 => ("md5".to_string(), value),
                        40 => ("sha1".to_string(), value),
                        64 => ("sha256".to_string(), value),
                        _ => return Err(bad("not <type>:<hex digest>")),
                    },
                };
                if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("the digest is not hex"));
                }
                checksums.insert(
                    path.trim().trim_start_matches("./").to_string(),
                    (kind, hex.to_ascii_lowercase()),
                );
            }
        }
        Ok(TreeInfo { arch, checksums })
    }

    /// The sha256 `[checksums]` lists for `path`: Ok(None) when the file is not listed, an
    /// error when it is listed with another checksum type or a malformed sha256.
    pub fn sha256(&self, path: &str) -> Result<Option<&str>, TreeInfoError> {
        let Some((kind, hex)) = self.checksums.get(path) else {
            return Ok(None);
        };
        let bad = |message: &str| TreeInfoError::BadChecksum {
            path: path.to_string(),
            value: format!("{kind}:{hex}"),
            message: message.to_string(),
        };
        if kind != "sha256" {
            return Err(bad("only sha256 is trusted"));
        }
        if hex.len() != 64 {
            return Err(bad("a sha256 is 64 hex digits"));
        }
        Ok(Some(hex))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTMD: &str = "[checksums]
images/efiboot.img = sha256:32CB91afd91bd3cfc2ae997ed2ae5cd1bbe237f57f87ca664e93b7e69fd0f4dc
images/pxeboot/vmlinuz = sha256:95eea335d373191607f4601145cfac8596e59bd4bc4387386e5569dff26555b3
images/old.img = md5:0123456789abcdef0123456789abcdef

[general]
; WARNING.0 = This section provides compatibility with pre-productmd treeinfos.
arch = x86_64

[tree]
arch = aarch64
build_timestamp = 1707691033
";

    #[test]
    fn reads_arch_and_checksums() {
        let t = TreeInfo::parse(PRODUCTMD.as_bytes()).unwrap();
        assert_eq!(t.arch, "aarch64", "[tree] wins over [general]");
        assert_eq!(
            t.sha256("images/efiboot.img").unwrap(),
            Some("32cb91afd91bd3cfc2ae997ed2ae5cd1bbe237f57f87ca664e93b7e69fd0f4dc")
        );
        assert_eq!(t.sha256("images/install.img").unwrap(), None);
        let e = t.sha256("images/old.img").unwrap_err().to_string();
        assert!(e.contains("only sha256"), "{e}");
    }

    #[test]
    fn old_trees_and_bad_input() {
        let t = TreeInfo::parse(b"[general]\narch = x86_64\n").unwrap();
        assert_eq!(t.arch, "x86_64");
        assert!(t.checksums.is_empty());
        assert_eq!(
            TreeInfo::parse(b"[tree]\nplatforms = x86_64\n"),
            Err(TreeInfoError::NoArch)
        );
        assert_eq!(TreeInfo::parse(b"\xff\xfe"), Err(TreeInfoError::NotText));
        let e = TreeInfo::parse(b"[tree]\narch = x86_64\n[checksums]\na = sha256:zz\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[checksums] a") && e.contains("not hex"), "{e}");
        assert!(matches!(
            TreeInfo::parse(b"[tree\narch = x"),
            Err(TreeInfoError::Syntax { .. })
        ));
    }
}
