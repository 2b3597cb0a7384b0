//! The call path: decide → spawn the work → await up to the deadline → answer, or
//! promote the still-running work to a job. Every finished run teaches the model.
//!
//! The engine is the shell around the pure core: it extracts features, asks the
//! [`Policy`], spawns the work exactly once, persists jobs, samples and models through
//! the [`Store`], and keeps the models in memory for the next decision.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clients::{ClientBudget, ClientBudgets, ClientRecord, ClientStats};
use crate::features::{FeatureExtractor, Features, ASYNC_MODE_ARG};
use crate::jobs::{
    now_ms, run_to_end, Job, JobContext, JobError, JobFilter, JobSettings, JobState, Jobs,
    Progress, RunEnd, WorkHandle,
};
use crate::learner::{Changed, Learner};
use crate::lock::lock;
use crate::policy::{
    Call, Decision, Mode, Policy, PolicyError, StaticTable, DEFAULT_BUDGET_S, DEFAULT_RISK,
};
use crate::run_error::{panic_message, RunError};
use crate::stats::{Outcome, StatsReport, ToolStats};
use crate::store::{PendingWrite, Sample, Store, StoreError, DEFAULT_CACHE_BYTES};

/// How often finished jobs and old samples are pruned.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Samples kept in memory while the store cannot take them; past this the oldest go.
const MAX_PENDING_SAMPLES: usize = 100_000;
/// How often samples and changed models are written to the store.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// How often an inline call's watcher hears how it is going: well inside the 2 s
/// idle timeouts some clients reset on progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// A tool's own progress report reaches an inline call's watcher at once, but not
/// sooner than this after the last it heard: a tool that reports in a tight loop
/// does not flood the client.
pub const PROGRESS_MIN_GAP: Duration = Duration::from_millis(100);

/// Everything the engine is configured with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// Seconds a call may take inline (see [`DEFAULT_BUDGET_S`]).
    pub budget_s: f64,
    /// Seconds an inline call runs before it is promoted to a job; the budget if unset.
    pub deadline_s: Option<f64>,
    /// Share of runtimes allowed above the predicted bound.
    pub risk: f64,
    /// The cold-start table.
    pub static_table: StaticTable,
    /// Job retention, concurrency and cancel grace.
    pub jobs: JobSettings,
    /// sled's page cache in bytes.
    pub cache_bytes: u64,
    /// Samples kept per tool for export; older ones are pruned a whole write (a
    /// second's worth) at a time, never below this count (the model keeps what it
    /// learned from them).
    pub max_samples_per_tool: usize,
    /// Budgets by client name (`clientInfo.name`, compared without case), over the
    /// built-in ones for known clients.
    pub client_budgets: BTreeMap<String, f64>,
}

impl EngineConfig {
    /// The defaults, with the database in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            budget_s: DEFAULT_BUDGET_S,
            deadline_s: None,
            risk: DEFAULT_RISK,
            static_table: StaticTable::default(),
            jobs: JobSettings::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_samples_per_tool: 10_000,
            client_budgets: BTreeMap::new(),
        }
    }
}

/// How the engine treats one tool.
#[derive(Clone, Default)]
pub struct ToolOptions {
    /// Expensive tools (LLM work) go to the background until their runtime is learned.
    pub expensive: bool,
    /// Adds the tool's own features before each call.
    pub extractor: Option<Arc<dyn FeatureExtractor>>,
}

impl std::fmt::Debug for ToolOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolOptions")
            .field("expensive", &self.expensive)
            .field("extractor", &self.extractor.is_some())
            .finish()
    }
}

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
        }
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
            .finish()
    }
}

/// What a call's work returns. An inline answer hands it back as it is; a job keeps it
/// as JSON in the store, where it outlives the process.
pub trait WorkOutput: Send + 'static {
    /// The JSON a job stores.
    fn into_json(self) -> Value;
}

impl WorkOutput for Value {
    fn into_json(self) -> Value {
        self
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

/// Engine errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(#[from] PolicyError),
    /// The deadline is not a positive number of seconds.
    #[error(
        "deadline {0} s is not a positive number of seconds: leave it unset to use the budget"
    )]
    Deadline(f64),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A job operation failed.
    #[error(transparent)]
    Job(#[from] JobError),
    /// A client's budget is not a positive number of seconds.
    #[error("the budget of client '{client}' is {budget_s} s, not a positive number of seconds: use for example 50")]
    ClientBudget {
        /// The client.
        client: String,
        /// The budget given.
        budget_s: f64,
    },
}

