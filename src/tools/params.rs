//! The parameters of a command tool: typed values, checked so that none can become an
//! option, reach outside the roots or expand into another parameter.
//!
//! A value fills its `{name}` placeholders as exactly one argument, in one pass, so
//! what a value contains stays literal. A value that starts with `-` would be read by
//! most programs as an option (`find -delete`, `sleep -5`, `echo --help`): it is refused
//! unless the config says the parameter may (`allow_leading_dash = true`). A `path`
//! parameter is resolved inside the roots as the file tools' paths are and passed as
//! its canonical absolute path. Numbers must lie in their declared range.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::roots::Roots;
use crate::features::ASYNC_MODE_ARG;

/// The type of a command parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any string.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// true or false.
    Boolean,
    /// A file or directory inside the roots, passed as its absolute path.
    Path,
}

impl ParamType {
    /// The JSON Schema type name.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String | ParamType::Path => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, ParamType::Integer | ParamType::Number)
    }
}

/// One parameter of a command tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// What it means, for the model.
    #[serde(default)]
    pub description: String,
    /// Whether a call must give it.
    #[serde(default)]
    pub required: bool,
    /// The value used when a call does not give it.
    pub default: Option<Value>,
    /// The smallest value a number may take.
    pub minimum: Option<f64>,
    /// The largest value a number may take.
    pub maximum: Option<f64>,
    /// Whether a value may start with `-` (and so may be read as an option).
    #[serde(default)]
    pub allow_leading_dash: bool,
}

impl ParamSpec {
    /// A parameter of this type with nothing else said.
    pub fn new(kind: ParamType) -> ParamSpec {
        ParamSpec {
            kind,
            description: String::new(),
            required: false,
            default: None,
            minimum: None,
            maximum: None,
            allow_leading_dash: false,
        }
    }

    /// Its JSON Schema property.
    pub(super) fn schema(&self) -> Value {
        let mut property = json!({ "type": self.kind.name(), "description": self.description });
        if let Some(default) = &self.default {
            property["default"] = default.clone();
        }
        if let Some(minimum) = self.minimum {
            property["minimum"] = json!(minimum);
        }
        if let Some(maximum) = self.maximum {
            property["maximum"] = json!(maximum);
        }
        property
    }

    /// Checks what the config says of this parameter, its default against its own rules.
    pub(super) fn check(&self, tool: &str, param: &str, roots: &Roots) -> Result<(), String> {
        let range = [self.minimum, self.maximum];
        if !self.kind.is_numeric() && range.iter().any(Option::is_some) {
            return Err(format!(
                "command '{tool}': parameter '{param}' is a {}: minimum and maximum are for numbers",
                self.kind.name()
            ));
        }
        if range.iter().flatten().any(|bound| !bound.is_finite()) {
            return Err(format!(
                "command '{tool}': parameter '{param}': minimum and maximum must be finite numbers"
            ));
        }
        if let (Some(minimum), Some(maximum)) = (self.minimum, self.maximum) {
            if minimum > maximum {
                return Err(format!(
                    "command '{tool}': parameter '{param}': minimum {minimum} is above maximum {maximum}"
                ));
            }
        }
        match (&self.default, self.kind) {
            // Resolved per call: the roots may come from the command line, and the
            // path may come and go.
            (Some(Value::String(_)), ParamType::Path) | (None, _) => {}
            (Some(default), _) => {
                self.text(tool, param, default, roots).map_err(|e| {
                    format!("command '{tool}': the default of '{param}' is refused: {e}")
                })?;
            }
        }
        Ok(())
    }

