//! A job's run, from its start to its end: started in the background when a run slot
//! frees, or adopted from an inline call that overran its deadline, supervised in one
//! task (the work is polled there, so aborting that task ends the work), and finished:
//! its end learned by the owner, then made durable and told to waiters.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{now_ms, Job, JobContext, JobError, JobOutput, JobState, Jobs};
use crate::run_error::{panic_message, RunError};
use crate::stats::Outcome;

/// A job's work, its output as the job keeps it.
pub(crate) type JobWork = Pin<Box<dyn Future<Output = Result<JobOutput, RunError>> + Send>>;

/// What the job's owner does with the job, how its run ended and after how many
/// seconds: it learns the run. Called before the end is durable, so a job reported
/// ended has its sample on record too.
pub(crate) type OnEnd = Box<dyn FnOnce(&Job, Outcome, f64) + Send>;

/// The owner's [`OnEnd`], called exactly once: by the supervisor when the run ends, or,
/// should the run's task be dropped first (a shutdown aborts every task), on drop, as
/// a run cancelled after the time it had run: what it ran is learned as a lower bound
/// on its runtime, not lost. A job that never started has nothing to teach.
struct EndOnce {
    on_end: Option<OnEnd>,
    job: Job,
    started: Option<Instant>,
}

impl EndOnce {
    fn new(on_end: OnEnd, job: &Job, started: Option<Instant>) -> EndOnce {
        EndOnce {
            on_end: Some(on_end),
            job: job.clone(),
            started,
        }
    }
}

impl Drop for EndOnce {
    fn drop(&mut self) {
        if let (Some(on_end), Some(started)) = (self.on_end.take(), self.started) {
            on_end(
                &self.job,
                Outcome::Cancelled,
                started.elapsed().as_secs_f64(),
            );
        }
    }
}

/// How a run ended, as seen by its supervisor.
#[derive(Debug)]
enum RunEnd {
    Returned(Result<JobOutput, RunError>),
    Panicked(String),
    Cancelled,
}

impl Jobs {
    /// Makes `job` (pending) durable and live, then runs its work in the background
    /// once a run slot is free; returns the job as created.
    pub(crate) async fn start(
        &self,
        job: Job,
        ctx: JobContext,
        work: impl FnOnce(JobContext) -> JobWork + Send + 'static,
        on_end: OnEnd,
    ) -> Result<Job, JobError> {
        let jobs = self.clone();
        let signals = ctx.signals().clone();
        let cancel = ctx.token().clone();
        let mut running = job.clone();
        let mut on_end = EndOnce::new(on_end, &running, None);
        let supervised = async move {
            let Some(_slot) = jobs.acquire_slot(&cancel).await else {
                jobs.finish(running, RunEnd::Cancelled, Instant::now(), on_end)
                    .await;
                return;
            };
            running.state = JobState::Running;
            running.started_at_ms = Some(now_ms());
            let started = Instant::now();
            on_end.started = Some(started);
            let grace = jobs.settings.cancel_grace;
            // The work is polled first: recording that it started waits for the store's
            // writer, which may be flushing, and a cancel that came meanwhile would find
            // the work not yet begun (an upstream not yet asked, say).
            let (end, noted) =
                tokio::join!(run_to_end(work(ctx), &cancel, grace), jobs.update(&running));
            if let Err(e) = noted {
                tracing::warn!(job = %running.id, error = %e, "could not record that the job started: it is read from memory and written again every second");
            }
            jobs.finish(running, end, started, on_end).await;
        };
        self.register(&job, signals, supervised).await?;
        Ok(job)
    }

    /// Adopts the work of an inline call that overran its deadline: running since
    /// `started`, it goes on where it was, as `job` (running). It is never held back by
    /// the concurrency limit; it takes a run slot if one is free, so jobs started after
    /// it wait for it.
    pub(crate) async fn adopt(
        &self,
        job: Job,
        ctx: JobContext,
        work: JobWork,
        started: Instant,
        on_end: OnEnd,
    ) -> Result<Job, JobError> {
        let jobs = self.clone();
        let cancel = ctx.token().clone();
        let running = job.clone();
        let slot = self.try_slot();
        // Made before the task, so that a task aborted before its first poll still drops
        // it (issue 18: a call promoted just before a shutdown went unlearned).
        let on_end = EndOnce::new(on_end, &running, Some(started));
        let supervised = async move {
            let _slot = slot;
            let end = run_to_end(work, &cancel, jobs.settings.cancel_grace).await;
            jobs.finish(running, end, started, on_end).await;
        };
        if let Err(e) = self.register(&job, ctx.signals().clone(), supervised).await {
            // The work went with the task never started; anything it handed its token
            // to is told.
            ctx.token().cancel();
            return Err(e);
        }
        Ok(job)
    }

