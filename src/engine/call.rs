//! A call's path: decided, then answered inline (polled right where it is asked, up
//! to the deadline, with progress for the caller), or run as a job; inline work that
//! overruns its deadline goes on as a job where it was. [`CallFuture`] is the future
//! of [`Engine::call`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Engine, EngineError};
use crate::clients::record_key;
use crate::features::Features;
use crate::jobs::{now_ms, Job, JobContext, JobOutput, JobState, JobWork, OnEnd, Progress};
use crate::lock::lock;
use crate::policy::{Decision, Mode};
use crate::principal::Principal;
use crate::run_error::{panic_message, RunError};
use crate::stats::Outcome;

/// How often an inline call's watcher hears how it is going: well inside the 2 s
/// idle timeouts some clients reset on progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// A tool's own progress report reaches an inline call's watcher at once, but not
/// sooner than this after the last it heard: a tool that reports in a tight loop
/// does not flood the client.
pub const PROGRESS_MIN_GAP: Duration = Duration::from_millis(100);

/// What an inline call's watcher hears every [`PROGRESS_INTERVAL`] while it runs, and
/// when the tool reports (at most every [`PROGRESS_MIN_GAP`]).
#[derive(Debug, Clone, PartialEq)]
pub struct InlineProgress {
    /// Seconds the call has run.
    pub elapsed_s: f64,
    /// The predicted runtime, when a model spoke.
    pub predicted_s: Option<f64>,
    /// What the tool itself last reported.
    pub tool: Option<Progress>,
}

/// Hears an inline call's progress (see [`ToolCall::on_progress`]); any
/// `Fn(InlineProgress)` closure is one.
pub trait HearProgress: Send + Sync {
    /// The call's progress, every [`PROGRESS_INTERVAL`] while it runs and when the tool
    /// reports.
    fn hear(&self, progress: InlineProgress);
}

impl<F: Fn(InlineProgress) + Send + Sync> HearProgress for F {
    fn hear(&self, progress: InlineProgress) {
        self(progress)
    }
}

/// Where an inline call's progress goes (see [`ToolCall::on_progress`]).
pub type ProgressSink = Arc<dyn HearProgress>;

/// One call to run.
#[derive(Clone)]
pub struct ToolCall {
    /// The tool's name (shared, so that a server's calls of its tools need not copy it).
    pub tool: Arc<str>,
    /// Its JSON arguments (`async_mode` among them, if the caller set it).
    pub args: Value,
    /// A label for job lists; the tool's name if unset.
    pub label: Option<String>,
    /// Who is calling (`clientInfo.name`): chooses the budget, and learns from where
    /// the client gives up.
    pub client: Option<Arc<str>>,
    /// Fires when the caller gives up on an inline call (`notifications/cancelled`):
    /// the work stops and the call answers [`CallOutcome::Cancelled`].
    pub cancel: Option<CancellationToken>,
    /// Hears how an inline call is going, every [`PROGRESS_INTERVAL`] and when the tool
    /// reports.
    pub on_progress: Option<ProgressSink>,
    /// Who the call is made for: the owner of its job, and whose client budget it
    /// learns (the local user unless the server authenticates callers).
    pub owner: Principal,
}

impl ToolCall {
    /// A call of `tool` with `args`.
    pub fn new(tool: impl Into<Arc<str>>, args: Value) -> ToolCall {
        ToolCall {
            tool: tool.into(),
            args,
            label: None,
            client: None,
            cancel: None,
            on_progress: None,
            owner: Principal::Local,
        }
    }
}

impl ToolCall {
    /// The key its client's budget is kept under (see [`record_key`]).
    fn client_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        (self.client.as_deref()).map(|client| record_key(client, &self.owner))
    }
}

impl std::fmt::Debug for ToolCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolCall")
            .field("tool", &self.tool)
            .field("args", &self.args)
            .field("label", &self.label)
            .field("client", &self.client)
            .field("cancel", &self.cancel.is_some())
            .field("on_progress", &self.on_progress.is_some())
            .field("owner", &self.owner)
            .finish()
    }
}

/// What a call's work returns. An inline answer hands it back as it is; a job keeps it
/// as a [`JobOutput`] in the store, where it outlives the process.
pub trait WorkOutput: Send + 'static {
    /// What a job stores of it.
    fn into_output(self) -> JobOutput;
}

