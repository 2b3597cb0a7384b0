//! What a run's work gets ([`JobContext`]): the signal to stop, where to report
//! progress, and the run's id; and what it shares with whoever watches it.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Progress;
use crate::lock::lock;

/// What a run's work and its watchers share, in one allocation: the signal to stop,
/// the latest progress and the run's id.
#[derive(Debug, Default)]
struct Shared {
    cancel: CancellationToken,
    progress: Mutex<Option<Progress>>,
    /// Rung on every report, for an inline call's watcher to pass it on at once.
    reported: tokio::sync::Notify,
    run_id: Uuid,
}

/// A run's signals as its watchers see them: the stop signal and the latest progress.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunSignals(Arc<Shared>);

impl RunSignals {
    /// The latest progress report.
    pub(crate) fn progress(&self) -> Option<Progress> {
        lock(&self.0.progress).clone()
    }

    /// Resolves at the next report (or at once, for one made since the last wait).
    pub(crate) async fn reported(&self) {
        self.0.reported.notified().await;
    }

    /// The run's stop signal.
    pub(crate) fn cancel_token(&self) -> &CancellationToken {
        &self.0.cancel
    }

    fn set(&self, progress: Progress) {
        *lock(&self.0.progress) = Some(progress);
        self.0.reported.notify_one();
    }
}

/// What the caller's work gets: the signal to stop, and where to report progress.
///
/// Cloning one is an atomic increment: the token and the progress sit behind one
/// `Arc`, where cloning the token itself would lock its tree.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use smart_async::{JobContext, Progress};
/// use tokio_util::sync::CancellationToken;
///
/// let cancel = CancellationToken::new();
/// let ctx = JobContext::new(cancel.clone());
/// ctx.report_progress(Progress { done: 1.0, total: Some(4.0), message: None });
/// cancel.cancel();
/// ctx.cancelled().await; // work that selects on this stops cleanly
/// assert!(ctx.is_cancelled());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JobContext {
    run: RunSignals,
}

impl JobContext {
    /// A context whose work should stop when `cancel` fires. The engine makes one per
    /// run; make your own to run a tool's work outside the engine (tests, a plain server).
    pub fn new(cancel: CancellationToken) -> JobContext {
        JobContext {
            run: RunSignals(Arc::new(Shared {
                cancel,
                progress: Mutex::new(None),
                reported: tokio::sync::Notify::new(),
                run_id: Uuid::new_v4(),
            })),
        }
    }

    /// Reports how far the work has come: shown to inline callers in progress
    /// notifications, and in `job_status` and `tasks/get` for a job.
    pub fn report_progress(&self, progress: Progress) {
        self.run.set(progress);
    }

    /// What this run's watchers see of it.
    pub(crate) fn signals(&self) -> &RunSignals {
        &self.run
    }

    /// Resolves when the run is cancelled. Work that selects on it stops cleanly;
    /// work that ignores it is aborted after the grace period.
    pub async fn cancelled(&self) {
        self.token().cancelled().await;
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.token().is_cancelled()
    }

    /// The token itself, to hand to other tasks.
    pub fn token(&self) -> &CancellationToken {
        self.run.cancel_token()
    }

    /// This run's random id: a command tool's processes carry it in their environment
    /// (`SMART_ASYNC_RUN`), so a cancel, or a restart after a crash, ends all of them.
    pub fn run_id(&self) -> Uuid {
        self.run.0.run_id
    }
}
