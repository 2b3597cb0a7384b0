//! The sled database: the only module that touches it.
//!
//! Layout, declared once here: tree `samples` (key `tool \0 write-id:u64be`, value the
//! postcard list of that tool's [`Sample`]s from one write), tree `models` (key tool name, value a postcard [`ToolRecord`]), tree
//! `jobs` (key the job's 16 uuid bytes, value the [`Job`] as JSON, since results are
//! arbitrary JSON), tree `clients` (key the client's name, value a postcard
//! [`ClientRecord`]) and tree `meta` (the format version and the pooled model).
//!
//! Opening says plainly what went wrong and what to do: another process holds the
//! database, the directory cannot be written, the data is corrupt, or it was written by
//! an incompatible version.

mod migrate;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clients::ClientRecord;
use crate::features::Features;
use crate::job::Job;
use crate::stats::{Outcome, ToolRecord};
pub use writer::PendingWrite;
use writer::Writer;

/// Bumped when the layout or an encoding changes incompatibly; an earlier format is
/// migrated on open.
pub const FORMAT_VERSION: u32 = 6;
/// sled's page cache; its own default is 1 GiB, far more than a few models and jobs need.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const TREE_SAMPLES: &str = "samples";
const TREE_MODELS: &str = "models";
const TREE_JOBS: &str = "jobs";
const TREE_META: &str = "meta";
const TREE_CLIENTS: &str = "clients";
const KEY_FORMAT_VERSION: &[u8] = b"format_version";
const KEY_POOLED_MODEL: &[u8] = b"pooled_model";

/// One finished run, as stored and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The tool.
    pub tool: Arc<str>,
    /// The call's features (arguments are not kept: they may be large or private).
    pub features: Features,
    /// How long the run took.
    pub runtime_s: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// When it ended, in ms since the Unix epoch.
    pub finished_at_ms: u64,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process has the database open.
    #[error("the database in {path} is in use by another process (a running smart-async server?): stop that process, or pass a different --data-dir")]
    InUse {
        /// The data directory.
        path: PathBuf,
    },
    /// The directory cannot be created or written.
    #[error("cannot write the database directory {path}: {source}; choose a writable --data-dir or fix its permissions")]
    Unwritable {
        /// The data directory.
        path: PathBuf,
        /// The error from the file system.
        source: std::io::Error,
    },
    /// The files are damaged.
    #[error("the database in {path} is corrupt ({detail}): move the directory aside (smart-async then starts fresh, losing what it learned) or restore it from a backup")]
    Corrupt {
        /// The data directory.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Written by a version with another layout.
    #[error("the database in {path} has format version {found}, this smart-async reads version {expected}: use the matching smart-async version, or move the directory aside to start fresh")]
    Version {
        /// The data directory.
        path: PathBuf,
        /// The version on disk.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A write failed a moment ago and the database is being opened again.
    #[error(
        "the database in {path} is being opened again after a failed write: try again in a second"
    )]
    Reopening {
        /// The data directory.
        path: PathBuf,
    },
    /// The thread that writes to the database is gone (it only ends with the store).
    #[error(
        "the database in {path} no longer takes writes: its writer stopped; restart smart-async"
    )]
    Stopped {
        /// The data directory.
        path: PathBuf,
    },
    /// A value could not be encoded for the disk: nothing was written, and the
    /// database is whole. A bug in smart-async, never the user's data.
    #[error("cannot store {what}: it could not be encoded ({detail}); nothing was written and the database is unharmed: this is a bug in smart-async, please report it")]
    Unencodable {
        /// What was being stored.
        what: &'static str,
        /// The encoder's error.
        detail: String,
    },
    /// Any other I/O failure.
    #[error("database I/O failed in {path}: {source}")]
    Io {
        /// The data directory.
        path: PathBuf,
        /// The error from sled.
        source: sled::Error,
    },
}

/// The open database. Clones share it; reads go to sled directly, writes through the
/// one writer thread (module `writer`), each answered once it is on disk.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
}

/// What the writer's thread and the readers share: the open database, swapped for a
/// fresh handle after a failed write.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    cache_bytes: u64,
    trees: RwLock<Option<Arc<Trees>>>,
}