impl WorkOutput for Value {
    fn into_output(self) -> JobOutput {
        JobOutput::Value { value: self }
    }
}

/// What a call came to; `T` is what its work returns.
#[derive(Debug, Clone)]
pub enum CallOutcome<T = Value> {
    /// It ran inline and finished within the deadline.
    Done {
        /// The work's result or why it failed.
        result: Result<T, RunError>,
        /// Why it ran inline.
        decision: Decision,
        /// How long it took.
        runtime_s: f64,
    },
    /// It runs in the background: decided so, or promoted at the deadline
    /// (`job.promoted`). Poll, wait for or cancel it by `job.id`.
    Job {
        /// The job as it was when the handle was made (already durable). Boxed: the
        /// outcome of a call answered inline is moved about and should stay small.
        job: Box<Job>,
    },
    /// The caller cancelled it while it ran inline ([`ToolCall::cancel`]); the work
    /// was stopped.
    Cancelled {
        /// Why it ran inline.
        decision: Decision,
        /// How long it ran.
        runtime_s: f64,
    },
}

/// Inline work that did not end at its first poll, handed to [`Engine::watch_inline`].
struct InlineRun<T> {
    call: ToolCall,
    features: Features,
    decision: Decision,
    work: WorkFuture<T>,
    ctx: JobContext,
    started: Instant,
}

