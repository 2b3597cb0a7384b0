//! Opening an older database: its format version is checked, and a format this
//! version can read is rewritten as its own in one transaction before anything else
//! touches it, so an interrupted upgrade leaves the database as it was.
//!
//! What changed, format by format: format 2 had no feature scales in its models;
//! format 3 kept in each model the risk its bound was last computed for; formats 2 to
//! 4 kept a completed job's result as bare JSON whose shape said whose it was
//! (`{"upstream_result": …}`, `{"text", "structured"}`, or anything else), where
//! format 5 keeps a typed [`JobOutput`]; format 6 added to each model the count of
//! censored runs and the calibration offset of its bound.

use std::path::Path;

use serde_json::Value;

use super::{
    corrupt, open_error, Result, StoreError, Trees, FORMAT_VERSION, KEY_FORMAT_VERSION,
    KEY_POOLED_MODEL,
};
use crate::job::JobOutput;
use crate::stats::ToolRecord;

/// The earlier formats this version reads and rewrites as its own on open.
const MIGRATES_FROM: [u32; 4] = [2, 3, 4, 5];
/// The formats whose models need rewriting: every earlier one.
const MODELS_CHANGED_BEFORE: u32 = FORMAT_VERSION;
/// The formats whose jobs need their result typed.
const JOBS_CHANGED_BEFORE: u32 = 5;

/// `had_data`: the data file existed before this open. sled reads a damaged log as a
/// torn write and opens empty, so an existing database without our version key is
/// reported as corrupt rather than silently started afresh.
pub(super) fn check_version(path: &Path, trees: &Trees, had_data: bool) -> Result<()> {
    let io = |e| open_error(path, e);
    match trees.meta.get(KEY_FORMAT_VERSION).map_err(io)? {
        None if had_data => Err(corrupt(path, "sled found no readable data in its files")),
        None => {
            trees
                .meta
                .insert(KEY_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())
                .map_err(io)?;
            trees.db.flush().map_err(io)?;
            Ok(())
        }
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| corrupt(path, "the format version key is not 4 bytes"))?;
            if found == FORMAT_VERSION {
                Ok(())
            } else if MIGRATES_FROM.contains(&found) {
                migrate(path, trees, found)
            } else {
                Err(StoreError::Version {
                    path: path.to_path_buf(),
                    found,
                    expected: FORMAT_VERSION,
                })
            }
        }
    }
}

