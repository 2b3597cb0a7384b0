//! The server's config file (TOML): settings and command tools.
//!
//! Every key is optional; a flag on the command line wins over the file. Relative
//! paths in the file are relative to the file's own directory. See
//! `data/smart-async.example.toml` for every key with its meaning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tools::command::CommandSpec;

/// The config file's contents.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Seconds a call may take inline.
    pub budget_s: Option<f64>,
    /// Share of runtimes allowed above the bound.
    pub risk: Option<f64>,
    /// Seconds before an inline call is promoted to a job (default: the budget).
    pub deadline_s: Option<f64>,
    /// Where the database lives.
    pub data_dir: Option<PathBuf>,
    /// Directories the built-in tools may read.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// A static table to use instead of the built-in one.
    pub static_table: Option<PathBuf>,
    /// Background jobs running at once.
    pub max_running_jobs: Option<usize>,
    /// Hours finished jobs are kept.
    pub job_retention_h: Option<f64>,
    /// Finished jobs kept at most.
    pub max_finished_jobs: Option<usize>,
    /// Budgets by client name (`[clients]`, `"claude-ai" = 50`).
    #[serde(default)]
    pub clients: BTreeMap<String, f64>,
    /// Command tools.
    #[serde(default, rename = "command")]
    pub commands: Vec<CommandSpec>,
    /// The directory relative paths are anchored to (the file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("the config file {path} is not valid: {message}; see data/smart-async.example.toml")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        message: String,
    },
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok(config)
    }

    /// A path from the file, anchored at the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/smart-async.example.toml");
        let config = FileConfig::load(&path).unwrap();
        assert!(!config.commands.is_empty());
        assert_eq!(config.budget_s, Some(50.0));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "budget_s = \"soon\"\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("budget_s"),
            "{err}"
        );
        std::fs::write(&path, "bugdet_s = 3\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