/// What the engine has learned: the learner's records, the samples waiting for the
/// store, and the clients' budgets.
struct Knowledge {
    learner: Learner,
    /// Samples not yet written.
    samples: VecDeque<Sample>,
    /// Budgets per client, with what each showed.
    clients: ClientBudgets,
    /// Clients whose record changed since it was last written.
    dirty_clients: HashSet<String>,
}

struct Inner {
    policy: Policy,
    /// The configured deadline; each call's own budget when unset.
    deadline: Option<Duration>,
    max_samples_per_tool: usize,
    store: Store,
    jobs: Jobs,
    /// What was learned, under one lock.
    knowledge: Mutex<Knowledge>,
    /// Held by a write of what was learned, so that the sweeper's and `close`'s never
    /// interleave (a failed one puts back ahead of what came since).
    persisting: tokio::sync::Mutex<()>,
    tools: Mutex<hashbrown::HashMap<String, ToolOptions>>,
    shutdown: CancellationToken,
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

/// The smart-async engine. Cheap to clone; clones share everything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use smart_async::{CallOutcome, Engine, EngineConfig, ToolCall};
/// let dir = tempfile::tempdir()?;
/// let engine = Engine::open(EngineConfig::new(dir.path())).await?;
/// let call = ToolCall::new("add", serde_json::json!({"a": 2, "b": 3}));
/// let outcome = engine
///     .call(call, |_ctx| async { Ok(serde_json::json!(5)) })
///     .await?;
/// match outcome {
///     CallOutcome::Done { result, .. } => assert_eq!(result, Ok(serde_json::json!(5))),
///     CallOutcome::Job { job } => println!("running in the background as {}", job.id),
///     CallOutcome::Cancelled { .. } => unreachable!("this call carries no cancel token"),
/// }
/// engine.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.inner.store.path())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the database, loads what was learned, fails jobs a previous process left
    /// unfinished ("interrupted by restart") and starts the retention sweeper.
    pub async fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        let policy = Policy::new(config.budget_s, config.risk, config.static_table)?;
        if let Some(deadline_s) = config.deadline_s {
            if !(deadline_s.is_finite() && deadline_s > 0.0) {
                return Err(EngineError::Deadline(deadline_s));
            }
        }
        if let Some((name, budget_s)) = config
            .client_budgets
            .iter()
            .find(|(_, budget_s)| !(budget_s.is_finite() && **budget_s > 0.0))
        {
            return Err(EngineError::ClientBudget {
                client: name.clone(),
                budget_s: *budget_s,
            });
        }
        // Opening waits a moment for a lock just let go, and sled reads its log: off the
        // runtime's threads.
        let (data_dir, cache_bytes) = (config.data_dir.clone(), config.cache_bytes);
        let store =
            match tokio::task::spawn_blocking(move || Store::open(&data_dir, cache_bytes)).await {
                Ok(opened) => opened?,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
        let (tools, pooled) = store.load_records()?;
        let mut clients = ClientBudgets::new(config.budget_s, &config.client_budgets);
        for (name, record) in store.load_clients()? {
            clients.restore(name, record);
        }
        let jobs = Jobs::open(store.clone(), config.jobs).await?;
        jobs.prune(now_ms()).await?;
        let knowledge = Knowledge {
            learner: Learner::new(tools, pooled),
            samples: VecDeque::new(),
            clients,
            dirty_clients: HashSet::new(),
        };
        let inner = Arc::new(Inner {
            policy,
            deadline: config.deadline_s.map(Duration::from_secs_f64),
            max_samples_per_tool: config.max_samples_per_tool,
            store,
            jobs,
            knowledge: Mutex::new(knowledge),
            persisting: tokio::sync::Mutex::new(()),
            tools: Mutex::new(hashbrown::HashMap::new()),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(sweep(Arc::downgrade(&inner), inner.shutdown.clone()));
        Ok(Engine { inner })
    }

    /// Sets how the engine treats `tool`.
    pub fn register_tool(&self, tool: impl Into<String>, options: ToolOptions) {
        lock(&self.inner.tools).insert(tool.into(), options);
    }

    /// The budget in seconds (for clients without one of their own).
    pub fn budget_s(&self) -> f64 {
        self.inner.policy.budget_s()
    }

    /// Job retention, concurrency and cancel grace.
    pub fn job_settings(&self) -> JobSettings {
        self.inner.jobs.settings()
    }

    /// Runs one call: decides, spawns `work` once, and answers with its result if it
    /// ends within the deadline, or with a job handle. `work` gets a [`JobContext`]
    /// whose cancellation it should honour. If this future is dropped while the call
    /// is still inline, the work is dropped with it and its token fires (for anything
    /// the work handed the token to, such as a blocking thread).
    pub fn call<F, Fut, T>(
        &self,
        call: ToolCall,
        work: F,
    ) -> impl Future<Output = Result<CallOutcome<T>, EngineError>> + Send + '_
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RunError>> + Send + 'static,
        T: WorkOutput,
    {
        let work: BoxedWork<T> = Box::new(move |ctx| Box::pin(work(ctx)));
        self.call_boxed(call, work)
    }

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

    /// What the engine would decide for this call, without running or counting it.
    pub async fn predict(&self, tool: &str, args: &Value) -> Decision {
        let options = self.options(tool);
        let features = Engine::features(tool, args, options.extractor).await;
        self.decide(tool, args, &features, options.expensive, None, false)
    }

    /// The budget `client`'s calls are decided against (`None`: an unnamed client).
    pub fn client_budget(&self, client: Option<&str>) -> ClientBudget {
        lock(&self.inner.knowledge).clients.budget(client)
    }

    /// What is known of each client: its budget, where that came from, and the
    /// timeout its cancellations revealed.
    pub fn client_stats(&self) -> Vec<ClientStats> {
        lock(&self.inner.knowledge).clients.stats()
    }

    /// What `predictor_stats` shows: [`Engine::stats`] and every client's budget.
    pub fn report(&self, tool: Option<&str>) -> StatsReport {
        StatsReport {
            budget_s: self.budget_s(),
            tools: self.stats(tool),
            clients: self.client_stats(),
        }
    }

    /// What [`Engine::report`] would show, read from the database in `config` without
    /// opening an engine: no job is marked interrupted, nothing is pruned or written,
    /// no process is ended (what `smart-async stats` does).
    pub fn read_report(
        config: &EngineConfig,
        tool: Option<&str>,
    ) -> Result<StatsReport, EngineError> {
        let store = Store::open(&config.data_dir, config.cache_bytes)?;
        let (tools, pooled) = store.load_records()?;
        let mut clients = ClientBudgets::new(config.budget_s, &config.client_budgets);
        for (name, record) in store.load_clients()? {
            clients.restore(name, record);
        }
        Ok(StatsReport {
            budget_s: config.budget_s,
            tools: Learner::new(tools, pooled).stats(tool, config.risk),
            clients: clients.stats(),
        })
    }

    /// What has been learned, for one tool or for all (the pooled model last, as `*`).
    pub fn stats(&self, tool: Option<&str>) -> Vec<ToolStats> {
        lock(&self.inner.knowledge)
            .learner
            .stats(tool, self.inner.policy.risk())
    }

    /// Whether a job started in the background now would run at once (fewer than
    /// `max_running` run).
    pub fn run_slot_free(&self) -> bool {
        self.inner.jobs.slot_free()
    }

    /// A job as it is now.
    pub fn job(&self, id: Uuid) -> Result<Job, EngineError> {
        Ok(self.inner.jobs.get(id)?)
    }

    /// Waits up to `timeout` for a job to end; returns it as it is then.
    pub async fn wait_job(&self, id: Uuid, timeout: Duration) -> Result<Job, EngineError> {
        Ok(self.inner.jobs.wait(id, timeout).await?)
    }

    /// Cancels a job and returns it once it has stopped.
    pub async fn cancel_job(&self, id: Uuid) -> Result<Job, EngineError> {
        Ok(self.inner.jobs.cancel(id).await?)
    }

    /// Jobs, newest first.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, EngineError> {
        Ok(self.inner.jobs.list(filter)?)
    }

    /// Stops the sweeper and every running job's tasks (they will read as
    /// "interrupted by restart" on the next open) and flushes the database. The
    /// database closes when the last clone of the engine is dropped. If the write
    /// fails, what it did not store is kept: call `close` again once the disk is back.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.inner.shutdown.cancel();
        self.inner.jobs.abandon_all().await;
        self.flush().await
    }

