//! Background jobs: their lifecycle, and the live handles that let a job be waited on
//! and cancelled (the record they keep is [`crate::job`]).
//!
//! A [`Job`] is durable in the store before its handle is handed out, and its result
//! is durable before anyone is told it completed (a state the store refuses is read
//! from memory and written again until it is stored). The live part
//! (cancellation token, status channel, abort handles) exists only while the job runs
//! in this process; jobs found pending or running when the store is opened were cut
//! off by a restart and are marked failed. Finished jobs are kept for a retention age
//! and up to a count.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use crate::job::{Job, JobOutput, JobState, JobStatus, Progress};
use crate::lock::lock;
use crate::principal::Principal;
use crate::run_error::RunError;
use crate::store::{Store, StoreError};

mod context;
mod listing;
mod queued;
mod run;

pub use context::JobContext;
pub(crate) use context::RunSignals;
use listing::Listed;
use queued::Queued;
pub(crate) use run::{JobWork, OnEnd};

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this tool.
    pub tool: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
    /// Only jobs of this principal.
    pub owner: Option<Principal>,
}

/// Job errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// No job has this id (it never existed or was removed by retention).
    #[error("no job with id {0}: list_jobs shows the known ones (finished jobs are kept for a limited time)")]
    NotFound(Uuid),
    /// The job has already ended.
    #[error("job {id} has already ended ({}): there is nothing to cancel", status.name())]
    Finished {
        /// The job.
        id: Uuid,
        /// How it ended.
        status: JobStatus,
    },
    /// The caller has as many background jobs running and pending as one may.
    #[error("{owner} has {limit} background jobs running or waiting, the most one caller may have (max_jobs_per_principal): wait for one to end, or cancel one (list_jobs, cancel_job)")]
    TooManyActive {
        /// Whose jobs.
        owner: Principal,
        /// The limit.
        limit: usize,
    },
    /// The caller has started as many background jobs this minute as one may.
    #[error("{owner} has started {limit} background jobs within a minute, the most one caller may (max_job_starts_per_minute): retry in {retry_s} s")]
    TooManyStarts {
        /// Whose jobs.
        owner: Principal,
        /// The limit.
        limit: u32,
        /// Seconds until the oldest start leaves the minute.
        retry_s: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Retention and concurrency settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobSettings {
    /// How long finished jobs are kept.
    pub retention: Duration,
    /// How many finished jobs are kept at most.
    pub max_finished: usize,
    /// How many jobs started in the background run at once; the rest wait as pending.
    /// A call promoted from inline is already running and is never held back by this
    /// limit: it holds a slot if one is free, so jobs started after it wait for it.
    pub max_running: usize,
    /// How long cancelled work may take to stop before it is aborted.
    pub cancel_grace: Duration,
    /// How many background jobs one authenticated principal may have running and
    /// pending at once; a start past it is refused (a promoted call is never refused,
    /// it runs already). The per-principal limits leave the local user alone: over
    /// stdio, HTTP without authentication and the library it is the only caller.
    pub max_active_per_principal: usize,
    /// How many finished jobs are kept at most per authenticated principal.
    pub max_finished_per_principal: usize,
    /// How many background jobs one authenticated principal may start in a minute.
    pub max_starts_per_minute: u32,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            retention: Duration::from_secs(24 * 3600),
            max_finished: 1000,
            max_running: 4,
            cancel_grace: Duration::from_secs(5),
            max_active_per_principal: DEFAULT_MAX_ACTIVE_PER_PRINCIPAL,
            max_finished_per_principal: DEFAULT_MAX_FINISHED_PER_PRINCIPAL,
            max_starts_per_minute: DEFAULT_MAX_STARTS_PER_MINUTE,
        }
    }
}

/// Background jobs one principal may have running and pending at once, by default.
pub const DEFAULT_MAX_ACTIVE_PER_PRINCIPAL: usize = 100;
/// Finished jobs kept per principal, by default.
pub const DEFAULT_MAX_FINISHED_PER_PRINCIPAL: usize = 500;
/// Background jobs one principal may start per minute, by default.
pub const DEFAULT_MAX_STARTS_PER_MINUTE: u32 = 120;

/// A job while it runs in this process.
struct Live {
    signals: RunSignals,
    status: watch::Sender<JobStatus>,
    /// The task that runs the work and finishes the job (see [`run`]).
    task: JoinHandle<()>,
}

/// How long closing waits for aborted jobs' work to be dropped.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