/// The database and its trees, as one handle opened them.
#[derive(Debug)]
struct Trees {
    db: sled::Db,
    samples: sled::Tree,
    models: sled::Tree,
    jobs: sled::Tree,
    meta: sled::Tree,
    clients: sled::Tree,
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Every tool's record by name, and the pooled record if one was saved.
pub type Records = (Vec<(String, ToolRecord)>, Option<ToolRecord>);

impl Trees {
    /// Opens the database in `path`, the lock of a handle let go a moment ago waited for.
    fn open(path: &Path, cache_bytes: u64) -> Result<Trees> {
        // sled's own flusher would flush beside the writer's thread: see [`writer`].
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None);
        // sled can panic on some damaged files instead of returning an error.
        let open = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        let mut opened = open();
        // sled lets go of its file lock from a background thread after the last handle
        // is dropped: a database this process has just closed can look in use for a
        // moment.
        for _ in 0..LOCK_RETRIES {
            match &opened {
                Ok(Err(e)) if is_lock_error(e) => {
                    std::thread::sleep(LOCK_RETRY_PAUSE);
                    opened = open();
                }
                _ => break,
            }
        }
        let opened = opened.map_err(|panic| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: crate::run_error::panic_message(&*panic),
        })?;
        let db = opened.map_err(|e| open_error(path, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(path, e));
        Ok(Trees {
            samples: tree(TREE_SAMPLES)?,
            models: tree(TREE_MODELS)?,
            jobs: tree(TREE_JOBS)?,
            meta: tree(TREE_META)?,
            clients: tree(TREE_CLIENTS)?,
            db,
        })
    }
}