    /// Stores now what was learned since the last write and the job states the store
    /// refused before: what the engine does by itself every second. If the write
    /// fails, what it did not store is kept for the next.
    pub async fn flush(&self) -> Result<(), EngineError> {
        self.persist().await?;
        self.inner.jobs.write_unwritten().await?;
        self.inner.store.flush().await?;
        Ok(())
    }

    /// How the engine treats `tool` (the defaults for one never registered).
    fn options(&self, tool: &str) -> ToolOptions {
        lock(&self.inner.tools)
            .get(tool)
            .cloned()
            .unwrap_or_default()
    }

    /// The decision on a call with these features, against the client's budget;
    /// `count` records it in the tool's counters (a real call) or not (a prediction).
    fn decide(
        &self,
        tool: &str,
        args: &Value,
        features: &Features,
        expensive: bool,
        client: Option<&str>,
        count: bool,
    ) -> Decision {
        let mut knowledge = lock(&self.inner.knowledge);
        let budget = knowledge.clients.budget(client);
        let call = Call {
            tool,
            features,
            async_mode: args
                .get(ASYNC_MODE_ARG)
                .and_then(Value::as_bool)
                .unwrap_or(false),
            expensive,
            budget_s: Some(budget.budget_s),
        };
        let policy = &self.inner.policy;
        if count {
            knowledge.learner.decide(policy, call)
        } else {
            knowledge.learner.predict(policy, call)
        }
    }