/// The job table: the store for records, the live map for running jobs. Cheap to
/// clone; clones share everything (a job's task holds one).
#[derive(Clone)]
pub(crate) struct Jobs {
    store: Store,
    live: Arc<Mutex<HashMap<Uuid, Live>>>,
    /// Job states as they are queued for the store. Writes of job states are queued
    /// while this is locked, so the listing is the table at one moment and the store's
    /// one writer applies the states in the order they were listed.
    queued: Arc<Mutex<Queued>>,
    permits: Arc<Semaphore>,
    /// Every job's task, running or just ended, for close to wait on.
    tasks: TaskTracker,
    settings: JobSettings,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Jobs {
    /// Opens the table and fails every job a previous process left unfinished.
    pub(crate) async fn open(store: Store, settings: JobSettings) -> Result<Jobs, StoreError> {
        let now = now_ms();
        let mut interrupted = Vec::new();
        let mut queued = Queued::default();
        for mut job in store.jobs()? {
            if !job.status().is_terminal() {
                job.state = JobState::Failed {
                    error: RunError::Interrupted,
                };
                job.finished_at_ms = Some(now);
                interrupted.push(job.clone());
            }
            queued.listing.record(&job);
            queued.listing.stored(job.id);
        }
        if !interrupted.is_empty() {
            store.put_jobs(&interrupted).await?;
            // Their commands died with the last process; what those started may not have.
            let runs: Vec<Uuid> = interrupted.iter().map(|job| job.run_id).collect();
            let ended = tokio::task::spawn_blocking(move || crate::reap::end_runs(&runs))
                .await
                .unwrap_or(0);
            if ended > 0 {
                tracing::info!(
                    "ended {ended} processes that jobs interrupted by the last stop had left running"
                );
            }
        }
        Ok(Jobs {
            store,
            live: Arc::default(),
            queued: Arc::new(Mutex::new(queued)),
            permits: Arc::new(Semaphore::new(settings.max_running.max(1))),
            tasks: TaskTracker::new(),
            settings,
        })
    }

    pub(crate) fn settings(&self) -> JobSettings {
        self.settings
    }

    fn live(&self) -> MutexGuard<'_, HashMap<Uuid, Live>> {
        lock(&self.live)
    }