impl Engine {
    /// [`Engine::call`] for work that is boxed already (a [`crate::tools::ToolWork`]).
    pub(crate) fn call_boxed<T: WorkOutput>(
        &self,
        call: ToolCall,
        work: BoxedWork<T>,
    ) -> CallFuture<'_, T> {
        CallFuture {
            engine: self,
            state: CallState::Start { call, work },
        }
    }

    /// Decides a call and starts it: a job is started in the background (boxed, as
    /// its writes make a big future), inline work is polled right here, not spawned,
    /// so an inline answer costs no task and no cross-thread wake-up. Most inline work
    /// is quick, and this first poll answers it before any timer or cancellation
    /// watch is set up; the rest is left to [`Engine::watch_inline`].
    fn begin<'a, T: WorkOutput>(
        &'a self,
        cx: &mut Context<'_>,
        call: ToolCall,
        work: BoxedWork<T>,
        features: Features,
        expensive: bool,
    ) -> Begun<'a, T> {
        let decision = self.decide(
            &call.tool,
            &call.args,
            &features,
            expensive,
            call.client_key().as_deref(),
            true,
        );
        if decision.mode == Mode::Background {
            return Begun::Waiting(Box::pin(
                self.start_background(call, features, decision, work),
            ));
        }
        let ctx = JobContext::new(CancellationToken::new());
        let started = Instant::now();
        let mut work = work(ctx.clone());
        match AssertUnwindSafe(&mut work).catch_unwind().poll_unpin(cx) {
            Poll::Ready(ended) => {
                Begun::Answered(self.inline_done(&call, features, decision, started, ended))
            }
            Poll::Pending => {
                let run = InlineRun {
                    call,
                    features,
                    decision,
                    work,
                    ctx,
                    started,
                };
                Begun::Waiting(Box::pin(self.watch_inline(run)))
            }
        }
    }

    /// Waits for inline work that did not end at its first poll: to its end, the
    /// caller's cancel, or the deadline (then it becomes a job), with progress ticks.
    async fn watch_inline<T: WorkOutput>(
        &self,
        run: InlineRun<T>,
    ) -> Result<CallOutcome<T>, EngineError> {
        let InlineRun {
            mut call,
            features,
            decision,
            mut work,
            ctx,
            started,
        } = run;
        let cancel = ctx.token().clone();
        let deadline = started + self.deadline(&decision);
        let caller_cancel = call.cancel.take().unwrap_or_default();
        let on_progress = call.on_progress.take();
        let mut next_tick = started + PROGRESS_INTERVAL;
        // When the watcher last heard, and whether the tool has reported since.
        let mut last_heard = started;
        let mut tool_reported = false;
        // If this call is dropped (its caller went away), the work is dropped with it
        // and its token fires for anything it handed the token to.
        let caller_gone = cancel.clone().drop_guard();
        loop {
            let wake = match on_progress {
                Some(_) if tool_reported => {
                    deadline.min(next_tick.min(last_heard + PROGRESS_MIN_GAP))
                }
                Some(_) => deadline.min(next_tick),
                None => deadline,
            };
            tokio::select! {
                biased;
                ended = AssertUnwindSafe(&mut work).catch_unwind() => {
                    caller_gone.disarm();
                    return Ok(self.inline_done(&call, features, decision, started, ended));
                }
                _ = caller_cancel.cancelled() => {
                    caller_gone.disarm();
                    let runtime_s = started.elapsed().as_secs_f64();
                    // Recorded first, so the lesson is in before anything the work does
                    // on its way out can be seen.
                    self.record(&call.tool, features, runtime_s, Outcome::Cancelled, &decision);
                    if let Some(client) = call.client_key() {
                        self.client_gave_up(&client, runtime_s);
                    }
                    cancel.cancel();
                    let grace = self.inner.jobs.settings().cancel_grace;
                    // Work that honours its token ends here (a command's process group is
                    // killed); the rest is dropped after the grace.
                    let _ = tokio::time::timeout(grace, AssertUnwindSafe(&mut work).catch_unwind()).await;
                    drop(work);
                    return Ok(CallOutcome::Cancelled { decision, runtime_s });
                }
                _ = ctx.signals().reported(), if on_progress.is_some() && !tool_reported => {
                    tool_reported = true;
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    if let Some(on_progress) = &on_progress {
                        on_progress.hear(InlineProgress {
                            elapsed_s: started.elapsed().as_secs_f64(),
                            predicted_s: decision.predicted_s,
                            tool: ctx.signals().progress(),
                        });
                    }
                    last_heard = now;
                    tool_reported = false;
                    next_tick = now + PROGRESS_INTERVAL;
                }
            }
        }
        caller_gone.disarm();
        // Overran the deadline: the same work goes on as a job.
        // Rounded up: a truncated elapsed time put the start up to 1 ms late, and a 1 s
        // run then read 0.999 s (seen in tests/engine.rs).
        let elapsed_ms = (started.elapsed().as_micros() as u64).div_ceil(1000);
        let started_ms = now_ms().saturating_sub(elapsed_ms);
        let mut job = new_job(call, decision, started_ms, ctx.run_id());
        job.state = JobState::Running;
        job.started_at_ms = Some(started_ms);
        job.promoted = true;
        // The same future, moved to a task of its own: it goes on where it was.
        let work: JobWork = Box::pin(job_work(work));
        let on_end = self.learns_from_job(features);
        let job = (self.inner.jobs)
            .adopt(job, ctx, work, started, on_end)
            .await?;
        lock(&self.inner.knowledge).learner.promoted(&job.tool);
        Ok(CallOutcome::Job { job: Box::new(job) })
    }

    /// An inline run ended within its deadline: it is recorded and answered.
    fn inline_done<T>(
        &self,
        call: &ToolCall,
        features: Features,
        decision: Decision,
        started: Instant,
        ended: std::thread::Result<Result<T, RunError>>,
    ) -> CallOutcome<T> {
        let runtime_s = started.elapsed().as_secs_f64();
        let (result, outcome) = match ended {
            Ok(Ok(value)) => (Ok(value), Outcome::Completed),
            Ok(Err(error)) => {
                let outcome = Outcome::of_error(&error);
                (Err(error), outcome)
            }
            Err(panic) => (
                Err(RunError::Panicked {
                    message: panic_message(&*panic),
                }),
                Outcome::Failed,
            ),
        };
        self.record(&call.tool, features, runtime_s, outcome, &decision);
        if let Some(client) = call.client_key() {
            self.client_waited(&client, runtime_s);
        }
        CallOutcome::Done {
            result,
            decision,
            runtime_s,
        }
    }

    async fn start_background<T: WorkOutput>(
        &self,
        call: ToolCall,
        features: Features,
        decision: Decision,
        work: BoxedWork<T>,
    ) -> Result<CallOutcome<T>, EngineError> {
        let ctx = JobContext::new(CancellationToken::new());
        let job = new_job(call, decision, now_ms(), ctx.run_id());
        let work = move |ctx| -> JobWork { Box::pin(job_work(work(ctx))) };
        let on_end = self.learns_from_job(features);
        let job = self.inner.jobs.start(job, ctx, work, on_end).await?;
        Ok(CallOutcome::Job { job: Box::new(job) })
    }

    /// What a job's end does here: its run is learned, as an inline call's is.
    fn learns_from_job(&self, features: Features) -> OnEnd {
        let engine = self.clone();
        Box::new(move |job, outcome, runtime_s| {
            // A job's sample needs the name shared, as an inline call's has it.
            let tool: Arc<str> = job.tool.as_str().into();
            engine.record(&tool, features, runtime_s, outcome, &job.decision);
        })
    }
}

