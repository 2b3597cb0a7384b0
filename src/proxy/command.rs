//! The upstream server's command line, as configured: what runs, how long its
//! handshake may take, and the file name its models are kept under.

use std::time::Duration;

/// How long the upstream may take to answer the MCP handshake, by default: long
/// enough for `npx -y` to fetch a server on its first run.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// The upstream server's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamCommand {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long it may take to answer the MCP handshake (see
    /// [`DEFAULT_STARTUP_TIMEOUT`]).
    pub startup_timeout: Duration,
}

impl UpstreamCommand {
    /// A file name for this command line: the program's name and a digest of the
    /// whole line (`server-everything-1a2b3c4d`).
    pub fn slug(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        digest.update(self.program.as_bytes());
        for arg in &self.args {
            digest.update([0]);
            digest.update(arg.as_bytes());
        }
        let name: String = std::path::Path::new(&self.program)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let hash: String = digest.finalize()[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("{name}-{hash}")
    }
}

impl std::fmt::Display for UpstreamCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_command_line_has_its_own_file_name() {
        let command = |program: &str, args: &[&str]| UpstreamCommand {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        };
        let slug = command("/usr/bin/npx", &["-y", "server-everything"]).slug();
        assert!(
            slug.starts_with("npx-") && slug.len() == "npx-".len() + 8,
            "{slug}"
        );
        assert_ne!(slug, command("/usr/bin/npx", &["-y", "other"]).slug());
        assert_ne!(
            command("a", &["b c"]).slug(),
            command("a", &["b", "c"]).slug()
        );
        assert!(command("../odd name!", &[])
            .slug()
            .starts_with("odd_name_-"));
    }
}