impl Shared {
    /// The open database, `None` only while the writer opens it again.
    fn current(&self) -> Option<Arc<Trees>> {
        self.trees
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Closes the database and opens it again: sled keeps a write's I/O error for
    /// good, a new handle starts afresh from what is on disk.
    fn reopen(&self) -> Result<()> {
        let mut slot = self
            .trees
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The old handle goes first: the file lock is the process's until then.
        drop(slot.take());
        *slot = Some(Arc::new(Trees::open(&self.path, self.cache_bytes)?));
        tracing::debug!("the database in {} was opened again", self.path.display());
        Ok(())
    }
}

impl Store {
    /// Opens or creates the database in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let path = dir.to_path_buf();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Unwritable {
            path: path.clone(),
            source,
        })?;
        let had_data = std::fs::metadata(dir.join("db")).is_ok_and(|m| m.len() > 0);
        let trees = Trees::open(dir, cache_bytes)?;
        migrate::check_version(&path, &trees, had_data)?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            cache_bytes,
            trees: RwLock::new(Some(Arc::new(trees))),
        });
        let writer = Writer::start(shared.clone())
            .map_err(|source| StoreError::Unwritable { path, source })?;
        Ok(Store {
            shared,
            writer: Arc::new(writer),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The open database, for a read.
    fn trees(&self) -> Result<Arc<Trees>> {
        self.shared.current().ok_or_else(|| StoreError::Reopening {
            path: self.shared.path.clone(),
        })
    }

    /// Queues `apply` for the writer's thread, answered once it is on disk.
    fn write(
        &self,
        apply: impl FnOnce(&Trees) -> sled::Result<()> + Send + 'static,
    ) -> PendingWrite {
        self.writer.queue(&self.shared, Some(Box::new(apply)), true)
    }

    /// A write refused before it was queued.
    fn refused(&self, error: StoreError) -> PendingWrite {
        PendingWrite::failed(&self.shared.path, error)
    }

    /// Appends samples: one value per tool holding that tool's samples in order, so a
    /// second of calls costs a few inserts, not one per call.
    pub fn append_samples(&self, samples: &[Sample]) -> PendingWrite {
        fail::fail_point!("store::append_samples", |_| self.refused(self.injected()));
        let mut by_tool: Vec<(&str, Vec<&Sample>)> = Vec::new();
        for sample in samples {
            match by_tool.iter_mut().find(|(tool, _)| **tool == *sample.tool) {
                Some((_, group)) => group.push(sample),
                None => by_tool.push((&sample.tool, vec![sample])),
            }
        }
        let mut groups = Vec::with_capacity(by_tool.len());
        for (tool, group) in by_tool {
            match postcard::to_stdvec(&group) {
                Ok(value) => groups.push((sample_prefix(tool), value)),
                Err(e) => return self.refused(unencodable("samples", e)),
            }
        }
        self.write(move |trees| {
            let id = trees.db.generate_id()?;
            let mut batch = sled::Batch::default();
            for (mut key, value) in groups {
                key.extend_from_slice(&id.to_be_bytes());
                batch.insert(key, value);
            }
            trees.samples.apply_batch(batch)
        })
    }

    /// Samples of one tool or all, in the order they were written (within one write,
    /// grouped by tool). A sample that cannot be read ends the iteration with an error.
    pub fn samples(&self, tool: Option<&str>) -> impl Iterator<Item = Result<Sample>> + '_ {
        let mut groups = Vec::new();
        let mut failure = None;
        match self.sample_groups(tool) {
            Ok(stored) => {
                for item in stored {
                    match item {
                        Ok((id, _, group)) => groups.push((id, group)),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
            Err(e) => failure = Some(e),
        }
        // Keys sort by tool first; ids give the order of writing across tools.
        groups.sort_by_key(|(id, _)| *id);
        groups
            .into_iter()
            .flat_map(|(_, group)| group.into_iter().map(Ok))
            .chain(failure.map(Err))
    }

    /// Drops the oldest writes of `tool`'s samples while at least `keep` samples stay;
    /// returns how many samples went.
    pub async fn prune_samples(&self, tool: &str, keep: usize) -> Result<usize> {
        let groups: Vec<(u64, sled::IVec, usize)> = self
            .sample_groups(Some(tool))?
            .map(|item| item.map(|(id, key, group)| (id, key, group.len())))
            .collect::<Result<_>>()?;
        let mut total: usize = groups.iter().map(|(_, _, n)| n).sum();
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for (_, key, n) in &groups {
            if total - n < keep {
                break;
            }
            batch.remove(key);
            total -= n;
            removed += n;
        }
        if removed > 0 {
            self.write(move |trees| trees.samples.apply_batch(batch))
                .await?;
        }
        Ok(removed)
    }

    /// The stored groups of samples: write id, key and the samples.
    fn sample_groups(
        &self,
        tool: Option<&str>,
    ) -> Result<impl Iterator<Item = Result<(u64, sled::IVec, Vec<Sample>)>> + '_> {
        let trees = self.trees()?;
        let iter = match tool {
            Some(tool) => trees.samples.scan_prefix(sample_prefix(tool)),
            None => trees.samples.iter(),
        };
        Ok(iter.map(move |item| {
            let (key, value) = item.map_err(|e| self.io(e))?;
            let group: Vec<Sample> = postcard::from_bytes(&value)
                .map_err(|e| self.corrupt(&format!("samples cannot be read: {e}")))?;
            Ok((sample_id(&key), key, group))
        }))
    }

    /// Saves a tool's record, or the pooled one when `tool` is `None`.
    pub fn save_record(&self, tool: Option<&str>, record: &ToolRecord) -> PendingWrite {
        fail::fail_point!("store::save_record", |_| self.refused(self.injected()));
        let bytes = record.to_bytes();
        let tool = tool.map(|tool| tool.as_bytes().to_vec());
        self.write(move |trees| {
            match tool {
                Some(tool) => trees.models.insert(tool, bytes),
                None => trees.meta.insert(KEY_POOLED_MODEL, bytes),
            }
            .map(drop)
        })
    }

    /// All tools' records, and the pooled one if any.
    pub fn load_records(&self) -> Result<Records> {
        let trees = self.trees()?;
        let mut tools = Vec::new();
        for item in trees.models.iter() {
            let (key, value) = item.map_err(|e| self.io(e))?;
            let tool = String::from_utf8_lossy(&key).into_owned();
            let record = ToolRecord::from_bytes(&value).map_err(|e| {
                self.corrupt(&format!("the model of tool '{tool}' cannot be read: {e}"))
            })?;
            tools.push((tool, record));
        }
        let pooled = match trees.meta.get(KEY_POOLED_MODEL).map_err(|e| self.io(e))? {
            Some(bytes) => Some(
                ToolRecord::from_bytes(&bytes)
                    .map_err(|e| self.corrupt(&format!("the pooled model cannot be read: {e}")))?,
            ),
            None => None,
        };
        Ok((tools, pooled))
    }

    /// Saves what was learned about a client.
    pub fn save_client(&self, name: &str, record: &ClientRecord) -> PendingWrite {
        fail::fail_point!("store::save_client", |_| self.refused(self.injected()));
        let bytes = match postcard::to_allocvec(record) {
            Ok(bytes) => bytes,
            Err(e) => return self.refused(unencodable("a client's record", e)),
        };
        let key = name.as_bytes().to_vec();
        self.write(move |trees| trees.clients.insert(key, bytes).map(drop))
    }

    /// What was learned about every client, by name.
    pub fn load_clients(&self) -> Result<Vec<(String, ClientRecord)>> {
        self.trees()?
            .clients
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(|e| self.io(e))?;
                let name = String::from_utf8_lossy(&key).into_owned();
                let record = postcard::from_bytes(&value).map_err(|e| {
                    self.corrupt(&format!(
                        "the record of client '{name}' cannot be read: {e}"
                    ))
                })?;
                Ok((name, record))
            })
            .collect()
    }

    /// Writes a job (see [`Store::put_jobs`]).
    pub fn put_job(&self, job: &Job) -> PendingWrite {
        self.put_jobs(std::slice::from_ref(job))
    }

    /// Writes a job without waiting for the disk: it goes there with the next durable
    /// write (a state a crash may lose without harm, such as `running`: the job then
    /// reads as interrupted either way).
    pub fn put_job_lazily(&self, job: &Job) -> PendingWrite {
        self.queue_jobs(std::slice::from_ref(job), false)
    }

    /// Writes jobs, queued at once behind the writes queued before; resolves once they
    /// are on disk.
    pub fn put_jobs(&self, jobs: &[Job]) -> PendingWrite {
        self.queue_jobs(jobs, true)
    }

    fn queue_jobs(&self, jobs: &[Job], durable: bool) -> PendingWrite {
        fail::fail_point!("store::put_job", |_| self.refused(self.injected()));
        let mut values = Vec::with_capacity(jobs.len());
        for job in jobs {
            match serde_json::to_vec(job) {
                Ok(value) => values.push((*job.id.as_bytes(), value)),
                Err(e) => return self.refused(unencodable("a job", e)),
            }
        }
        // Plain inserts: the writer flushes them together, and a sled batch costs a
        // lock of the whole database and a manifest in the log besides.
        let apply = move |trees: &Trees| {
            for (key, value) in values {
                trees.jobs.insert(key, value)?;
            }
            Ok(())
        };
        self.writer
            .queue(&self.shared, Some(Box::new(apply)), durable)
    }

    /// Reads one job.
    pub fn job(&self, id: Uuid) -> Result<Option<Job>> {
        match self
            .trees()?
            .jobs
            .get(id.as_bytes())
            .map_err(|e| self.io(e))?
        {
            Some(bytes) => self.decode_job(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// All jobs, in key order.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.trees()?
            .jobs
            .iter()
            .values()
            .map(|value| self.decode_job(&value.map_err(|e| self.io(e))?))
            .collect()
    }

    /// Deletes jobs.
    pub fn remove_jobs(&self, ids: &[Uuid]) -> PendingWrite {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(id.as_bytes());
        }
        self.write(move |trees| trees.jobs.apply_batch(batch))
    }

    /// Resolves once everything queued before is on disk.
    pub fn flush(&self) -> PendingWrite {
        self.writer.queue(&self.shared, None, true)
    }

    fn decode_job(&self, bytes: &[u8]) -> Result<Job> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(&format!("a job cannot be read: {e}")))
    }

    fn io(&self, source: sled::Error) -> StoreError {
        open_error(&self.shared.path, source)
    }

    /// The failure a test injects where the disk would fail (the `failpoints` feature).
    #[cfg(feature = "failpoints")]
    fn injected(&self) -> StoreError {
        self.io(sled::Error::Io(std::io::Error::other(
            "injected by a failpoint",
        )))
    }

    fn corrupt(&self, detail: &str) -> StoreError {
        corrupt(&self.shared.path, detail)
    }
}

