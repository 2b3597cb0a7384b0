//! The static cold-start table: fixed thresholds on a call's features (long strings,
//! many files, big batches, tools that look expensive) that decide for a tool nothing
//! has been learned about. Parsed from TOML text the caller loaded.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::features::{FeatureKind, Features};

/// The built-in static table (`data/static_thresholds.toml`).
pub const BUILTIN_STATIC_TABLE: &str = include_str!("../../data/static_thresholds.toml");

/// Fixed thresholds for tools nothing has been learned about.
///
/// ```
/// use smart_async::StaticTable;
/// let table = StaticTable::from_toml(r#"
///     expensive_tools = ["llm"]
///     [[rule]]
///     name = "more than 20 files"
///     kinds = ["array_len"]
///     name_contains = ["files"]
///     over = 20
/// "#);
/// assert_eq!(table.map(|t| t.rules().len()).ok(), Some(1));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTable {
    /// Tools whose name contains one of these (case-insensitive) go to the background.
    #[serde(default)]
    expensive_tools: Vec<String>,
    #[serde(default, rename = "rule")]
    rules: Vec<StaticRule>,
}

/// One threshold of the static table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRule {
    /// What the rule says, for reasons.
    pub name: String,
    /// Feature kinds it looks at.
    pub kinds: Vec<FeatureKind>,
    /// Substrings of the feature name (case-insensitive); empty means any name.
    #[serde(default)]
    pub name_contains: Vec<String>,
    /// The rule fires when the value is over this.
    pub over: f64,
}

/// A static table that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StaticTableError {
    /// The file could not be read.
    #[error("cannot read the static table {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid table.
    #[error("the static table {origin} is not valid: {message}; see data/static_thresholds.toml for the format")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// What is wrong, with the line.
        message: String,
    },
}

impl Default for StaticTable {
    /// The built-in table.
    fn default() -> Self {
        // The built-in table is parsed by a unit test, so this cannot fail at run time.
        Self::from_toml(BUILTIN_STATIC_TABLE).unwrap_or(StaticTable {
            expensive_tools: Vec::new(),
            rules: Vec::new(),
        })
    }
}

impl StaticTable {
    /// Parses a table from TOML text.
    pub fn from_toml(text: &str) -> Result<StaticTable, StaticTableError> {
        Self::parse(text, "given as text")
    }

    /// Reads a table from a TOML file.
    pub fn load(path: &Path) -> Result<StaticTable, StaticTableError> {
        let text = std::fs::read_to_string(path).map_err(|source| StaticTableError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<StaticTable, StaticTableError> {
        let mut table: StaticTable = toml::from_str(text).map_err(|e| StaticTableError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        if let Some(bad) = table.rules.iter().find(|r| !r.over.is_finite()) {
            return Err(StaticTableError::Parse {
                origin: origin.to_owned(),
                message: format!("rule '{}' has a threshold that is not a number", bad.name),
            });
        }
        for pattern in table.expensive_tools.iter_mut().chain(
            table
                .rules
                .iter_mut()
                .flat_map(|r| r.name_contains.iter_mut()),
        ) {
            *pattern = pattern.to_lowercase();
        }
        Ok(table)
    }

    /// The rules, in the order they are checked.
    pub fn rules(&self) -> &[StaticRule] {
        &self.rules
    }

    /// Why a call of `tool_name` with these features (`expensive` when the tool was
    /// registered so) should go to the background, or `None`.
    pub fn check(&self, tool_name: &str, features: &Features, expensive: bool) -> Option<String> {
        let tool = tool_name.to_lowercase();
        if expensive {
            return Some(format!("tool '{tool_name}' is marked expensive"));
        }
        if let Some(pattern) = self
            .expensive_tools
            .iter()
            .find(|p| tool.contains(p.as_str()))
        {
            return Some(format!(
                "tool '{}' looks expensive (name contains '{pattern}')",
                tool_name
            ));
        }
        for feature in features.iter() {
            let name = feature.name.to_lowercase();
            let fired = self.rules.iter().find(|rule| {
                feature.value > rule.over
                    && rule.kinds.contains(&feature.kind)
                    && (rule.name_contains.is_empty()
                        || rule.name_contains.iter().any(|p| name.contains(p.as_str())))
            });
            if let Some(rule) = fired {
                return Some(format!(
                    "argument '{}' is {} > {} ({})",
                    feature.name, feature.value, rule.over, rule.name
                ));
            }
        }
        None
    }
}
