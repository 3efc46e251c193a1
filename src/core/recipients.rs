//! TEMPORARY STUB (replaced by the helper's module at merge).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalCase {
    #[default]
    Exact,
    Insensitive,
}

#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("line {line}: {detail}")]
    Line { line: usize, detail: String },
}

pub struct Recipients {
    set: HashSet<String>,
    case: LocalCase,
}

impl Recipients {
    pub fn parse(text: &str, case: LocalCase) -> Result<Recipients, RecipientsError> {
        let mut set = HashSet::new();
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let w = l.split_whitespace().next().unwrap_or("");
            let at = w.rfind('@').ok_or(RecipientsError::Line {
                line: i + 1,
                detail: w.into(),
            })?;
            let local = if case == LocalCase::Insensitive {
                w[..at].to_lowercase()
            } else {
                w[..at].to_string()
            };
            set.insert(format!("{local}@{}", w[at + 1..].to_ascii_lowercase()));
        }
        Ok(Recipients { set, case })
    }
    pub fn load(path: &Path, case: LocalCase) -> Result<Recipients, RecipientsError> {
        let t = std::fs::read_to_string(path).map_err(|source| RecipientsError::Read { path: path.into(), source })?;
        Self::parse(&t, case)
    }
    pub fn len(&self) -> usize {
        self.set.len()
    }
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
    pub fn outside(&self, _inside: &crate::core::address::DomainSet) -> usize {
        0
    }
    pub fn knows(&self, local: &str, domain: &str, delimiters: &str) -> bool {
        let local = if self.case == LocalCase::Insensitive {
            local.to_lowercase()
        } else {
            local.to_string()
        };
        let d = domain.to_ascii_lowercase();
        if self.set.contains(&format!("{local}@{d}")) || self.set.contains(&format!("@{d}")) {
            return true;
        }
        match local.find(|c| delimiters.contains(c)) {
            Some(i) if i > 0 => self.set.contains(&format!("{}@{d}", &local[..i])),
            _ => false,
        }
    }
}

pub fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), std::os::unix::fs::MetadataExt::ino(&m)))
}