    /// The arguments' features, with those of the tool's own extractor.
    async fn features(
        tool: &str,
        args: &Value,
        extractor: Option<Arc<dyn FeatureExtractor>>,
    ) -> Features {
        let mut features = Features::from_args(args);
        if let Some(extractor) = extractor {
            let args = args.clone();
            let base = features.clone();
            // Extractors may touch the disk: keep them off the async threads.
            let extracted = tokio::task::spawn_blocking(move || {
                let mut features = base;
                extractor.extract(&args, &mut features);
                features
            })
            .await;
            match extracted {
                Ok(extended) => features = extended,
                Err(e) => {
                    tracing::warn!(tool, error = %e, "feature extractor failed; using the arguments alone")
                }
            }
        }
        features
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
            call.client.as_deref(),
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
                    if let Some(client) = &call.client {
                        self.client_gave_up(client, runtime_s);
                    }
                    cancel.cancel();
                    let grace = self.inner.jobs.settings().cancel_grace;
                    // Work that honours its token ends here (a command's process group is
                    // killed); the rest is dropped after the grace.
                    let _ = tokio::time::timeout(grace, AssertUnwindSafe(&mut work).catch_unwind()).await;
                    drop(work);
                    return Ok(CallOutcome::Cancelled { decision, runtime_s });
                }
                _ = ctx.progress().reported(), if on_progress.is_some() && !tool_reported => {
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
                            tool: ctx.progress().get(),
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
        let started_ms = now_ms().saturating_sub(started.elapsed().as_millis() as u64);
        let mut job = new_job(call, decision, started_ms, ctx.run_id());
        job.state = JobState::Running;
        job.started_at_ms = Some(started_ms);
        job.promoted = true;
        if let Err(e) = self.inner.jobs.create(&job, &ctx).await {
            cancel.cancel();
            return Err(e.into());
        }
        // The same future, moved to a task of its own: it goes on where it was.
        let grace = self.inner.jobs.settings().cancel_grace;
        let mut work: WorkHandle = tokio::spawn(job_work(work));
        lock(&self.inner.knowledge).learner.promoted(&job.tool);
        let work_abort = work.abort_handle();
        let engine = self.clone();
        let supervised = job.clone();
        // Already running, it cannot wait for a run slot; it takes one if one is free,
        // so background jobs queue behind it rather than beside it.
        let slot = self.inner.jobs.try_slot();
        let supervisor = tokio::spawn(async move {
            let _slot = slot;
            let end = run_to_end(&mut work, &cancel, grace).await;
            engine.finish(supervised, end, started, features).await;
        });
        self.inner
            .jobs
            .attach(job.id, Some(supervisor.abort_handle()), Some(work_abort));
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
            Ok(Err(error)) => (Err(error), Outcome::Failed),
            Err(panic) => (
                Err(RunError::Panicked {
                    message: panic_message(&*panic),
                }),
                Outcome::Failed,
            ),
        };
        self.record(&call.tool, features, runtime_s, outcome, &decision);
        if let Some(client) = &call.client {
            self.client_waited(client, runtime_s);
        }
        CallOutcome::Done {
            result,
            decision,
            runtime_s,
        }
    }

    /// How long a call decided inline may run before it becomes a job: the configured
    /// deadline, never past the budget of the call's client.
    pub fn deadline(&self, decision: &Decision) -> Duration {
        let budget = Duration::from_secs_f64(decision.budget_s);
        self.inner.deadline.map_or(budget, |d| d.min(budget))
    }

    /// The client cancelled an inline call after `elapsed_s`: perhaps its timeout.
    fn client_gave_up(&self, client: &str, elapsed_s: f64) {
        let mut knowledge = lock(&self.inner.knowledge);
        let changed = knowledge
            .clients
            .record_mut(client)
            .observe_cancel(elapsed_s);
        if changed {
            let budget = knowledge.clients.budget(Some(client));
            tracing::info!(client, elapsed_s, budget_s = budget.budget_s, "the client cancels inline calls at about the same time: its budget is lowered below it");
        }
        knowledge.dirty_clients.insert(client.to_owned());
    }

    /// The client waited `runtime_s` for an inline answer, which may contradict the
    /// timeout learned for it.
    fn client_waited(&self, client: &str, runtime_s: f64) {
        // A learned timeout is at least half a second, and only a wait well past it
        // contradicts it: most answers skip the lock.
        if runtime_s < 0.5 {
            return;
        }
        let mut knowledge = lock(&self.inner.knowledge);
        if knowledge.clients.observe_answer(client, runtime_s) {
            tracing::info!(
                client,
                runtime_s,
                "the client waited past its learned timeout: forgotten"
            );
            knowledge.dirty_clients.insert(client.to_owned());
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
        let cancel = ctx.token().clone();
        self.inner.jobs.create(&job, &ctx).await?;
        let engine = self.clone();
        let mut running = job.clone();
        let supervisor = tokio::spawn(async move {
            let jobs = &engine.inner.jobs;
            let Some(_slot) = jobs.acquire_slot(&cancel).await else {
                engine
                    .finish(running, RunEnd::Cancelled, Instant::now(), features)
                    .await;
                return;
            };
            running.state = JobState::Running;
            running.started_at_ms = Some(now_ms());
            // The work starts first: recording that it started waits for the store's
            // writer, which may be flushing, and a cancel that came meanwhile would find
            // the work not yet begun (an upstream not yet asked, say).
            let started = Instant::now();
            let mut work: WorkHandle = tokio::spawn(job_work(work(ctx)));
            jobs.attach(running.id, None, Some(work.abort_handle()));
            if let Err(e) = jobs.update(&running).await {
                tracing::warn!(job = %running.id, error = %e, "could not record that the job started: it is read from memory and written again every second");
            }
            let end = run_to_end(&mut work, &cancel, jobs.settings().cancel_grace).await;
            engine.finish(running, end, started, features).await;
        });
        self.inner
            .jobs
            .attach(job.id, Some(supervisor.abort_handle()), None);
        Ok(CallOutcome::Job { job: Box::new(job) })
    }

    /// Learns from the run, then makes the job's end durable and tells waiters, so a
    /// job reported completed has both its result and its sample on record.
    async fn finish(&self, mut job: Job, end: RunEnd, started: Instant, features: Features) {
        let runtime_s = started.elapsed().as_secs_f64();
        let (state, outcome) = match end {
            RunEnd::Returned(Ok(result)) => (JobState::Completed { result }, Outcome::Completed),
            RunEnd::Returned(Err(error)) => (JobState::Failed { error }, Outcome::Failed),
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
        // A job's sample needs the name shared, as an inline call's has it.
        let tool: Arc<str> = job.tool.as_str().into();
        self.record(&tool, features, runtime_s, outcome, &job.decision);
        if let Err(e) = self.inner.jobs.update(&job).await {
            tracing::error!(job = %job.id, error = %e, "could not store the job's end: it is read from memory and written again every second");
        }
    }

    /// Stores the sample and, for a completed run, teaches the tool's and the pooled
    /// model. Storage failures are logged: they must not cost the caller its result.
    fn record(
        &self,
        tool: &Arc<str>,
        features: Features,
        runtime_s: f64,
        outcome: Outcome,
        decision: &Decision,
    ) {
        let finished_at_ms = now_ms();
        let mut knowledge = lock(&self.inner.knowledge);
        (knowledge.learner).learn(tool, &features, runtime_s, outcome, decision);
        if knowledge.samples.len() >= MAX_PENDING_SAMPLES {
            // The store has been failing for a while: keep the newest.
            knowledge.samples.pop_front();
        }
        knowledge.samples.push_back(Sample {
            tool: tool.clone(),
            features,
            runtime_s,
            outcome,
            finished_at_ms,
        });
    }

    /// Writes the samples and the records that changed since the last write. Called
    /// every [`PERSIST_INTERVAL`] and on close, so a call pays for no write (a sled
    /// insert per call cost more than everything else the engine does for it) and a
    /// crash loses at most that long of learning. What a failed write did not store
    /// goes back for the next one.
    async fn persist(&self) -> Result<(), StoreError> {
        let _persisting = self.inner.persisting.lock().await;
        let mut unwritten = lock(&self.inner.knowledge).take_unwritten();
        let written = self.write(&mut unwritten).await;
        if written.is_err() {
            lock(&self.inner.knowledge).put_back(unwritten);
        }
        written
    }

    /// Writes `unwritten`, samples first. Once they are in, they leave `unwritten`,
    /// so that a failure after them puts back only the records.
    async fn write(&self, unwritten: &mut Unwritten) -> Result<(), StoreError> {
        let store = &self.inner.store;
        // All queued at once, in this order, so they share one flush.
        let samples =
            (!unwritten.samples.is_empty()).then(|| store.append_samples(&unwritten.samples));
        let changed = &unwritten.records;
        let records: Vec<PendingWrite> = (changed.tools.iter())
            .map(|(tool, record)| store.save_record(Some(tool), record))
            .chain(
                changed
                    .pooled
                    .iter()
                    .map(|pooled| store.save_record(None, pooled)),
            )
            .chain((unwritten.clients.iter()).map(|(name, record)| store.save_client(name, record)))
            .collect();
        if let Some(samples) = samples {
            samples.await?;
            unwritten.samples.clear();
        }
        for record in records {
            record.await?;
        }
        Ok(())
    }
}

/// What one write takes out of memory: the pending samples and the records that
/// changed since the last write.
struct Unwritten {
    samples: Vec<Sample>,
    records: Changed,
    clients: Vec<(String, ClientRecord)>,
}

impl Knowledge {
    /// Takes what the next write needs.
    fn take_unwritten(&mut self) -> Unwritten {
        let samples = Vec::from(std::mem::take(&mut self.samples));
        let records = self.learner.take_changed();
        let dirty: Vec<String> = self.dirty_clients.drain().collect();
        let clients = dirty
            .into_iter()
            .map(|name| {
                let record = self.clients.record_mut(&name).clone();
                (name, record)
            })
            .collect();
        Unwritten {
            samples,
            records,
            clients,
        }
    }

    /// Puts back what a failed write did not store: its samples ahead of the ones
    /// recorded since, and its records marked for the next write, which stores their
    /// state by then.
    fn put_back(&mut self, unwritten: Unwritten) {
        let newer = std::mem::replace(&mut self.samples, VecDeque::from(unwritten.samples));
        self.samples.extend(newer);
        // The store has been failing for a while: keep the newest (as `record` does).
        let excess = self.samples.len().saturating_sub(MAX_PENDING_SAMPLES);
        self.samples.drain(..excess);
        self.learner.put_back(&unwritten.records);
        self.dirty_clients
            .extend(unwritten.clients.into_iter().map(|(name, _)| name));
    }
}

/// A call's running work.
type WorkFuture<T> = Pin<Box<dyn Future<Output = Result<T, RunError>> + Send>>;

/// A call's work, boxed once at the door so the paths inside are not generic in it.
pub(crate) type BoxedWork<T> = Box<dyn FnOnce(JobContext) -> WorkFuture<T> + Send>;

/// Work run as a job: its output is kept as JSON.
async fn job_work<T: WorkOutput>(work: WorkFuture<T>) -> Result<Value, RunError> {
    work.await.map(WorkOutput::into_json)
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
        progress: None,
    }
}