/// A call's running work.
type WorkFuture<T> = Pin<Box<dyn Future<Output = Result<T, RunError>> + Send>>;

/// A call's work, boxed once at the door so the paths inside are not generic in it.
pub(crate) type BoxedWork<T> = Box<dyn FnOnce(JobContext) -> WorkFuture<T> + Send>;

/// Work run as a job: its output is kept as JSON.
async fn job_work<T: WorkOutput>(work: WorkFuture<T>) -> Result<JobOutput, RunError> {
    work.await.map(WorkOutput::into_output)
}

/// The future of [`Engine::call`]. It decides and polls inline work within its own
/// first poll, and boxes only what has to wait (a tool's extractor, a background
/// start, inline work past its first poll): rmcp moves every request's future as it
/// spawns it, and a call answered at once then carries little more than its
/// arguments.
pub(crate) struct CallFuture<'a, T> {
    engine: &'a Engine,
    state: CallState<'a, T>,
}

enum CallState<'a, T> {
    /// Not polled yet.
    Start { call: ToolCall, work: BoxedWork<T> },
    /// The tool's own extractor is reading the call's features.
    Extracting(BoxFuture<'a, (ToolCall, BoxedWork<T>, Features, bool)>),
    /// Started in the background, or inline work still running.
    Waiting(BoxFuture<'a, Result<CallOutcome<T>, EngineError>>),
    /// Answered.
    Finished,
}

/// What a call came to at its first poll.
enum Begun<'a, T> {
    Answered(CallOutcome<T>),
    Waiting(BoxFuture<'a, Result<CallOutcome<T>, EngineError>>),
}

impl<'a, T: WorkOutput> Future for CallFuture<'a, T> {
    type Output = Result<CallOutcome<T>, EngineError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let engine = this.engine;
        loop {
            let begun = match std::mem::replace(&mut this.state, CallState::Finished) {
                CallState::Start { call, work } => {
                    let options = engine.options(&call.tool);
                    match options.extractor {
                        None => {
                            let features = Features::from_args(&call.args);
                            engine.begin(cx, call, work, features, options.expensive)
                        }
                        Some(extractor) => {
                            let expensive = options.expensive;
                            this.state = CallState::Extracting(Box::pin(async move {
                                let features =
                                    Engine::features(&call.tool, &call.args, Some(extractor)).await;
                                (call, work, features, expensive)
                            }));
                            continue;
                        }
                    }
                }
                CallState::Extracting(mut extracting) => match extracting.as_mut().poll(cx) {
                    Poll::Ready((call, work, features, expensive)) => {
                        engine.begin(cx, call, work, features, expensive)
                    }
                    Poll::Pending => {
                        this.state = CallState::Extracting(extracting);
                        return Poll::Pending;
                    }
                },
                CallState::Waiting(mut waiting) => match waiting.as_mut().poll(cx) {
                    Poll::Ready(outcome) => return Poll::Ready(outcome),
                    Poll::Pending => {
                        this.state = CallState::Waiting(waiting);
                        return Poll::Pending;
                    }
                },
                // Polled again after it answered: there is nothing more to give.
                CallState::Finished => return Poll::Pending,
            };
            match begun {
                Begun::Answered(outcome) => return Poll::Ready(Ok(outcome)),
                Begun::Waiting(waiting) => this.state = CallState::Waiting(waiting),
            }
        }
    }
}

/// A pending job for `call`, created at `created_at_ms`.
fn new_job(call: ToolCall, decision: Decision, created_at_ms: u64, run_id: Uuid) -> Job {
    Job {
        id: Uuid::new_v4(),
        label: call.label.unwrap_or_else(|| call.tool.to_string()),
        tool: call.tool.to_string(),
        state: JobState::Pending,
        created_at_ms,
        started_at_ms: None,
        finished_at_ms: None,
        decision,
        promoted: false,
        run_id,
        owner: call.owner,
        progress: None,
    }
}
