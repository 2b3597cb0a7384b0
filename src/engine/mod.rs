//! The engine: the shell around the pure core. It extracts a call's features, has the
//! learner decide it against its client's budget, runs it (`call`: inline up to the
//! deadline, or as a job), learns every finished run, and keeps what it learned in
//! memory for the next decision and in the [`Store`] for the next process
//! (`persist`).

mod call;
mod persist;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clients::{record_key, ClientBudget, ClientBudgets, ClientStats};
use crate::features::{FeatureExtractor, Features, ASYNC_MODE_ARG};
use crate::jobs::{now_ms, Job, JobContext, JobError, JobFilter, JobSettings, Jobs};
use crate::learner::Learner;
use crate::lock::lock;
use crate::policy::{
    Call, Decision, Policy, PolicyError, StaticTable, DEFAULT_BUDGET_S, DEFAULT_POLL_COST_S,
};
use crate::principal::Principal;
use crate::run_error::RunError;
use crate::stats::{Outcome, StatsReport, ToolStats};
use crate::store::{Sample, Store, StoreError, DEFAULT_CACHE_BYTES};
pub(crate) use call::{BoxedWork, CallFuture};
pub use call::{
    CallOutcome, HearProgress, InlineProgress, ProgressSink, ToolCall, WorkOutput,
    PROGRESS_INTERVAL, PROGRESS_MIN_GAP,
};
use persist::{sweep, MAX_PENDING_SAMPLES};

/// Everything the engine is configured with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// Seconds a call may take inline (see [`DEFAULT_BUDGET_S`]).
    pub budget_s: f64,
    /// Seconds an inline call runs before it is promoted to a job; the budget if unset.
    pub deadline_s: Option<f64>,
    /// Share of runtimes allowed above the predicted bound, fixed; `None` (the
    /// default) takes each call's break-even risk from its budget and the poll cost
    /// ([`crate::break_even_risk`]).
    pub risk: Option<f64>,
    /// Seconds a call sent to the background needlessly costs its caller (one poll),
    /// which the break-even risk weighs (see [`DEFAULT_POLL_COST_S`]).
    pub poll_cost_s: f64,
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
    /// The policy these settings make.
    fn policy(&self) -> Result<Policy, PolicyError> {
        let table = self.static_table.clone();
        match self.risk {
            Some(risk) => {
                Policy::new(self.budget_s, risk, table)?.with_poll_cost_s(self.poll_cost_s)
            }
            None => Policy::break_even(self.budget_s, self.poll_cost_s, table),
        }
    }

    /// The defaults, with the database in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            budget_s: DEFAULT_BUDGET_S,
            deadline_s: None,
            risk: None,
            poll_cost_s: DEFAULT_POLL_COST_S,
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
        let policy = config.policy()?;
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

    /// What the engine would decide for this call, without running or counting it.
    pub async fn predict(&self, tool: &str, args: &Value) -> Decision {
        let options = self.options(tool);
        let features = Engine::features(tool, args, options.extractor).await;
        self.decide(tool, args, &features, options.expensive, None, false)
    }

    /// The budget `client`'s calls are decided against (`None`: an unnamed client).
    pub fn client_budget(&self, client: Option<&str>) -> ClientBudget {
        self.client_budget_of(client, &Principal::Local)
    }

    /// The budget `client`'s calls made for `owner` are decided against: what one
    /// principal's cancels taught is not another's.
    pub fn client_budget_of(&self, client: Option<&str>, owner: &Principal) -> ClientBudget {
        let key = client.map(|client| record_key(client, owner));
        lock(&self.inner.knowledge).clients.budget(key.as_deref())
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
            tools: Learner::new(tools, pooled).stats(tool, config.policy()?.risk()),
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
}