/// The rows of a stats report: `tool` alone, or every tool in name order and the
/// pooled model last (as [`POOLED_TOOL`]).
/// Writes changed models every [`PERSIST_INTERVAL`], and prunes jobs and samples
/// every [`SWEEP_INTERVAL`].
async fn sweep(engine: Weak<Inner>, shutdown: CancellationToken) {
    let mut since_start = Duration::ZERO;
    let mut outage = Outage::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERSIST_INTERVAL) => {}
        }
        let Some(inner) = engine.upgrade() else {
            return;
        };
        since_start += PERSIST_INTERVAL;
        let models = Engine {
            inner: inner.clone(),
        }
        .persist()
        .await;
        let jobs = inner.jobs.write_unwritten().await;
        match models.and(jobs) {
            Err(e) => {
                if let Some(down) = outage.failed(since_start) {
                    let pending_samples = lock(&inner.knowledge).samples.len();
                    if down.is_zero() {
                        tracing::warn!(error = %e, pending_samples, "could not store the models and job states: they are kept in memory and tried again every second (this is said again once a minute while it lasts)");
                    } else {
                        tracing::warn!(error = %e, pending_samples, "still cannot store the models and job states, for {} s now: they are kept in memory", down.as_secs());
                    }
                }
            }
            Ok(()) => {
                if let Some(down) = outage.recovered(since_start) {
                    tracing::info!("the database takes writes again after {} s: what was kept in memory is stored", down.as_secs());
                }
            }
        }
        if since_start.as_millis() % SWEEP_INTERVAL.as_millis() != 0 {
            continue;
        }
        if let Err(e) = inner.jobs.prune(now_ms()).await {
            tracing::warn!(error = %e, "could not prune finished jobs");
        }
        let tools: Vec<String> = (lock(&inner.knowledge).learner.tools())
            .map(str::to_owned)
            .collect();
        for tool in tools {
            let pruned = inner
                .store
                .prune_samples(&tool, inner.max_samples_per_tool)
                .await;
            if let Err(e) = pruned {
                tracing::warn!(tool, error = %e, "could not prune samples");
            }
        }
    }
}

