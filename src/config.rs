//! The server's config file (TOML): settings and command tools.
//!
//! Every key is optional; a flag on the command line wins over the file. Relative
//! paths in the file are relative to the file's own directory. See
//! `data/smart-async.example.toml` for every key with its meaning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::tools::command::CommandSpec;

/// The config file's contents.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Seconds a call may take inline.
    pub budget_s: Option<f64>,
    /// Share of runtimes allowed above the bound (default: each call's break-even
    /// risk).
    pub risk: Option<f64>,
    /// Seconds a needless background costs a caller (one poll), for the break-even
    /// risk.
    pub poll_cost_s: Option<f64>,
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
    /// Background jobs running and pending at once per principal.
    pub max_jobs_per_principal: Option<usize>,
    /// Finished jobs kept at most per principal.
    pub max_finished_jobs_per_principal: Option<usize>,
    /// Background jobs a principal may start per minute.
    pub max_job_starts_per_minute: Option<u32>,
    /// The HTTP face (`[http]`): hosts, origins, limits, TLS.
    #[serde(default)]
    pub http: HttpConfig,
    /// Who may call over HTTP (`[auth]`).
    #[serde(default)]
    pub auth: AuthConfig,
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

/// The `[http]` table: what only the HTTP face uses. Flags add to the lists and win
/// over the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Host names the server is reached by, besides the loopback ones.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call it.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// The largest request body taken, in bytes.
    pub max_request_bytes: Option<usize>,
    /// Requests served at once at most.
    pub max_concurrent_requests: Option<usize>,
    /// Sessions held at most.
    pub max_sessions: Option<usize>,
    /// The MCP endpoint's canonical URL when a reverse proxy serves it.
    pub public_url: Option<String>,
    /// The TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Serve a non-loopback address with no `[auth]` (a gateway in front
    /// authenticates).
    #[serde(default)]
    pub allow_unauthenticated: bool,
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