    fn queued(&self) -> MutexGuard<'_, Queued> {
        lock(&self.queued)
    }

    /// Makes the job durable, then runs `supervised` as its task. The task is spawned
    /// with the live table locked, so that it cannot end (and leave the table) before
    /// it is in it: from its creation a job can be cancelled, waited on and abandoned.
    /// A job started in the background is first admitted by its owner's limits
    /// (under the lock its record is listed with, so a burst cannot pass them); a
    /// promoted one runs already and is not refused.
    async fn register(
        &self,
        job: &Job,
        signals: RunSignals,
        supervised: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), JobError> {
        let pending = {
            let mut queued = self.queued();
            if !job.promoted {
                queued.admit(&job.owner, &self.settings, job.created_at_ms)?;
            }
            queued.listing.record(job);
            self.store.put_job(job)
        };
        if let Err(e) = pending.await {
            // It never existed for anyone but a list that looked meanwhile.
            self.queued().listing.remove(&[job.id]);
            return Err(e.into());
        }
        let (status, _) = watch::channel(job.status());
        let mut live = self.live();
        let task = self.tasks.spawn(supervised);
        live.insert(
            job.id,
            Live {
                signals,
                status,
                task,
            },
        );
        Ok(())
    }

    /// Whether a job started now would run at once.
    pub(crate) fn slot_free(&self) -> bool {
        self.permits.available_permits() > 0
    }

    /// Writes a new state (durably when terminal) and tells waiters. A state the store
    /// refuses is kept for [`Jobs::write_unwritten`], and read from memory until then.
    pub(crate) async fn update(&self, job: &Job) -> Result<(), StoreError> {
        let terminal = job.status().is_terminal();
        let (write, pending) = {
            let mut queued = self.queued();
            let write = queued.next_write();
            if let Some(refused) = queued.refused.get_mut(&job.id) {
                *refused = (write, job.clone());
            }
            queued.listing.record(job);
            // A job's end must be on disk before it is reported; its start need not.
            let pending = if terminal {
                self.store.put_job(job)
            } else {
                self.store.put_job_lazily(job)
            };
            (write, pending)
        };
        let written = pending.await;
        self.queued().settle(write, job, written.is_ok());
        let mut live = self.live();
        if let Some(entry) = live.get(&job.id) {
            entry.status.send_replace(job.status());
        }
        if terminal {
            live.remove(&job.id);
        }
        written
    }

    /// Stores the states the store refused before; the first that fails again stops the
    /// round (they all wait for the same disk).
    pub(crate) async fn write_unwritten(&self) -> Result<(), StoreError> {
        let (jobs, pending) = {
            let queued = self.queued();
            if queued.refused.is_empty() {
                return Ok(());
            }
            let jobs: Vec<(u64, Job)> = queued.refused.values().cloned().collect();
            let states: Vec<Job> = jobs.iter().map(|(_, job)| job.clone()).collect();
            (jobs, self.store.put_jobs(&states))
        };
        let written = pending.await;
        let mut queued = self.queued();
        for (write, job) in &jobs {
            queued.settle(*write, job, written.is_ok());
        }
        written
    }

    /// Reads a job, with its progress while it runs.
    pub(crate) fn get(&self, id: Uuid) -> Result<Job, JobError> {
        let refused = self.queued().refused.get(&id).map(|(_, job)| job.clone());
        let mut job = match refused {
            Some(job) => job,
            None => self.store.job(id)?.ok_or(JobError::NotFound(id))?,
        };
        self.add_progress(&mut job);
        Ok(job)
    }

    fn add_progress(&self, job: &mut Job) {
        if !job.status().is_terminal() {
            job.progress = self
                .live()
                .get(&job.id)
                .and_then(|live| live.signals.progress());
        }
    }

    /// Waits until the job ends or `timeout` passes, then returns it as it is.
    pub(crate) async fn wait(&self, id: Uuid, timeout: Duration) -> Result<Job, JobError> {
        let receiver = self.live().get(&id).map(|live| live.status.subscribe());
        if let Some(mut receiver) = receiver {
            let _ = tokio::time::timeout(timeout, receiver.wait_for(|s| s.is_terminal())).await;
        }
        self.get(id)
    }

    /// Asks a job to stop and waits for it to end (at most the grace period and a
    /// little more).
    pub(crate) async fn cancel(&self, id: Uuid) -> Result<Job, JobError> {
        let token = (self.live().get(&id)).map(|live| live.signals.cancel_token().clone());
        match token {
            Some(token) => {
                token.cancel();
                self.wait(id, self.settings.cancel_grace + Duration::from_secs(1))
                    .await
            }
            None => {
                let job = self.get(id)?;
                Err(JobError::Finished {
                    id,
                    status: job.status(),
                })
            }
        }
    }

    /// Jobs matching the filter, newest first, as they were at one moment: from the
    /// listing in memory, reading from the store only the ended jobs it shows.
    pub(crate) fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let listed = self.queued().listing.select(filter);
        let mut jobs = Vec::with_capacity(listed.len());
        for listed in listed {
            let job = match listed {
                Listed::Whole(job) => Some(*job),
                // Pruned since it was listed: gone.
                Listed::Stored(id) => self.store.job(id)?,
            };
            jobs.extend(job);
        }
        for job in &mut jobs {
            self.add_progress(job);
        }
        Ok(jobs)
    }

    /// Removes finished jobs older than the retention age, past the count and past
    /// their owner's count; returns how many.
    pub(crate) async fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        let oldest_kept_ms = now_ms.saturating_sub(self.settings.retention.as_millis() as u64);
        let mut kept_of: HashMap<Principal, usize> = HashMap::new();
        let removed: Vec<Uuid> = self
            .queued()
            .listing
            .ended_newest_first()
            .into_iter()
            .enumerate()
            .filter(|(rank, (_, finished_at_ms, owner))| {
                let rank_of_owner = kept_of.entry(owner.clone()).or_default();
                *rank_of_owner += 1;
                finished_at_ms.unwrap_or(0) < oldest_kept_ms
                    || *rank >= self.settings.max_finished
                    || (!owner.is_local()
                        && *rank_of_owner > self.settings.max_finished_per_principal)
            })
            .map(|(_, (id, ..))| id)
            .collect();
        if !removed.is_empty() {
            self.store.remove_jobs(&removed).await?;
            self.queued().listing.remove(&removed);
        }
        Ok(removed.len())
    }

    /// Stops every live task without writing a state: what a killed process would
    /// leave, so the next open reports these jobs as interrupted. Work is aborted, then
    /// its cancellation token fires, for work an abort cannot reach.
    pub(crate) async fn abandon_all(&self) {
        let entries: Vec<Live> = self.live().drain().map(|(_, live)| live).collect();
        for live in &entries {
            live.task.abort();
        }
        // An aborted task drops its future (the work, its engine handle) at its next
        // turn on a worker thread: waited for, so that close returns with the work gone
        // (issue 16: a test saw a job's work outlive close). So are the tasks of jobs
        // that had just ended and left the live table but not yet returned (issue 17:
        // a cancelled job's task still held the engine, and with it the store, when
        // a test reopened the database). Work that holds its thread without yielding
        // is not waited for past the bound.
        let signals: Vec<RunSignals> = entries.into_iter().map(|live| live.signals).collect();
        self.tasks.close();
        if tokio::time::timeout(ABANDON_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "a job's work did not stop within {ABANDON_WAIT:?} of close: it holds its thread"
            );
        }
        // Work on blocking threads cannot be aborted, only asked: without this a hash
        // of a large tree would hold the process open after shutdown. The supervisors
        // are gone, so nothing records these jobs as cancelled.
        for signals in &signals {
            signals.cancel_token().cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{MAX_POLL_S, MIN_POLL_S};
    use crate::policy::Decision;
    use crate::policy::{Mode, Source};

    /// A job in `status`, for tests here and in the listing's.
    pub(super) fn job(
        status: JobState,
        finished_at_ms: Option<u64>,
        predicted_s: Option<f64>,
    ) -> Job {
        Job {
            id: Uuid::new_v4(),
            tool: "t".into(),
            label: "t".into(),
            state: status,
            created_at_ms: 1_000,
            started_at_ms: Some(1_000),
            finished_at_ms,
            decision: Decision {
                mode: Mode::Background,
                source: Source::Learned,
                predicted_s,
                upper_bound_s: None,
                budget_s: 50.0,
                risk: 0.05,
                rule: None,
            },
            promoted: false,
            run_id: Uuid::nil(),
            owner: crate::principal::Principal::Local,
            progress: None,
        }
    }

    #[test]
    fn polls_are_suggested_at_the_predicted_end_then_back_off_with_the_run() {
        let running = job(JobState::Running, None, Some(10.0));
        assert_eq!(running.poll_interval_s(1_000 + 2_000), 8.0);
        assert_eq!(running.poll_interval_s(1_000 + 9_900), MIN_POLL_S);
        assert_eq!(running.poll_interval_s(1_000 + 40_000), 10.0);
        assert_eq!(running.poll_interval_s(1_000 + 3_600_000), MAX_POLL_S);
        let unknown = job(JobState::Running, None, None);
        assert_eq!(unknown.poll_interval_s(1_000 + 8_000), 2.0);
        let long = job(JobState::Pending, None, Some(600.0));
        assert_eq!(long.poll_interval_s(0), MAX_POLL_S);
    }

    #[test]
    fn eta_counts_down_from_the_prediction_and_stops_at_zero() {
        let running = job(JobState::Running, None, Some(60.0));
        assert_eq!(running.eta_s(1_000 + 20_000), Some(40.0));
        assert_eq!(running.eta_s(1_000 + 90_000), Some(0.0));
        assert_eq!(job(JobState::Running, None, None).eta_s(5_000), None);
        assert_eq!(
            job(JobState::Cancelled, Some(2_000), Some(9.0)).eta_s(5_000),
            None
        );
    }

    #[test]
    fn job_json_carries_status_and_payload_flat() {
        let done = job(
            JobState::Completed {
                result: serde_json::json!({"ok": 1}).into(),
            },
            Some(3_000),
            None,
        );
        let value = serde_json::to_value(&done).unwrap();
        assert_eq!(value["status"], "completed");
        assert_eq!(value["result"]["kind"], "value");
        assert_eq!(value["result"]["value"]["ok"], 1);
        let back: Job = serde_json::from_value(value).unwrap();
        assert_eq!(back, done);
    }

    #[test]
    fn status_names_parse_back_and_bad_ones_say_what_is_allowed() {
        assert_eq!("running".parse::<JobStatus>(), Ok(JobStatus::Running));
        assert!("done"
            .parse::<JobStatus>()
            .unwrap_err()
            .contains("completed"));
    }

    /// Issue 16: a failed job kept its error as a message; a database written then
    /// reads back each message as the kind it named.
    #[test]
    fn a_failed_job_stored_with_a_message_reads_back_typed() {
        let read = |error: &str| -> JobState {
            serde_json::from_value(serde_json::json!({ "status": "failed", "error": error }))
                .unwrap()
        };
        assert_eq!(
            read("interrupted by restart"),
            JobState::Failed {
                error: RunError::Interrupted
            }
        );
        assert_eq!(
            read("exit code 2"),
            JobState::Failed {
                error: RunError::tool("exit code 2")
            }
        );
        let typed = JobState::Failed {
            error: RunError::TimedOut { after_s: 3.0 },
        };
        let json = serde_json::to_value(&typed).unwrap();
        assert_eq!(json["error"]["kind"], "timed_out");
        assert_eq!(serde_json::from_value::<JobState>(json).unwrap(), typed);
    }

    #[test]
    fn a_principal_is_held_to_its_active_jobs_and_others_are_not() {
        let settings = JobSettings {
            max_active_per_principal: 2,
            max_starts_per_minute: 3,
            ..JobSettings::default()
        };
        let alice = Principal::named("alice");
        let mut queued = Queued::default();
        let running = |queued: &mut Queued, owner: &Principal, at_ms: u64| {
            queued.admit(owner, &settings, at_ms)?;
            let mut started = job(JobState::Running, None, None);
            started.owner = owner.clone();
            queued.listing.record(&started);
            Ok::<Job, JobError>(started)
        };
        let first = running(&mut queued, &alice, 0).unwrap();
        running(&mut queued, &alice, 1).unwrap();
        let error = running(&mut queued, &alice, 2).unwrap_err();
        assert!(
            matches!(error, JobError::TooManyActive { limit: 2, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("alice has 2 background jobs"),
            "{error}"
        );
        // Bob is not held back by alice's jobs, nor the local user by anyone's (a
        // thousand of its submissions at once were refused, tests/submission_burst.rs).
        running(&mut queued, &Principal::named("bob"), 3).unwrap();
        for at_ms in 0..5 {
            running(&mut queued, &Principal::Local, at_ms).unwrap();
        }
        // One of alice's ends: she may start again, up to three in the minute.
        let mut ended = first;
        ended.state = JobState::Cancelled;
        queued.listing.record(&ended);
        running(&mut queued, &alice, 10_000).unwrap();
    }

    #[test]
    fn starts_leave_the_minute_and_the_error_says_when() {
        let settings = JobSettings {
            max_active_per_principal: 100,
            max_starts_per_minute: 2,
            ..JobSettings::default()
        };
        let alice = Principal::named("alice");
        let mut queued = Queued::default();
        queued.admit(&alice, &settings, 1_000).unwrap();
        queued.admit(&alice, &settings, 30_000).unwrap();
        let error = queued.admit(&alice, &settings, 40_000).unwrap_err();
        assert!(
            matches!(
                error,
                JobError::TooManyStarts {
                    limit: 2,
                    retry_s: 21,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("retry in 21 s"), "{error}");
        queued.admit(&alice, &settings, 61_000).unwrap();
    }

    #[tokio::test]
    async fn retention_keeps_at_most_the_count_per_principal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let settings = JobSettings {
            max_finished_per_principal: 2,
            ..JobSettings::default()
        };
        let jobs = Jobs::open(store, settings).await.unwrap();
        let now = 100_000;
        let mut alices = Vec::new();
        for i in 1..=3 {
            let mut ended = job(JobState::Cancelled, Some(now - i * 1000), None);
            ended.owner = Principal::named("alice");
            jobs.update(&ended).await.unwrap();
            alices.push(ended.id);
        }
        let mut bobs = job(JobState::Cancelled, Some(now - 9000), None);
        bobs.owner = Principal::named("bob");
        jobs.update(&bobs).await.unwrap();
        assert_eq!(jobs.prune(now).await.unwrap(), 1, "alice's oldest");
        let left: Vec<Uuid> = jobs
            .list(&JobFilter::default())
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert!(
            !left.contains(&alices[2]) && left.contains(&bobs.id),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn retention_drops_old_and_surplus_finished_jobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let settings = JobSettings {
            retention: Duration::from_secs(10),
            max_finished: 2,
            ..JobSettings::default()
        };
        let jobs = Jobs::open(store.clone(), settings).await.unwrap();
        let now = 100_000;
        let old = job(JobState::Cancelled, Some(now - 20_000), None);
        let kept: Vec<Job> = (1..=3)
            .map(|i| job(JobState::Cancelled, Some(now - i * 1000), None))
            .collect();
        let running = job(JobState::Running, None, None);
        for j in kept.iter().chain([&old, &running]) {
            jobs.update(j).await.unwrap();
        }
        assert_eq!(
            jobs.prune(now).await.unwrap(),
            2,
            "the old one and the third newest"
        );
        let left: Vec<Uuid> = jobs
            .list(&JobFilter::default())
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(left.len(), 3);
        assert!(
            left.contains(&kept[0].id) && left.contains(&kept[1].id) && left.contains(&running.id)
        );
    }
}
