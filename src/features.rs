//! Turns a call's JSON arguments into named numbers, with no configuration.
//!
//! This module owns the rule that maps arguments to features (the predictor's inputs)
//! and the hook through which a tool adds its own. It is pure: no clock, disk or async.
//!
//! The rule, applied to every argument:
//! - a number is taken as it is (non-finite values are skipped);
//! - a boolean is `0` or `1`;
//! - a string is its length in chars;
//! - an array is its length (its elements are not looked into);
//! - an object is flattened, its members named with dots (`opts.depth`), down to
//!   [`MAX_DEPTH`] levels;
//! - `null` and the control argument [`ASYNC_MODE_ARG`] are not features.
//!
//! Arguments that are not an object are one feature named `$`. Features are sorted by
//! name, and a call keeps at most [`MAX_FEATURES_PER_CALL`] of them: the first ones in
//! name order. Names longer than [`MAX_NAME_CHARS`] chars are cut.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The argument that asks for background execution; it steers the policy and is
/// never a feature.
pub const ASYNC_MODE_ARG: &str = "async_mode";
/// How many features one call keeps, in name order. Sixteen is more than any real tool
/// signature we have seen needs, and keeps a model's matrix at most 17×17.
pub const MAX_FEATURES_PER_CALL: usize = 16;
/// How deep nested objects are flattened; deeper members are left out.
pub const MAX_DEPTH: usize = 4;
/// Feature names are cut to this many chars, so a hostile key cannot bloat a model.
pub const MAX_NAME_CHARS: usize = 64;
/// Strings longer than this many bytes are measured in bytes, not chars: counting
/// chars in a 10 MB string would be pure cost for a number that only enters as a log.
pub const MAX_CHAR_COUNT_BYTES: usize = 1 << 20;
/// The name of the single feature made from arguments that are not an object.
pub const ROOT_NAME: &str = "$";

/// What kind of argument a feature came from; the static table matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A JSON number.
    Number,
    /// A JSON boolean, as 0 or 1.
    Bool,
    /// The length of a JSON string.
    StringChars,
    /// The length of a JSON array.
    ArrayLen,
    /// Added by a tool's own [`FeatureExtractor`].
    Custom,
}

/// One named number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// Dotted path of the argument (`opts.depth`), or a name a tool chose.
    pub name: String,
    /// The value, always finite.
    pub value: f64,
    /// Where the value came from.
    pub kind: FeatureKind,
}

/// The features of one call, sorted by name, names unique, values finite.
///
/// ```
/// use smart_async::Features;
/// let features = Features::from_args(&serde_json::json!({
///     "path": "src", "opts": {"depth": 3, "follow": true}, "async_mode": true
/// }));
/// let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
/// assert_eq!(names, ["opts.depth", "opts.follow", "path"]);
/// assert_eq!(features.get("path"), Some(3.0));
/// ```
///
/// Cloning one is a reference count: a run's features go to its sample and to the
/// pooled model's pending runs, and are changed only while they are made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    items: Arc<Vec<Feature>>,
}

/// A tool's own source of features, for what the arguments alone do not show (the
/// bytes under a path argument, the rows in a table). It may do I/O; the engine calls
/// it off the async threads. It should be cheap: it runs before every call.
pub trait FeatureExtractor: Send + Sync {
    /// Adds features for `args` to `features` (use [`Features::insert`]).
    fn extract(&self, args: &Value, features: &mut Features);
}

impl Features {
    /// Extracts features from a call's arguments by the rule in the module docs.
    pub fn from_args(args: &Value) -> Features {
        // One feature per member is usual (nested objects give more, and grow it).
        let members = args.as_object().map_or(1, serde_json::Map::len);
        let mut items = Vec::with_capacity(members.min(MAX_FEATURES_PER_CALL));
        match args {
            Value::Object(map) => {
                for (key, value) in map {
                    if key != ASYNC_MODE_ARG {
                        flatten(key, value, 1, &mut items);
                    }
                }
            }
            other => flatten(ROOT_NAME, other, 1, &mut items),
        }
        normalise(&mut items);
        Features {
            items: Arc::new(items),
        }
    }

    /// Adds or replaces a feature; a non-finite value is ignored. Keeps the order and the
    /// cap, so an extractor's feature may push out a later-named argument feature.
    pub fn insert(&mut self, name: &str, value: f64, kind: FeatureKind) {
        if !value.is_finite() {
            return;
        }
        let name = cut_name(name);
        let items = Arc::make_mut(&mut self.items);
        match items.binary_search_by(|f| f.name.as_str().cmp(&name)) {
            Ok(at) => {
                items[at].value = value;
                items[at].kind = kind;
            }
            Err(at) => {
                items.insert(at, Feature { name, value, kind });
                items.truncate(MAX_FEATURES_PER_CALL);
            }
        }
    }

    /// The value of a feature by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.items
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .ok()
            .map(|at| self.items[at].value)
    }

    /// The features in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Feature> {
        self.items.iter()
    }

    /// How many features there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn normalise(items: &mut Vec<Feature>) {
    items.sort_by(|a, b| a.name.cmp(&b.name));
    // Cut names can collide; the first in order wins.
    items.dedup_by(|later, earlier| later.name == earlier.name);
    items.truncate(MAX_FEATURES_PER_CALL);
}