/// Rewrites the models and jobs of format `from` in this format and marks the database
/// as this format, in one transaction. It runs at open, before the writer's thread
/// starts.
fn migrate(path: &Path, trees: &Trees, from: u32) -> Result<()> {
    use sled::transaction::{ConflictableTransactionError, TransactionError};
    use sled::Transactional;
    let io = |e| open_error(path, e);
    let migrate_model = |what: String, bytes: &[u8]| -> Result<Vec<u8>> {
        match ToolRecord::from_bytes_of(from, bytes) {
            Some(Ok(record)) => Ok(record.to_bytes()),
            Some(Err(e)) => Err(corrupt(path, &format!("{what} cannot be read: {e}"))),
            None => Err(corrupt(path, &format!("format {from} cannot be migrated"))),
        }
    };
    let mut models = Vec::new();
    let mut pooled = None;
    if from < MODELS_CHANGED_BEFORE {
        for item in trees.models.iter() {
            let (key, value) = item.map_err(io)?;
            let tool = String::from_utf8_lossy(&key).into_owned();
            models.push((
                key,
                migrate_model(format!("the model of tool '{tool}'"), &value)?,
            ));
        }
        if let Some(value) = trees.meta.get(KEY_POOLED_MODEL).map_err(io)? {
            pooled = Some(migrate_model("the pooled model".to_owned(), &value)?);
        }
    }
    let mut jobs = Vec::new();
    for item in trees.jobs.iter().filter(|_| from < JOBS_CHANGED_BEFORE) {
        let (key, value) = item.map_err(io)?;
        let job = typed_result(&value).map_err(|e| {
            let id = uuid::Uuid::from_slice(&key).unwrap_or_default();
            corrupt(path, &format!("job {id} cannot be read: {e}"))
        })?;
        jobs.extend(job.map(|job| (key, job)));
    }
    (&trees.models, &trees.jobs, &trees.meta)
        .transaction(|(models_tx, jobs_tx, meta_tx)| {
            for (key, bytes) in &models {
                models_tx.insert(key, bytes.as_slice())?;
            }
            for (key, bytes) in &jobs {
                jobs_tx.insert(key, bytes.as_slice())?;
            }
            if let Some(bytes) = &pooled {
                meta_tx.insert(KEY_POOLED_MODEL, bytes.as_slice())?;
            }
            meta_tx.insert(KEY_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        })
        .map_err(|e| match e {
            TransactionError::Storage(e) => io(e),
            TransactionError::Abort(()) => corrupt(path, "the upgrade was aborted"),
        })?;
    trees.db.flush().map_err(io)?;
    tracing::info!(
        "the database in {} was upgraded from format {from} to {FORMAT_VERSION}",
        path.display()
    );
    Ok(())
}

/// A job of format 4 or before with its result typed, when it is a completed job (only
/// those carry a result).
fn typed_result(bytes: &[u8]) -> serde_json::Result<Option<Vec<u8>>> {
    let mut job: Value = serde_json::from_slice(bytes)?;
    let Some(fields) = job.as_object_mut() else {
        return Ok(None);
    };
    if fields.get("status").and_then(Value::as_str) != Some("completed") {
        return Ok(None);
    }
    let result = fields.remove("result").unwrap_or(Value::Null);
    let typed = serde_json::to_value(JobOutput::from_untyped(result))?;
    fields.insert("result".to_owned(), typed);
    serde_json::to_vec(&job).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;
    use crate::job::JobState;
    use crate::store::Store;
    use serde_json::json;

    #[test]
    fn a_format_2_database_is_upgraded_on_open_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        // Without recency, so without the spread model format 2 had no room for.
        let mut record = ToolRecord::new(false);
        for kb in 1..=20 {
            let features = Features::from_args(&json!({ "kb": kb * 100 }));
            record.model.observe(&features, 0.01 * f64::from(kb));
        }
        record.counters.promotions = 3;
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let store = store.trees().unwrap();
            let counters = postcard::to_stdvec(&record.counters).unwrap();
            let v2 = [crate::predictor::v2_bytes(&record.model), counters].concat();
            store.models.insert("t", v2.clone()).unwrap();
            store.meta.insert(KEY_POOLED_MODEL, v2).unwrap();
            store
                .meta
                .insert(KEY_FORMAT_VERSION, &2u32.to_be_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (tools, pooled) = store.load_records().unwrap();
        assert_eq!(tools, vec![("t".to_owned(), record.clone())]);
        assert_eq!(pooled, Some(record));
        let version = store
            .trees()
            .unwrap()
            .meta
            .get(KEY_FORMAT_VERSION)
            .unwrap()
            .unwrap();
        assert_eq!(version.as_ref(), FORMAT_VERSION.to_be_bytes());
    }

    /// Issue 16: a proxied result was kept under a magic key, `upstream_result`, that
    /// the MCP face looked for; format 5 types it, and a format-4 job reads back as the
    /// whole result it was.
    #[test]
    fn a_format_4_database_reads_its_proxied_jobs_result_whole() {
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4();
        let result =
            json!({"content": [{"type": "text", "text": "done"}], "structuredContent": {"n": 1}});
        let job = json!({
            "id": id, "tool": "build", "label": "build", "status": "completed",
            "result": {"upstream_result": result},
            "created_at_ms": 1, "started_at_ms": 2, "finished_at_ms": 3, "promoted": false,
            "decision": {"mode": "background", "source": "explicit", "budget_s": 1.0,
                "risk": 0.05, "predicted_s": null, "upper_bound_s": null, "rule": null,
                "reason": "explicit: the call asked for async_mode=true"},
        });
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let trees = store.trees().unwrap();
            let bytes = serde_json::to_vec(&job).unwrap();
            trees.jobs.insert(id.as_bytes(), bytes).unwrap();
            trees
                .meta
                .insert(KEY_FORMAT_VERSION, &4u32.to_be_bytes())
                .unwrap();
            trees.db.flush().unwrap();
        }
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let read = store.job(id).unwrap().unwrap();
        assert_eq!(
            read.state,
            JobState::Completed {
                result: JobOutput::CallResult { result }
            }
        );
        assert_eq!(read.tool, "build");
    }

    #[test]
    fn a_completed_jobs_result_is_typed_by_the_shape_its_release_wrote() {
        let cases = [
            (
                json!({"upstream_result": {"content": [{"type": "text", "text": "ok"}]}}),
                json!({"kind": "call_result", "result": {"content": [{"type": "text", "text": "ok"}]}}),
            ),
            (
                json!({"text": "hashed", "structured": {"files": 2}}),
                json!({"kind": "tool", "text": "hashed", "structured": {"files": 2}}),
            ),
            (json!(2), json!({"kind": "value", "value": 2})),
            // Not a tool's shape: a third key makes it the engine caller's own value.
            (
                json!({"text": "t", "structured": 1, "more": true}),
                json!({"kind": "value", "value": {"text": "t", "structured": 1, "more": true}}),
            ),
        ];
        for (stored, typed) in cases {
            let job = json!({"status": "completed", "result": stored, "tool": "t"});
            let rewritten = typed_result(&serde_json::to_vec(&job).unwrap())
                .unwrap()
                .unwrap();
            let rewritten: Value = serde_json::from_slice(&rewritten).unwrap();
            assert_eq!(rewritten["result"], typed);
            assert_eq!(rewritten["tool"], "t", "the rest of the job is kept");
        }
    }

    #[test]
    fn jobs_without_a_result_are_left_as_they_are() {
        for job in [
            json!({"status": "failed", "error": "boom"}),
            json!({"status": "cancelled"}),
        ] {
            assert_eq!(
                typed_result(&serde_json::to_vec(&job).unwrap()).unwrap(),
                None
            );
        }
        assert!(typed_result(b"not json").is_err());
    }
}