/// The store refusing the periodic writes, as the sweeper reports it: at the first
/// failure, then once a minute, and when it takes writes again. A full disk should not
/// also fill with the same warning every second.
#[derive(Debug, Default)]
struct Outage {
    /// When the first write of this outage failed, and when it was last reported.
    failing: Option<(Duration, Duration)>,
}

/// How often an outage is reported while it lasts.
const OUTAGE_REPORT_INTERVAL: Duration = Duration::from_secs(60);

impl Outage {
    /// A write failed at `now`: how long the store has refused writes (zero at the
    /// first failure), when this failure is one to report.
    fn failed(&mut self, now: Duration) -> Option<Duration> {
        match &mut self.failing {
            None => {
                self.failing = Some((now, now));
                Some(Duration::ZERO)
            }
            Some((since, reported)) if now.saturating_sub(*reported) >= OUTAGE_REPORT_INTERVAL => {
                *reported = now;
                Some(now.saturating_sub(*since))
            }
            Some(_) => None,
        }
    }

    /// A write succeeded at `now`: how long the store had refused writes, if it had.
    fn recovered(&mut self, now: Duration) -> Option<Duration> {
        self.failing
            .take()
            .map(|(since, _)| now.saturating_sub(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_at_once_then_once_a_minute_and_at_its_end() {
        let mut outage = Outage::default();
        let at = Duration::from_secs;
        assert_eq!(outage.recovered(at(1)), None, "no outage, nothing to say");
        assert_eq!(outage.failed(at(10)), Some(at(0)));
        let reported: Vec<Duration> = (11..=130).filter_map(|s| outage.failed(at(s))).collect();
        assert_eq!(reported, [at(60), at(120)], "minutes into the outage");
        assert_eq!(outage.recovered(at(131)), Some(at(121)));
        assert_eq!(outage.recovered(at(132)), None);
        assert_eq!(outage.failed(at(200)), Some(at(0)), "a new outage");
    }
}