fn cut_name(name: &str) -> String {
    if name.len() <= MAX_NAME_CHARS {
        return name.to_owned();
    }
    match name.char_indices().nth(MAX_NAME_CHARS) {
        Some((at, _)) => name[..at].to_owned(),
        None => name.to_owned(),
    }
}

fn flatten(name: &str, value: &Value, depth: usize, out: &mut Vec<Feature>) {
    let (value, kind) = match value {
        Value::Null => return,
        Value::Bool(b) => (f64::from(u8::from(*b)), FeatureKind::Bool),
        Value::Number(n) => match n.as_f64() {
            Some(v) if v.is_finite() => (v, FeatureKind::Number),
            _ => return,
        },
        Value::String(s) => (string_len(s) as f64, FeatureKind::StringChars),
        Value::Array(items) => (items.len() as f64, FeatureKind::ArrayLen),
        Value::Object(map) => {
            if depth < MAX_DEPTH {
                for (key, member) in map {
                    flatten(&format!("{name}.{key}"), member, depth + 1, out);
                }
            }
            return;
        }
    };
    out.push(Feature {
        name: cut_name(name),
        value,
        kind,
    });
}

fn string_len(s: &str) -> usize {
    if s.len() > MAX_CHAR_COUNT_BYTES {
        s.len()
    } else {
        s.chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn follows_the_rule_for_every_json_type() {
        let f = Features::from_args(&json!({
            "n": -2.5, "flag": false, "s": "héllo", "list": [1, 2, 3],
            "nested": {"a": {"b": 7}}, "none": null
        }));
        assert_eq!(f.get("n"), Some(-2.5));
        assert_eq!(f.get("flag"), Some(0.0));
        assert_eq!(f.get("s"), Some(5.0), "length in chars, not bytes");
        assert_eq!(f.get("list"), Some(3.0));
        assert_eq!(f.get("nested.a.b"), Some(7.0));
        assert_eq!(f.get("none"), None);
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn async_mode_is_not_a_feature() {
        let f = Features::from_args(&json!({"async_mode": true, "x": 1}));
        assert_eq!(f.get(ASYNC_MODE_ARG), None);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn non_object_arguments_become_one_root_feature() {
        assert_eq!(
            Features::from_args(&json!([1, 2])).get(ROOT_NAME),
            Some(2.0)
        );
        assert_eq!(Features::from_args(&json!(4)).get(ROOT_NAME), Some(4.0));
        assert!(Features::from_args(&Value::Null).is_empty());
    }

    #[test]
    fn keeps_the_first_features_in_name_order_up_to_the_cap() {
        let args: serde_json::Map<String, Value> =
            (0..40).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let f = Features::from_args(&Value::Object(args));
        assert_eq!(f.len(), MAX_FEATURES_PER_CALL);
        assert_eq!(f.iter().last().map(|x| x.name.as_str()), Some("k15"));
    }

    #[test]
    fn deep_objects_stop_at_the_depth_limit() {
        let f = Features::from_args(&json!({"a": {"b": {"c": {"d": {"e": 1}}}, "x": 2}}));
        assert_eq!(f.get("a.x"), Some(2.0));
        assert!(f.iter().all(|x| x.name.matches('.').count() < MAX_DEPTH));
    }

    #[test]
    fn huge_strings_are_measured_without_stalling() {
        let big = "é".repeat(5 * 1024 * 1024); // 10 MB of UTF-8
        let f = Features::from_args(&json!({ "text": big }));
        assert_eq!(f.get("text"), Some((10 * 1024 * 1024) as f64));
    }

    #[test]
    fn long_names_are_cut_and_collisions_resolved() {
        let long_a = format!("{}a", "x".repeat(MAX_NAME_CHARS));
        let long_b = format!("{}b", "x".repeat(MAX_NAME_CHARS));
        let f = Features::from_args(&json!({ long_a: 1, long_b: 2 }));
        assert_eq!(f.len(), 1);
        assert_eq!(
            f.iter().next().map(|x| x.name.chars().count()),
            Some(MAX_NAME_CHARS)
        );
    }

    #[test]
    fn insert_keeps_order_replaces_and_ignores_non_finite() {
        let mut f = Features::from_args(&json!({"b": 1, "d": 2}));
        f.insert("c", 3.0, FeatureKind::Custom);
        f.insert("b", 9.0, FeatureKind::Custom);
        f.insert("e", f64::NAN, FeatureKind::Custom);
        let names: Vec<_> = f.iter().map(|x| x.name.clone()).collect();
        assert_eq!(names, ["b", "c", "d"]);
        assert_eq!(f.get("b"), Some(9.0));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|x| json!(x)),
            any::<i64>().prop_map(|x| json!(x)),
            any::<u64>().prop_map(|x| json!(x)),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(8, 256, 10, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..10).prop_map(Value::Array),
                prop::collection::btree_map(".{0,80}", inner, 0..10)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn extraction_never_panics_and_keeps_its_invariants(args in arbitrary_json()) {
            let f = Features::from_args(&args);
            prop_assert!(f.len() <= MAX_FEATURES_PER_CALL);
            prop_assert!(f.iter().all(|x| x.value.is_finite()));
            prop_assert!(f.iter().all(|x| x.name.chars().count() <= MAX_NAME_CHARS));
            let names: Vec<_> = f.iter().map(|x| &x.name).collect();
            prop_assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
            prop_assert_eq!(Features::from_args(&args), f, "deterministic");
        }
    }
}