    /// The argument a value becomes, or why it may not.
    fn text(
        &self,
        tool: &str,
        param: &str,
        value: &Value,
        roots: &Roots,
    ) -> Result<String, String> {
        let text = match (self.kind, value) {
            (ParamType::String, Value::String(s)) => s.clone(),
            (ParamType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => {
                self.in_range(tool, param, n.as_f64().unwrap_or(f64::NAN))?;
                n.to_string()
            }
            (ParamType::Number, Value::Number(n)) => {
                self.in_range(tool, param, n.as_f64().unwrap_or(f64::NAN))?;
                n.to_string()
            }
            (ParamType::Boolean, Value::Bool(b)) => b.to_string(),
            (ParamType::Path, Value::String(s)) => {
                let path = roots
                    .resolve(s)
                    .map_err(|e| format!("{tool}: parameter '{param}': {e}"))?;
                path.to_str()
                    .ok_or_else(|| format!("{tool}: parameter '{param}': the path is not UTF-8"))?
                    .to_owned()
            }
            (kind, other) => {
                return Err(format!(
                    "{tool}: parameter '{param}' must be of type {}, got {}",
                    kind.name(),
                    clip(&other.to_string())
                ))
            }
        };
        if text.starts_with('-') && !self.allow_leading_dash {
            return Err(format!(
                "{tool}: parameter '{param}' may not start with '-' (the command would read '{}' as an option); the config can allow it with allow_leading_dash = true",
                clip(&text)
            ));
        }
        if text.contains('\0') {
            return Err(format!("{tool}: parameter '{param}' contains a NUL byte"));
        }
        Ok(text)
    }

    fn in_range(&self, tool: &str, param: &str, value: f64) -> Result<(), String> {
        let below = self.minimum.is_some_and(|minimum| value < minimum);
        let above = self.maximum.is_some_and(|maximum| value > maximum);
        if below || above {
            let bound = |b: Option<f64>| b.map_or("any".to_owned(), |b| b.to_string());
            return Err(format!(
                "{tool}: parameter '{param}' must be between {} and {}, got {value}",
                bound(self.minimum),
                bound(self.maximum)
            ));
        }
        Ok(())
    }
}

/// At most this much of a refused value is quoted back.
const MAX_QUOTED_CHARS: usize = 60;

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED_CHARS {
        return text.to_owned();
    }
    let head: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    format!("{head}…")
}

/// The values of one call by parameter name, as the arguments they become: checked
/// against their types and rules, with defaults.
pub(super) fn values(
    tool: &str,
    params: &BTreeMap<String, ParamSpec>,
    args: &Value,
    roots: &Roots,
) -> Result<BTreeMap<String, String>, String> {
    let empty = Map::new();
    let args = match args {
        Value::Object(map) => map,
        Value::Null => &empty,
        other => {
            return Err(format!(
                "{tool}: arguments must be a JSON object, got {}",
                clip(&other.to_string())
            ))
        }
    };
    if let Some(unknown) = args
        .keys()
        .find(|k| *k != ASYNC_MODE_ARG && !params.contains_key(*k))
    {
        let known: Vec<&str> = params.keys().map(String::as_str).collect();
        return Err(format!(
            "{tool}: unknown parameter '{}' (parameters: {})",
            clip(unknown),
            known.join(", ")
        ));
    }
    let mut values = BTreeMap::new();
    for (param, spec) in params {
        let value = match args
            .get(param)
            .filter(|v| !v.is_null())
            .or(spec.default.as_ref())
        {
            Some(value) => value,
            None if spec.required => {
                return Err(format!("{tool}: parameter '{param}' is required"))
            }
            None => continue,
        };
        values.insert(param.clone(), spec.text(tool, param, value, roots)?);
    }
    Ok(values)
}