fn unencodable(what: &'static str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unencodable {
        what,
        detail: error.to_string(),
    }
}

fn corrupt(path: &Path, detail: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_owned(),
    }
}

/// How often, and how far apart, opening a database that is in use is tried again
/// before it is reported (see [`Store::open`]).
const LOCK_RETRIES: usize = 20;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether sled could not open the database because another handle holds it.
fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn open_error(path: &Path, error: sled::Error) -> StoreError {
    let path = path.to_path_buf();
    match error {
        error if is_lock_error(&error) => StoreError::InUse { path },
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            StoreError::Unwritable { path, source: io }
        }
        // Garbage in sled's config file reads as an unsupported old version.
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => StoreError::Corrupt {
            path,
            detail: error.to_string(),
        },
        other => StoreError::Io {
            path,
            source: other,
        },
    }
}

fn sample_prefix(tool: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tool.len() + 1);
    key.extend_from_slice(tool.as_bytes());
    key.push(0);
    key
}

fn sample_id(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
        .map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Issue 15: a value that could not be encoded was reported as a corrupt database,
    /// whose message tells the user to move it aside and lose what was learned.
    #[test]
    fn an_encoding_failure_is_not_called_corruption() {
        let error = unencodable("a job", "a map key must be a string");
        assert!(matches!(
            error,
            StoreError::Unencodable { what: "a job", .. }
        ));
        let said = error.to_string();
        assert!(
            said.contains("unharmed") && said.contains("a map key must be a string"),
            "{said}"
        );
        assert!(
            !said.contains("corrupt") && !said.contains("move the directory"),
            "{said}"
        );
    }

    #[test]
    fn a_model_whose_parts_disagree_in_size_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut record = ToolRecord::new(true);
        record
            .model
            .observe(&Features::from_args(&json!({ "n": 3 })), 1.0);
        // Format-2 bytes read as this format: the sizes do not line up.
        let counters = postcard::to_stdvec(&record.counters).unwrap();
        let v2 = [crate::predictor::v2_bytes(&record.model), counters].concat();
        store.trees().unwrap().models.insert("t", v2).unwrap();
        let err = store.load_records().unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("tool 't'"), "{err}");
    }
}