    /// Learns from the run, then makes the job's end durable and tells waiters.
    async fn finish(&self, mut job: Job, end: RunEnd, started: Instant, mut on_end: EndOnce) {
        let runtime_s = started.elapsed().as_secs_f64();
        let (state, outcome) = match end {
            RunEnd::Returned(Ok(result)) => (JobState::Completed { result }, Outcome::Completed),
            RunEnd::Returned(Err(error)) => {
                let outcome = Outcome::of_error(&error);
                (JobState::Failed { error }, outcome)
            }
            RunEnd::Panicked(message) => (
                JobState::Failed {
                    error: RunError::Panicked { message },
                },
                Outcome::Failed,
            ),
            RunEnd::Cancelled => (JobState::Cancelled, Outcome::Cancelled),
        };
        job.state = state;
        job.finished_at_ms = Some(now_ms());
        if let Some(on_end) = on_end.on_end.take() {
            on_end(&job, outcome, runtime_s);
        }
        if let Err(e) = self.update(&job).await {
            tracing::error!(job = %job.id, error = %e, "could not store the job's end: it is read from memory and written again every second");
        }
    }

    /// Waits for a run slot; `None` if cancelled first.
    async fn acquire_slot(&self, cancel: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        }
    }

    /// A run slot if one is free now.
    fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// Runs `work` until it returns or `cancel` fires; after a cancel it gets `grace` to
/// return, then it is dropped. A cancelled run is reported cancelled even if the work
/// returned within the grace, so a cancelled job never shows as completed.
async fn run_to_end(mut work: JobWork, cancel: &CancellationToken, grace: Duration) -> RunEnd {
    let mut work = AssertUnwindSafe(&mut work).catch_unwind();
    // Biased: work that returns the moment it sees the cancel is ready together with
    // the cancel, and an unbiased pick would then report it failed half the time.
    let ended = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            let _ = tokio::time::timeout(grace, &mut work).await;
            return RunEnd::Cancelled;
        }
        ended = &mut work => ended,
    };
    match ended {
        Ok(returned) => RunEnd::Returned(returned),
        Err(panic) => RunEnd::Panicked(panic_message(&*panic)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_ignores_cancel_is_dropped_after_the_grace() {
        let cancel = CancellationToken::new();
        let dropped = CancellationToken::new();
        let guard = dropped.clone().drop_guard();
        let work: JobWork = Box::pin(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(serde_json::Value::Null.into())
        });
        let started = Instant::now();
        cancel.cancel();
        let end = run_to_end(work, &cancel, Duration::from_secs(5)).await;
        assert!(matches!(end, RunEnd::Cancelled));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(dropped.is_cancelled(), "the work was dropped with its task");
    }

    /// Regression: work that returned as soon as it saw the cancel was reported as
    /// failed with its own error about half the time (an unbiased `select!` between the
    /// cancel and the finished work), seen in CI on `tests/engine.rs`.
    #[tokio::test]
    async fn work_that_returns_on_its_cancel_is_always_reported_cancelled() {
        let cancel = CancellationToken::new();
        let seen = cancel.clone();
        let work: JobWork = Box::pin(async move {
            seen.cancelled().await;
            Err(RunError::Cancelled)
        });
        // The work would return at its first poll: both are ready.
        cancel.cancel();
        let end = run_to_end(work, &cancel, Duration::from_secs(1)).await;
        assert!(matches!(end, RunEnd::Cancelled), "{end:?}");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_reported_with_its_message() {
        let work: JobWork = Box::pin(async { panic!("boom") });
        match run_to_end(work, &CancellationToken::new(), Duration::from_secs(1)).await {
            RunEnd::Panicked(message) => assert_eq!(message, "boom"),
            other => panic!("{other:?}"),
        }
    }
}