/// The names of the `{name}` placeholders in a template element.
pub(super) fn placeholders(element: &str) -> impl Iterator<Item = &str> {
    element
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

/// Fills the template in one pass, so a value is never read for placeholders; an
/// element that is only a placeholder with no value is dropped.
pub(super) fn fill(template: &[String], values: &BTreeMap<String, String>) -> Vec<String> {
    template
        .iter()
        .filter_map(|element| {
            let mut names = placeholders(element);
            if let (Some(name), None) = (names.next(), names.next()) {
                if element.len() == name.len() + 2 && !values.contains_key(name) {
                    return None;
                }
            }
            let mut filled = String::with_capacity(element.len());
            let mut rest = element.as_str();
            while let Some(open) = rest.find('{') {
                filled.push_str(&rest[..open]);
                let after = &rest[open + 1..];
                match after.split_once('}') {
                    Some((name, tail)) => {
                        filled.push_str(values.get(name).map_or("", String::as_str));
                        rest = tail;
                    }
                    None => {
                        filled.push_str(&rest[open..]);
                        rest = "";
                    }
                }
            }
            filled.push_str(rest);
            Some(filled)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let roots = Roots::new(&[dir.path().to_path_buf()]).unwrap();
        (dir, roots)
    }

    fn one(spec: ParamSpec, value: Value) -> Result<String, String> {
        let (_dir, roots) = roots();
        let params = BTreeMap::from([("p".to_owned(), spec)]);
        values("t", &params, &json!({ "p": value }), &roots).map(|v| v["p"].clone())
    }

    #[test]
    fn fill_substitutes_in_one_pass_and_values_stay_literal() {
        // Issue 14 (same class as break 2): `a = "{b}"` expanded b's value.
        let template: Vec<String> = ["{a}|{b}", "x{a}y"].map(String::from).to_vec();
        let values = BTreeMap::from([
            ("a".to_owned(), "{b}".to_owned()),
            ("b".to_owned(), "X".to_owned()),
        ]);
        assert_eq!(fill(&template, &values), ["{b}|X", "x{b}y"]);
    }

    #[test]
    fn placeholders_fill_one_argument_each_and_missing_optionals_vanish() {
        let template: Vec<String> = ["grep", "-n", "{pattern}", "--max={count}", "{path}"]
            .map(String::from)
            .to_vec();
        let values = BTreeMap::from([("pattern".to_owned(), "a b; rm -rf /".to_owned())]);
        assert_eq!(
            fill(&template, &values),
            ["grep", "-n", "a b; rm -rf /", "--max="]
        );
    }

    #[test]
    fn break_2_a_value_that_starts_with_a_dash_is_refused_unless_allowed() {
        let err = one(ParamSpec::new(ParamType::String), json!("-delete")).unwrap_err();
        assert!(
            err.contains("may not start with '-'") && err.contains("allow_leading_dash"),
            "{err}"
        );
        let err = one(ParamSpec::new(ParamType::String), json!("--help")).unwrap_err();
        assert!(err.contains("'--help'"), "{err}");
        let mut allowed = ParamSpec::new(ParamType::String);
        allowed.allow_leading_dash = true;
        assert_eq!(one(allowed, json!("--help")).unwrap(), "--help");
        assert_eq!(
            one(ParamSpec::new(ParamType::String), json!("a-b")).unwrap(),
            "a-b"
        );
    }

    #[test]
    fn break_2_numbers_keep_to_their_range_and_a_negative_one_is_no_option() {
        let mut seconds = ParamSpec::new(ParamType::Number);
        seconds.minimum = Some(0.0);
        seconds.maximum = Some(3600.0);
        let err = one(seconds.clone(), json!(-5)).unwrap_err();
        assert!(err.contains("between 0 and 3600, got -5"), "{err}");
        let err = one(seconds.clone(), json!(1e9)).unwrap_err();
        assert!(err.contains("got 1000000000"), "{err}");
        assert_eq!(one(seconds, json!(2.5)).unwrap(), "2.5");
        // Without a range, a negative number would still be read as an option.
        let err = one(ParamSpec::new(ParamType::Integer), json!(-5)).unwrap_err();
        assert!(err.contains("may not start with '-'"), "{err}");
    }

    #[test]
    fn break_2_a_path_is_resolved_inside_the_roots_and_passed_absolute() {
        let (dir, roots) = roots();
        let params = BTreeMap::from([("dir".to_owned(), ParamSpec::new(ParamType::Path))]);
        let resolved = values("t", &params, &json!({ "dir": "src" }), &roots).unwrap();
        let expected = dir.path().canonicalize().unwrap().join("src");
        assert_eq!(resolved["dir"], expected.to_str().unwrap());
        for outside in ["-delete", "..", "/etc", "src/../.."] {
            let err = values("t", &params, &json!({ "dir": outside }), &roots).unwrap_err();
            assert!(err.contains("parameter 'dir'"), "{outside}: {err}");
        }
    }

    #[test]
    fn the_config_s_rules_are_checked_at_load_with_the_default() {
        let (_dir, roots) = roots();
        let mut ranged_string = ParamSpec::new(ParamType::String);
        ranged_string.minimum = Some(1.0);
        let err = ranged_string.check("t", "p", &roots).unwrap_err();
        assert!(err.contains("minimum and maximum are for numbers"), "{err}");
        let mut upside_down = ParamSpec::new(ParamType::Number);
        upside_down.minimum = Some(5.0);
        upside_down.maximum = Some(1.0);
        assert!(upside_down
            .check("t", "p", &roots)
            .unwrap_err()
            .contains("above maximum"));
        let mut bad_default = ParamSpec::new(ParamType::String);
        bad_default.default = Some(json!("-rf"));
        let err = bad_default.check("t", "p", &roots).unwrap_err();
        assert!(err.contains("the default of 'p' is refused"), "{err}");
    }

    #[test]
    fn a_refused_value_is_quoted_short() {
        let long = "x".repeat(10_000);
        let err = one(ParamSpec::new(ParamType::Integer), json!(long)).unwrap_err();
        assert!(err.len() < 200, "{err}");
    }
}
