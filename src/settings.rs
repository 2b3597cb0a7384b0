//! The server's settings, resolved once: a flag on the command line wins over the
//! config file, which wins over the defaults. Each value is checked where it is
//! resolved, with a message that says what to do; what the engine checks itself
//! (budget, risk, deadline, client budgets) it checks when it opens.
//!
//! ```
//! use smart_async::{ServerFlags, Settings};
//! let flags = ServerFlags {
//!     data_dir: Some("smart-async-data".into()),
//!     budget_s: Some(30.0),
//!     http: Some("8080".into()),
//!     ..ServerFlags::default()
//! };
//! let settings = Settings::resolve(flags, smart_async::default_data_dir)?;
//! assert_eq!(settings.engine.budget_s, 30.0);
//! assert_eq!(settings.http.unwrap().addr.to_string(), "127.0.0.1:8080");
//! # Ok::<(), smart_async::SettingsError>(())
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthConfigError, Authenticator};
use crate::config::{ConfigError, FileConfig};
use crate::engine::EngineConfig;
use crate::http::{HttpAccess, HttpLimits};
use crate::mcp::OWN_TOOL_NAMES;
use crate::policy::{StaticTable, StaticTableError};
use crate::tls::TlsFiles;
use crate::tools::command::CommandTool;
use crate::tools::files::{HashFiles, SearchText};
use crate::tools::roots::{RootError, Roots};
use crate::tools::Tool;

/// What the command line gave `serve` or `proxy`: `None` or empty where a flag was
/// not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerFlags {
    /// `--config`: the config file (default: the one `smart-async init` wrote, if any).
    pub config: Option<PathBuf>,
    /// `--data-dir`: where the database lives.
    pub data_dir: Option<PathBuf>,
    /// `--budget-s`.
    pub budget_s: Option<f64>,
    /// `--risk`.
    pub risk: Option<f64>,
    /// `--poll-cost-s`.
    pub poll_cost_s: Option<f64>,
    /// `--deadline-s`.
    pub deadline_s: Option<f64>,
    /// `--http`: PORT or HOST:PORT.
    pub http: Option<String>,
    /// `--allowed-origin` (or `--allow-origin`), repeatable.
    pub allow_origin: Vec<String>,
    /// `--allowed-host`, repeatable.
    pub allowed_hosts: Vec<String>,
    /// `--allow-unauthenticated`.
    pub allow_unauthenticated: bool,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--public-url`.
    pub public_url: Option<String>,
    /// `--root`, repeatable (`serve` only).
    pub roots: Vec<PathBuf>,
}

/// Where the HTTP face listens, who may call it and how much it takes.
#[derive(Debug, Clone)]
pub struct HttpListen {
    /// The address to bind.
    pub addr: SocketAddr,
    /// Hosts, origins and limits.
    pub limits: HttpLimits,
    /// Authentication, the public URL, TLS.
    pub access: HttpAccess,
}

/// Everything a server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The config file as read (its command tools, its roots), empty without one.
    pub file: FileConfig,
    /// The file that was read, if one was.
    pub config_path: Option<PathBuf>,
    /// HTTP, or stdio when `None`.
    pub http: Option<HttpListen>,
    /// The roots given on the command line, which win over the file's.
    root_flags: Vec<PathBuf>,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The config file cannot be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The static table file cannot be used.
    #[error(transparent)]
    StaticTable(#[from] StaticTableError),
    /// `max_running_jobs` is 0.
    #[error("max_running_jobs must be at least 1")]
    MaxRunning,
    /// `job_retention_h` is negative or not a number.
    #[error("job_retention_h must be a number of hours ≥ 0")]
    Retention,
    /// An HTTP-only flag without `--http`.
    #[error("{0} is for the HTTP face: add --http PORT")]
    OnlyForHttp(&'static str),
    /// The `[auth]` table cannot be used.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// A non-loopback address with no authentication.
    #[error("--http {0} can be reached from other machines, and no [auth] is configured: anyone who reaches the port could run the server's tools. Configure [[auth.tokens]] or [auth.jwt] (README, \"Deploy over HTTP\"), or pass --allow-unauthenticated if a gateway in front authenticates every request")]
    Unauthenticated(SocketAddr),
    /// Only one of the TLS certificate and key.
    #[error("TLS needs both --tls-cert and --tls-key (or tls_cert and tls_key in [http])")]
    TlsHalf,
    /// A limit of 0.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// A public URL that is not one.
    #[error(
        "public_url '{0}' must be the MCP endpoint's full URL, such as https://mcp.example.com/mcp"
    )]
    PublicUrl(String),
    /// `--http` is not an address.
    #[error("--http '{0}' is not PORT or HOST:PORT (for example 8080 or 127.0.0.1:8080)")]
    HttpAddr(String),
    /// No data directory was given and the platform has no default one.
    #[error("this platform has no user data directory: pass --data-dir")]
    NoDataDir,
    /// No root was given and the current directory cannot be read.
    #[error("cannot read the current directory: pass --root")]
    NoCurrentDir(#[source] std::io::Error),
    /// A root cannot be used.
    #[error(transparent)]
    Root(#[from] RootError),
    /// A command tool would hide one of smart-async's own tools.
    #[error(
        "command '{0}' has the name of smart-async's own tool, which it would hide: rename it"
    )]
    OwnToolName(String),
    /// Two tools have one name.
    #[error("command '{0}' is declared twice or clashes with a built-in tool: rename it")]
    DuplicateTool(String),
    /// A command tool's declaration is not valid.
    #[error("{0}")]
    Command(String),
}

/// Where `init` writes the config and `serve` looks for it.
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("smart-async").join("config.toml"))
}

/// smart-async's folder in the user data directory (`~/.local/share/smart-async` on
/// Linux).
pub fn default_data_dir() -> Result<PathBuf, SettingsError> {
    dirs::data_dir()
        .map(|dir| dir.join("smart-async"))
        .ok_or(SettingsError::NoDataDir)
}

/// The data directory given, or the default one.
pub fn data_dir_or_default(given: Option<PathBuf>) -> Result<PathBuf, SettingsError> {
    given.map_or_else(default_data_dir, Ok)
}

impl Settings {
    /// Reads the config file (the one given, else the default one if it exists) and
    /// resolves every setting: flags over the file over the defaults, where
    /// `default_data_dir` gives the data directory when neither names one.
    pub fn resolve(
        flags: ServerFlags,
        default_data_dir: impl FnOnce() -> Result<PathBuf, SettingsError>,
    ) -> Result<Settings, SettingsError> {
        let config_path =
            (flags.config.clone()).or_else(|| default_config_path().filter(|path| path.is_file()));
        let file = match &config_path {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let data_dir = match (flags.data_dir.clone())
            .or_else(|| file.data_dir.as_ref().map(|d| file.resolve(d)))
        {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        let mut engine = EngineConfig::new(data_dir);
        if let Some(budget_s) = flags.budget_s.or(file.budget_s) {
            engine.budget_s = budget_s;
        }
        engine.risk = flags.risk.or(file.risk);
        if let Some(poll_cost_s) = flags.poll_cost_s.or(file.poll_cost_s) {
            engine.poll_cost_s = poll_cost_s;
        }
        engine.deadline_s = flags.deadline_s.or(file.deadline_s);
        engine.client_budgets = file.clients.clone();
        if let Some(table) = &file.static_table {
            engine.static_table = StaticTable::load(&file.resolve(table))?;
        }
        if let Some(max_running) = file.max_running_jobs {
            if max_running == 0 {
                return Err(SettingsError::MaxRunning);
            }
            engine.jobs.max_running = max_running;
        }
        if let Some(hours) = file.job_retention_h {
            // Refuses a negative, non-finite or too large number of hours.
            engine.jobs.retention = Duration::try_from_secs_f64(hours * 3600.0)
                .map_err(|_| SettingsError::Retention)?;
        }
        if let Some(max_finished) = file.max_finished_jobs {
            engine.jobs.max_finished = max_finished;
        }
        for (name, value) in [
            ("max_jobs_per_principal", file.max_jobs_per_principal),
            (
                "max_finished_jobs_per_principal",
                file.max_finished_jobs_per_principal,
            ),
            (
                "max_job_starts_per_minute",
                file.max_job_starts_per_minute.map(|n| n as usize),
            ),
        ] {
            if value == Some(0) {
                return Err(SettingsError::ZeroLimit(name));
            }
        }
        if let Some(max) = file.max_jobs_per_principal {
            engine.jobs.max_active_per_principal = max;
        }
        if let Some(max) = file.max_finished_jobs_per_principal {
            engine.jobs.max_finished_per_principal = max;
        }
        if let Some(max) = file.max_job_starts_per_minute {
            engine.jobs.max_starts_per_minute = max;
        }
        let http = match flags.http.as_deref() {
            Some(addr) => Some(http_listen(http_addr(addr)?, &flags, &file)?),
            None => {
                let http_only = [
                    ("--allowed-origin", !flags.allow_origin.is_empty()),
                    ("--allowed-host", !flags.allowed_hosts.is_empty()),
                    ("--allow-unauthenticated", flags.allow_unauthenticated),
                    ("--tls-cert", flags.tls_cert.is_some()),
                    ("--tls-key", flags.tls_key.is_some()),
                    ("--public-url", flags.public_url.is_some()),
                ];
                if let Some((flag, _)) = http_only.iter().find(|(_, given)| *given) {
                    return Err(SettingsError::OnlyForHttp(flag));
                }
                None
            }
        };
        Ok(Settings {
            engine,
            file,
            config_path,
            http,
            root_flags: flags.roots,
        })
    }

    /// The roots (flags over the file over the current directory), the built-in tools
    /// over them and the config's command tools.
    pub fn tools(&self) -> Result<(Roots, Vec<Arc<dyn Tool>>), SettingsError> {
        let file = &self.file;
        let roots = if !self.root_flags.is_empty() {
            self.root_flags.clone()
        } else if !file.roots.is_empty() {
            file.roots.iter().map(|r| file.resolve(r)).collect()
        } else {
            vec![std::env::current_dir().map_err(SettingsError::NoCurrentDir)?]
        };
        let roots = Roots::new(&roots)?;
        let shared_roots = Arc::new(roots.clone());
        let mut tools: Vec<Arc<dyn Tool>> = vec![
            Arc::new(HashFiles::new(shared_roots.clone())),
            Arc::new(SearchText::new(shared_roots.clone())),
        ];
        for spec in file.commands.iter().cloned() {
            let name = spec.name.clone();
            if OWN_TOOL_NAMES.contains(&name.as_str()) {
                return Err(SettingsError::OwnToolName(name));
            }
            if tools.iter().any(|t| t.name() == name) {
                return Err(SettingsError::DuplicateTool(name));
            }
            let tool = CommandTool::new(spec, &file.base_dir, shared_roots.clone())
                .map_err(SettingsError::Command)?;
            tools.push(Arc::new(tool));
        }
        Ok((roots, tools))
    }
}

/// The HTTP face's settings: flags over the file's `[http]` and `[auth]`.
fn http_listen(
    addr: SocketAddr,
    flags: &ServerFlags,
    file: &FileConfig,
) -> Result<HttpListen, SettingsError> {
    let table = &file.http;
    let mut limits = HttpLimits::loopback(addr.ip());
    for host in table.allowed_hosts.iter().chain(&flags.allowed_hosts) {
        if !limits
            .allowed_hosts
            .iter()
            .any(|known| known.eq_ignore_ascii_case(host))
        {
            limits.allowed_hosts.push(host.clone());
        }
    }
    limits.allowed_origins = (table.allowed_origins.iter().chain(&flags.allow_origin))
        .cloned()
        .collect();
    for (name, value, slot) in [
        (
            "max_request_bytes",
            table.max_request_bytes,
            &mut limits.max_request_bytes,
        ),
        (
            "max_concurrent_requests",
            table.max_concurrent_requests,
            &mut limits.max_concurrent_requests,
        ),
        ("max_sessions", table.max_sessions, &mut limits.max_sessions),
    ] {
        match value {
            Some(0) => return Err(SettingsError::ZeroLimit(name)),
            Some(value) => *slot = value,
            None => {}
        }
    }
    let auth = Authenticator::new(&file.auth, &file.base_dir)?.map(Arc::new);
    if auth.is_none()
        && !addr.ip().is_loopback()
        && !(flags.allow_unauthenticated || table.allow_unauthenticated)
    {
        return Err(SettingsError::Unauthenticated(addr));
    }
    let cert =
        (flags.tls_cert.clone()).or_else(|| table.tls_cert.as_ref().map(|p| file.resolve(p)));
    let key = (flags.tls_key.clone()).or_else(|| table.tls_key.as_ref().map(|p| file.resolve(p)));
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => return Err(SettingsError::TlsHalf),
    };
    let public_url = (flags.public_url.clone()).or_else(|| table.public_url.clone());
    if let Some(url) = &public_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(SettingsError::PublicUrl(url.clone()));
        }
    }
    Ok(HttpListen {
        addr,
        limits,
        access: HttpAccess {
            auth,
            public_url,
            tls,
        },
    })
}

/// Where to listen: a bare port means loopback.
fn http_addr(text: &str) -> Result<SocketAddr, SettingsError> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| SettingsError::HttpAddr(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(dir: &std::path::Path) -> ServerFlags {
        ServerFlags {
            data_dir: Some(dir.join("data")),
            config: Some(dir.join("config.toml")),
            ..ServerFlags::default()
        }
    }

    fn no_default() -> Result<PathBuf, SettingsError> {
        panic!("the data directory was given")
    }

    #[test]
    fn a_flag_wins_over_the_file_which_wins_over_the_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "budget_s = 20\nrisk = 0.1\npoll_cost_s = 2\nmax_running_jobs = 2\njob_retention_h = 1.5\n",
        )
        .unwrap();
        let mut given = flags(dir.path());
        given.budget_s = Some(30.0);
        given.poll_cost_s = Some(3.0);
        let settings = Settings::resolve(given, no_default).unwrap();
        assert_eq!(settings.engine.budget_s, 30.0, "the flag");
        assert_eq!(settings.engine.poll_cost_s, 3.0, "the flag");
        assert_eq!(settings.engine.risk, Some(0.1), "the file");
        let settings = Settings::resolve(flags(dir.path()), no_default).unwrap();
        assert_eq!(settings.engine.poll_cost_s, 2.0, "the file");
        assert_eq!(
            EngineConfig::new("d").risk,
            None,
            "the break-even risk by default"
        );
        assert_eq!(settings.engine.deadline_s, None, "the default");
        assert_eq!(settings.engine.jobs.max_running, 2);
        assert_eq!(settings.engine.jobs.retention, Duration::from_secs(5400));
        assert_eq!(settings.engine.data_dir, dir.path().join("data"));
        assert!(settings.http.is_none());
    }

    #[test]
    fn the_files_data_dir_is_anchored_at_the_file_and_the_default_comes_last() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "data_dir = \"db\"\n").unwrap();
        let given = ServerFlags {
            config: Some(config.clone()),
            ..ServerFlags::default()
        };
        let settings = Settings::resolve(given, no_default).unwrap();
        assert_eq!(settings.engine.data_dir, dir.path().join("db"));
        std::fs::write(&config, "").unwrap();
        let given = ServerFlags {
            config: Some(config),
            ..ServerFlags::default()
        };
        let settings = Settings::resolve(given, || Ok(PathBuf::from("fallback"))).unwrap();
        assert_eq!(settings.engine.data_dir, PathBuf::from("fallback"));
    }

    #[test]
    fn each_bad_value_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        for (file, said) in [
            ("max_running_jobs = 0", "at least 1"),
            ("job_retention_h = -1", "hours ≥ 0"),
            ("job_retention_h = 1e300", "hours ≥ 0"),
            ("budget_s = \"x\"", "is not valid"),
            ("no_such_key = 1", "is not valid"),
        ] {
            std::fs::write(&config, file).unwrap();
            let error = Settings::resolve(flags(dir.path()), no_default).unwrap_err();
            assert!(error.to_string().contains(said), "{file}: {error}");
        }
        std::fs::write(&config, "").unwrap();
        let mut given = flags(dir.path());
        given.allow_origin = vec!["http://localhost:6274".into()];
        let error = Settings::resolve(given.clone(), no_default).unwrap_err();
        assert!(error.to_string().contains("add --http PORT"), "{error}");
        given.http = Some("localhost:port".into());
        let error = Settings::resolve(given, no_default).unwrap_err();
        assert!(error.to_string().contains("PORT or HOST:PORT"), "{error}");
    }

    #[test]
    fn a_bare_port_listens_on_loopback_with_the_origins_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "").unwrap();
        let mut given = flags(dir.path());
        given.http = Some("8080".into());
        given.allow_origin = vec!["http://localhost:6274".into()];
        let settings = Settings::resolve(given, no_default).unwrap();
        let http = settings.http.unwrap();
        assert_eq!(http.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(http.limits.allowed_origins, ["http://localhost:6274"]);
        assert!(http.access.auth.is_none() && http.access.tls.is_none());
    }

    #[test]
    fn a_command_tool_may_not_hide_another_tool() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        for (name, said) in [
            ("job_status", "smart-async's own tool"),
            ("hash_files", "clashes"),
        ] {
            std::fs::write(
                &config,
                format!("[[command]]\nname = \"{name}\"\ndescription = \"d\"\nargv = [\"true\"]\n"),
            )
            .unwrap();
            let mut given = flags(dir.path());
            given.roots = vec![dir.path().to_path_buf()];
            let settings = Settings::resolve(given, no_default).unwrap();
            let error = settings.tools().err().unwrap();
            assert!(error.to_string().contains(said), "{name}: {error}");
        }
    }
}
