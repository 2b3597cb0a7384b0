//! The engine's call path on a real sled database in a temp dir: inline answers,
//! promotion at the deadline, background jobs, cancellation, failures and learning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use smart_async::break_even_risk;
use smart_async::{
    BudgetSource, CallOutcome, Engine, EngineConfig, EngineError, Features, InlineProgress, Job,
    JobError, JobFilter, JobOutput, JobSettings, JobState, JobStatus, Mode, Progress, RunError,
    RuntimeModel, Source, ToolCall, ToolOptions,
};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

async fn engine_with(config: impl FnOnce(&mut EngineConfig)) -> (Engine, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = EngineConfig::new(dir.path());
    config(&mut settings);
    (Engine::open(settings).await.unwrap(), dir)
}

/// Work that sleeps `seconds` (on tokio's clock) and returns them.
fn sleeper(
    seconds: f64,
) -> impl FnOnce(
    smart_async::JobContext,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, RunError>> + Send>> {
    move |_ctx| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok(json!({ "slept_s": seconds }))
        })
    }
}

fn expect_job(outcome: CallOutcome) -> Job {
    match outcome {
        CallOutcome::Job { job } => *job,
        CallOutcome::Done { decision, .. } => {
            panic!("expected a job, ran inline: {}", decision.reason())
        }
        CallOutcome::Cancelled { runtime_s, .. } => {
            panic!("expected a job, was cancelled after {runtime_s} s")
        }
    }
}

fn expect_done(outcome: CallOutcome) -> (Result<Value, RunError>, f64) {
    match outcome {
        CallOutcome::Done {
            result, runtime_s, ..
        } => (result, runtime_s),
        CallOutcome::Job { job } => panic!("expected inline, got job: {}", job.decision.reason()),
        CallOutcome::Cancelled { runtime_s, .. } => {
            panic!("expected inline, was cancelled after {runtime_s} s")
        }
    }
}

#[tokio::test]
async fn work_that_overruns_the_deadline_is_promoted_and_its_runtime_learned() {
    let (engine, _dir) = engine_with(|c| c.deadline_s = Some(0.2)).await;
    let started = std::time::Instant::now();
    let outcome = engine
        .call(ToolCall::new("slow", json!({"n": 1})), sleeper(1.0))
        .await
        .unwrap();
    let returned_after = started.elapsed();
    let job = expect_job(outcome);
    assert!(job.promoted);
    assert_eq!(
        job.status(),
        JobStatus::Running,
        "handed back before the work ended"
    );
    assert!(
        returned_after >= Duration::from_millis(200),
        "{returned_after:?}"
    );
    assert_eq!(job.decision.mode, Mode::Inline, "it was decided inline");

    let done = engine
        .wait_job(job.id, Duration::from_secs(10))
        .await
        .unwrap();
    match &done.state {
        JobState::Completed { result } => {
            assert_eq!(result, &JobOutput::from(json!({"slept_s": 1.0})))
        }
        other => panic!("{other:?}"),
    }
    let runtime_s = done.elapsed_s(0).unwrap();
    assert!(
        runtime_s >= 1.0,
        "the job's timing covers the whole run: {runtime_s}"
    );
    let stats = &engine.stats(Some("slow"))[0];
    assert_eq!(
        (stats.samples, stats.promotions, stats.completed),
        (1, 1, 1)
    );
    // Nothing ran twice: one decision, one run.
    assert_eq!(stats.decisions.iter().map(|(_, n)| n).sum::<u64>(), 1);
}

#[tokio::test]
async fn a_short_call_answers_inline_with_its_result() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let outcome = engine
        .call(ToolCall::new("add", json!({"a": 2, "b": 3})), |_| async {
            Ok(json!(5))
        })
        .await
        .unwrap();
    let (result, _) = expect_done(outcome);
    assert_eq!(result, Ok(json!(5)));
    assert!(
        engine.list_jobs(&JobFilter::default()).unwrap().is_empty(),
        "no job for an inline answer"
    );
}

#[tokio::test]
async fn async_mode_true_runs_in_the_background_and_the_result_can_be_awaited() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let job = expect_job(
        engine
            .call(ToolCall::new("t", json!({"async_mode": true})), |_| async {
                Ok(json!("done"))
            })
            .await
            .unwrap(),
    );
    assert_eq!(job.decision.source, Source::Explicit);
    assert!(!job.promoted);
    // Durable before the handle came back.
    assert_eq!(engine.job(job.id).unwrap().id, job.id);
    let done = engine
        .wait_job(job.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        done.state,
        JobState::Completed {
            result: json!("done").into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn learns_runtime_from_arguments_and_sends_a_predicted_long_call_to_the_background() {
    let (engine, _dir) = engine_with(|_| {}).await;
    // 0.5 s per MB, up to 40 MB: all within the 50 s budget, so all inline.
    for i in 0..30 {
        let mb = 1.0 + (i % 10) as f64 * 4.0;
        let outcome = engine
            .call(
                ToolCall::new("scan", json!({ "mb": mb })),
                sleeper(0.5 * mb),
            )
            .await
            .unwrap();
        let (result, runtime_s) = expect_done(outcome);
        assert!(result.is_ok());
        assert!(
            (runtime_s - 0.5 * mb).abs() < 0.05,
            "measured on tokio's clock: {runtime_s}"
        );
    }
    let stats = &engine.stats(Some("scan"))[0];
    assert_eq!(stats.state, "warm");
    assert!(stats.effects[0].elasticity > 0.8, "{:?}", stats.effects);

    let big = engine.predict("scan", &json!({"mb": 400})).await;
    assert_eq!(
        (big.mode, big.source),
        (Mode::Background, Source::Learned),
        "{}",
        big.reason()
    );
    assert!(
        big.reason().starts_with("learned: predicted "),
        "{}",
        big.reason()
    );
    // Ten times past anything it has seen: within a factor of two is a good guess.
    let predicted = big.predicted_s.unwrap();
    assert!(
        (100.0..400.0).contains(&predicted),
        "predicted {predicted} s for 200 s of work"
    );
    let small = engine.predict("scan", &json!({"mb": 2})).await;
    assert_eq!(
        (small.mode, small.source),
        (Mode::Inline, Source::Learned),
        "{}",
        small.reason()
    );

    // And a real call follows the prediction.
    let job = expect_job(
        engine
            .call(ToolCall::new("scan", json!({"mb": 400})), sleeper(200.0))
            .await
            .unwrap(),
    );
    assert!(!job.promoted);
    let done = wait_ended(&engine, &job).await;
    assert_eq!(done.status(), JobStatus::Completed);
    let stats = &engine.stats(Some("scan"))[0];
    assert_eq!(stats.samples, 31);
    assert_eq!(stats.needless_backgrounds, 0);
    // Calibration scores exactly the bounds that decided calls: every run the tool's
    // own model decided, the job among them, and none of the cold ones before.
    let learned = stats
        .decisions
        .iter()
        .find(|(source, _)| source == "learned")
        .map_or(0, |(_, n)| *n);
    assert!(learned > 10, "{:?}", stats.decisions);
    assert_eq!(stats.checked_predictions, learned);
    assert_eq!(stats.coverage, Some(1.0), "the runtimes are exact");
}

#[tokio::test(start_paused = true)]
async fn a_cold_tool_borrows_the_pooled_model() {
    let (engine, _dir) = engine_with(|_| {}).await;
    for i in 0..12 {
        let tool = format!("slow_tool_{}", i % 6);
        engine
            .call(ToolCall::new(tool, json!({})), sleeper(45.0))
            .await
            .unwrap();
    }
    let decision = engine.predict("brand_new", &json!({})).await;
    assert_eq!(decision.source, Source::Pooled, "{}", decision.reason());
    assert!(engine
        .stats(None)
        .iter()
        .any(|s| s.tool == "*" && s.state == "warm"));
}

/// The pooled model is taught in a batch when a cold tool's decision, a report or a
/// write needs it: it must still be exactly the model taught every completed run in
/// order, warm tools' runs too, across the once-a-second writes in between.
#[tokio::test(start_paused = true)]
async fn the_pooled_model_is_taught_every_completed_run_in_order() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let mut reference = RuntimeModel::new(false);
    for i in 0..40 {
        let args = json!({ "n": i % 5 });
        let seconds = 1.0 + f64::from(i % 5);
        engine
            .call(ToolCall::new("warm_tool", args.clone()), sleeper(seconds))
            .await
            .unwrap();
        reference.observe(&Features::from_args(&args), seconds);
    }
    let args = json!({ "n": 3 });
    let decision = engine.predict("cold_tool", &args).await;
    assert_eq!(decision.source, Source::Pooled, "{}", decision.reason());
    let expected = reference
        .predict(&Features::from_args(&args), break_even_risk(50.0, 5.0))
        .unwrap();
    assert_eq!(decision.predicted_s, Some(expected.median_s));
    assert_eq!(decision.upper_bound_s, Some(expected.upper_bound_s));
    let stats = engine.stats(None);
    let pooled = stats.iter().find(|s| s.tool == "*").unwrap();
    assert_eq!(pooled.samples, 40);
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_work_and_teaches_only_a_lower_bound() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    let job = expect_job(
        engine
            .call(
                ToolCall::new("loop", json!({"async_mode": true})),
                move |ctx| async move {
                    ctx.cancelled().await;
                    flag.store(true, Ordering::SeqCst);
                    Err(RunError::Cancelled)
                },
            )
            .await
            .unwrap(),
    );
    wait_for_status(&engine, &job, JobStatus::Running).await;
    let cancelled = engine.cancel_job(job.id).await.unwrap();
    assert_eq!(
        cancelled.status(),
        JobStatus::Cancelled,
        "never reported completed or failed"
    );
    assert!(
        stopped.load(Ordering::SeqCst),
        "the work saw the cancellation"
    );
    let stats = &engine.stats(Some("loop"))[0];
    // Only what it had run is taught, as a lower bound (issue 18).
    assert_eq!(stats.cancelled, 1);
    assert_eq!(stats.samples, stats.censored, "{stats:?}");

    match engine.cancel_job(job.id).await {
        Err(EngineError::Job(JobError::Finished { status, .. })) => {
            assert_eq!(status, JobStatus::Cancelled)
        }
        other => panic!("{other:?}"),
    }
}

async fn wait_for_status(engine: &Engine, job: &Job, status: JobStatus) {
    for _ in 0..500 {
        if engine.job(job.id).unwrap().status() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        real_moment().await;
    }
    panic!("job never reached {status:?}");
}

/// Waits for a job to end, on the paused clock too. The store writes on a thread of
/// its own, in real time, and while a test waits for such a write the paused clock
/// jumps to the next timer: so wait in short steps, each with a moment of real time.
async fn wait_ended(engine: &Engine, job: &Job) -> Job {
    for _ in 0..10_000 {
        let now = engine
            .wait_job(job.id, Duration::from_secs(1))
            .await
            .unwrap();
        if now.status().is_terminal() {
            return now;
        }
        real_moment().await;
    }
    panic!("job {} never ended", job.id);
}

/// A millisecond of real time, during which the paused clock stands still (a blocking
/// task holds it).
async fn real_moment() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
        .await
        .unwrap();
}

// On the real clock: the cancelled state's write is real I/O, during which a paused
// clock would run the cancel's wait out.
#[tokio::test]
async fn work_that_ignores_cancellation_is_aborted_after_the_grace() {
    let (engine, _dir) = engine_with(|c| c.jobs.cancel_grace = Duration::from_secs(2)).await;
    let job = expect_job(
        engine
            .call(
                ToolCall::new("stubborn", json!({"async_mode": true})),
                sleeper(3600.0),
            )
            .await
            .unwrap(),
    );
    wait_for_status(&engine, &job, JobStatus::Running).await;
    let cancelled = engine.cancel_job(job.id).await.unwrap();
    assert_eq!(cancelled.status(), JobStatus::Cancelled);
}

/// Issue 16: what `max_running` means for a promoted call, as `JobSettings` says. It
/// is already running, so it is never paused: it takes a free slot (and a job started
/// after it waits), and with no slot free it runs beside the limit.
#[tokio::test]
async fn a_promoted_call_takes_a_free_slot_and_is_never_held_back_by_the_limit() {
    let (engine, _dir) = engine_with(|c| {
        c.deadline_s = Some(0.2);
        c.jobs = JobSettings {
            max_running: 1,
            ..JobSettings::default()
        }
    })
    .await;
    let gated = |gate: &Arc<tokio::sync::Notify>| {
        let gate = gate.clone();
        move |_| async move {
            gate.notified().await;
            Ok(json!("done"))
        }
    };
    // A promoted call takes the free slot: the job started after it waits.
    let promoted_gate = Arc::new(tokio::sync::Notify::new());
    let call = ToolCall::new("long", json!({}));
    let promoted = expect_job(engine.call(call, gated(&promoted_gate)).await.unwrap());
    assert!(promoted.promoted);
    let queued = expect_job(
        engine
            .call(ToolCall::new("t", json!({"async_mode": true})), |_| async {
                Ok(json!(2))
            })
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.job(queued.id).unwrap().status(), JobStatus::Pending);
    promoted_gate.notify_one();
    let done = engine
        .wait_job(queued.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status(), JobStatus::Completed);

    // With the slot held by a background job, a call promoted now runs beside it.
    let holder_gate = Arc::new(tokio::sync::Notify::new());
    let holder = expect_job(
        engine
            .call(
                ToolCall::new("t", json!({"async_mode": true})),
                gated(&holder_gate),
            )
            .await
            .unwrap(),
    );
    wait_for_status(&engine, &holder, JobStatus::Running).await;
    let beside_gate = Arc::new(tokio::sync::Notify::new());
    let call = ToolCall::new("long", json!({}));
    let beside = expect_job(engine.call(call, gated(&beside_gate)).await.unwrap());
    assert!(beside.promoted);
    assert_eq!(engine.job(beside.id).unwrap().status(), JobStatus::Running);
    beside_gate.notify_one();
    let done = engine
        .wait_job(beside.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        done.status(),
        JobStatus::Completed,
        "it ran beside the limit"
    );
    holder_gate.notify_one();
    engine
        .wait_job(holder.id, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn jobs_over_the_concurrency_limit_wait_as_pending() {
    let (engine, _dir) = engine_with(|c| {
        c.jobs = JobSettings {
            max_running: 1,
            ..JobSettings::default()
        }
    })
    .await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let first_gate = gate.clone();
    let first = expect_job(
        engine
            .call(
                ToolCall::new("t", json!({"async_mode": true})),
                move |_| async move {
                    first_gate.notified().await;
                    Ok(json!(1))
                },
            )
            .await
            .unwrap(),
    );
    wait_for_status(&engine, &first, JobStatus::Running).await;
    let second = expect_job(
        engine
            .call(ToolCall::new("t", json!({"async_mode": true})), |_| async {
                Ok(json!(2))
            })
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.job(second.id).unwrap().status(), JobStatus::Pending);
    assert_eq!(
        engine.job(second.id).unwrap().eta_s(0),
        None,
        "nothing was predicted"
    );
    gate.notify_one();
    let done = engine
        .wait_job(second.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        done.state,
        JobState::Completed {
            result: json!(2).into()
        }
    );
    let pending = engine
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Completed),
            tool: Some("t".into()),
            limit: Some(1),
            ..JobFilter::default()
        })
        .unwrap();
    assert_eq!(pending.len(), 1);
}

#[tokio::test]
async fn failures_and_panics_are_reported_counted_and_not_taught() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let (result, _) = expect_done(
        engine
            .call(ToolCall::new("flaky", json!({})), |_| async {
                Err("disk full".into())
            })
            .await
            .unwrap(),
    );
    assert_eq!(result, Err(RunError::tool("disk full")));
    let job = expect_job(
        engine
            .call(
                ToolCall::new("flaky", json!({"async_mode": true})),
                |_| async { panic!("bad index") },
            )
            .await
            .unwrap(),
    );
    let done = engine
        .wait_job(job.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        done.state,
        JobState::Failed {
            error: RunError::Panicked {
                message: "bad index".into()
            }
        }
    );
    let stats = &engine.stats(Some("flaky"))[0];
    assert_eq!((stats.samples, stats.failed), (0, 2));
}

#[tokio::test]
async fn dropping_an_inline_call_stops_its_work_and_fires_its_token() {
    let (engine, _dir) = engine_with(|_| {}).await;
    // The work hands its token to a helper thread, as blocking work does, then waits.
    let (token_tx, token_rx) = std::sync::mpsc::channel();
    let (alive_tx, alive_rx) = tokio::sync::oneshot::channel::<()>();
    let call = engine.call(ToolCall::new("t", json!({})), move |ctx| async move {
        let _alive = alive_tx; // dropped with the work
        let _ = token_tx.send(ctx.token().clone());
        std::future::pending::<()>().await;
        Ok(Value::Null)
    });
    let _ = tokio::time::timeout(Duration::from_millis(100), call).await;
    let token = token_rx.recv().unwrap();
    assert!(token.is_cancelled(), "the helper thread is told to stop");
    assert!(alive_rx.await.is_err(), "the work itself was dropped");
}

#[tokio::test]
async fn unknown_job_ids_get_a_clear_error() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let id = uuid::Uuid::new_v4();
    let err = engine.job(id).unwrap_err();
    assert!(
        err.to_string().contains(&format!("no job with id {id}")),
        "{err}"
    );
    assert!(matches!(
        engine.cancel_job(id).await,
        Err(EngineError::Job(JobError::NotFound(_)))
    ));
}

#[tokio::test]
async fn an_expensive_tool_goes_to_the_background_until_learned() {
    let (engine, _dir) = engine_with(|_| {}).await;
    engine.register_tool(
        "review",
        ToolOptions {
            expensive: true,
            extractor: None,
        },
    );
    let decision = engine.predict("review", &json!({})).await;
    assert_eq!(
        (decision.mode, decision.source),
        (Mode::Background, Source::Static)
    );
    assert_eq!(
        decision.reason(),
        "static: tool 'review' is marked expensive"
    );
}

#[tokio::test]
async fn a_tool_extractor_adds_features_the_arguments_do_not_show() {
    struct Bytes;
    impl smart_async::FeatureExtractor for Bytes {
        fn extract(&self, args: &Value, features: &mut smart_async::Features) {
            if args.get("path").is_some() {
                features.insert(
                    "path.bytes",
                    50.0 * 1024.0 * 1024.0,
                    smart_async::FeatureKind::Custom,
                );
            }
        }
    }
    let (engine, _dir) = engine_with(|_| {}).await;
    engine.register_tool(
        "hash",
        ToolOptions {
            expensive: false,
            extractor: Some(Arc::new(Bytes)),
        },
    );
    let decision = engine.predict("hash", &json!({"path": "big"})).await;
    assert_eq!(decision.source, Source::Static, "{}", decision.reason());
    assert!(
        decision.reason().contains("path.bytes"),
        "{}",
        decision.reason()
    );
}

#[tokio::test]
async fn bad_settings_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.budget_s = -1.0;
    let err = Engine::open(config).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("budget -1 s is not a positive number"),
        "{err}"
    );
    let mut config = EngineConfig::new(dir.path());
    config.deadline_s = Some(0.0);
    assert!(matches!(
        Engine::open(config).await,
        Err(EngineError::Deadline(_))
    ));
    // A poll that costs nothing would make every background free (issue 18).
    for poll_cost_s in [0.0, f64::NAN] {
        let mut config = EngineConfig::new(dir.path());
        config.poll_cost_s = poll_cost_s;
        let err = Engine::open(config).await.unwrap_err();
        assert!(err.to_string().contains("poll cost"), "{err}");
        assert!(err.to_string().contains("use for example 5"), "{err}");
    }
}

/// An inline call of `client` that the caller cancels after `after_s`.
async fn cancelled_inline_call(engine: &Engine, client: &str, after_s: f64) -> CallOutcome {
    let cancel = CancellationToken::new();
    let mut call = ToolCall::new("slow", json!({"n": 10}));
    call.client = Some(client.into());
    call.cancel = Some(cancel.clone());
    let timer = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(after_s)).await;
        timer.cancel();
    });
    engine.call(call, sleeper(30.0)).await.unwrap()
}

#[tokio::test]
async fn a_caller_cancel_stops_inline_work_and_is_taught_only_as_a_lower_bound() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let cancel = CancellationToken::new();
    let (token_tx, token_rx) = tokio::sync::oneshot::channel();
    let mut call = ToolCall::new("t", json!({}));
    call.cancel = Some(cancel.clone());
    let caller = engine.clone();
    let running = tokio::spawn(async move {
        caller
            .call(call, move |ctx| async move {
                let _ = token_tx.send(ctx.token().clone());
                ctx.cancelled().await;
                Ok(json!("finished anyway"))
            })
            .await
    });
    let token = token_rx.await.unwrap();
    cancel.cancel();
    let outcome = running.await.unwrap().unwrap();
    assert!(
        matches!(outcome, CallOutcome::Cancelled { .. }),
        "work that returns after the cancel is still reported cancelled: {outcome:?}"
    );
    assert!(token.is_cancelled(), "the work was told to stop");
    let stats = &engine.stats(Some("t"))[0];
    assert_eq!(stats.cancelled, 1);
    assert_eq!(
        stats.samples, stats.censored,
        "taught only as a lower bound: {stats:?}"
    );
}

#[tokio::test]
async fn a_client_that_keeps_cancelling_at_the_same_time_gets_a_budget_below_it() {
    let (engine, dir) = engine_with(|_| {}).await;
    for _ in 0..3 {
        let outcome = cancelled_inline_call(&engine, "impatient", 0.6).await;
        assert!(
            matches!(outcome, CallOutcome::Cancelled { .. }),
            "{outcome:?}"
        );
    }
    let budget = engine.client_budget(Some("impatient"));
    assert_eq!(budget.source, BudgetSource::Learned);
    assert!(budget.budget_s < 0.6 && budget.budget_s > 0.3, "{budget:?}");
    assert_eq!(engine.client_budget(Some("patient")).budget_s, 50.0);
    let shown = engine.client_stats();
    let impatient = shown.iter().find(|c| c.name == "impatient").unwrap();
    assert_eq!(impatient.inline_cancels, 3);
    assert!(impatient.learned_timeout_s.unwrap() >= 0.6);

    // Its next long call is promoted at its own budget, not the server's 50 s.
    let mut call = ToolCall::new("slow", json!({"n": 10}));
    call.client = Some("impatient".into());
    let job = expect_job(engine.call(call, sleeper(2.0)).await.unwrap());
    assert!(job.promoted);
    assert!((job.decision.budget_s - budget.budget_s).abs() < 1e-9);
    engine.cancel_job(job.id).await.unwrap();

    // What the client showed survives a restart.
    engine.close().await.unwrap();
    drop(engine);
    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    assert_eq!(
        engine.client_budget(Some("impatient")).source,
        BudgetSource::Learned
    );
}

#[tokio::test]
async fn a_configured_client_budget_decides_its_calls() {
    let (engine, _dir) = engine_with(|c| {
        c.client_budgets.insert("Quick-Client".to_owned(), 0.3);
    })
    .await;
    let mut call = ToolCall::new("slow", json!({}));
    call.client = Some("quick-client".into());
    let job = expect_job(engine.call(call, sleeper(1.0)).await.unwrap());
    assert!(job.promoted && job.decision.budget_s == 0.3);
    let (result, _) = expect_done(
        engine
            .call(ToolCall::new("slow", json!({})), sleeper(0.5))
            .await
            .unwrap(),
    );
    assert!(result.is_ok(), "other clients keep the server's budget");
    let err = Engine::open({
        let mut config = EngineConfig::new(tempfile::tempdir().unwrap().path());
        config.client_budgets.insert("c".to_owned(), -1.0);
        config
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("client 'c'") && err.contains("positive"),
        "{err}"
    );
}

/// A call of `tool` whose progress is kept in the list returned beside it.
fn listened_call(tool: &str) -> (ToolCall, Arc<Mutex<Vec<InlineProgress>>>) {
    let heard = Arc::new(Mutex::new(Vec::<InlineProgress>::new()));
    let mut call = ToolCall::new(tool, json!({}));
    let sink = heard.clone();
    call.on_progress = Some(Arc::new(move |p| sink.lock().unwrap().push(p)));
    (call, heard)
}

#[tokio::test]
async fn an_inline_call_reports_progress_while_it_runs() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let (call, heard) = listened_call("t");
    let outcome = engine
        .call(call, |ctx| async move {
            ctx.report_progress(Progress {
                done: 1.0,
                total: Some(4.0),
                message: None,
            });
            tokio::time::sleep(Duration::from_secs_f64(3.2)).await;
            Ok(Value::Null)
        })
        .await
        .unwrap();
    assert_eq!(expect_done(outcome).0, Ok(Value::Null));
    let heard = heard.lock().unwrap();
    assert!(heard.len() >= 2, "one report a second: {heard:?}");
    assert!(heard.windows(2).all(|w| w[1].elapsed_s > w[0].elapsed_s));
    assert_eq!(heard[0].tool.as_ref().unwrap().to_string(), "1 of 4");
}

/// Issue 15: a tool's report waited for the next second's tick, so a tool that reports
/// three steps in half a second sent its client one notification, or none. Now each
/// report is passed on as it comes, but not sooner than 100 ms after the last.
#[tokio::test]
async fn a_tools_report_reaches_the_caller_at_once_and_a_flood_of_them_does_not() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let (call, heard) = listened_call("steps");
    let outcome = engine
        .call(call, |ctx| async move {
            for step in 0..3 {
                ctx.report_progress(Progress {
                    done: f64::from(step),
                    total: Some(3.0),
                    message: None,
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    assert_eq!(expect_done(outcome).0, Ok(Value::Null));
    let steps: Vec<String> = heard
        .lock()
        .unwrap()
        .iter()
        .filter_map(|p| p.tool.as_ref().map(ToString::to_string))
        .collect();
    assert_eq!(steps, ["0 of 3", "1 of 3", "2 of 3"], "each step, in 0.6 s");

    let (call, heard) = listened_call("flood");
    let started = std::time::Instant::now();
    engine
        .call(call, |ctx| async move {
            for step in 0..500 {
                ctx.report_progress(Progress {
                    done: f64::from(step),
                    total: None,
                    message: None,
                });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(Value::Null)
        })
        .await
        .unwrap();
    let elapsed_ms = started.elapsed().as_millis();
    let heard = heard.lock().unwrap();
    assert!(
        heard.len() as u128 <= elapsed_ms / 100 + 1,
        "{} notifications in {elapsed_ms} ms",
        heard.len()
    );
    assert!(heard.windows(2).all(|w| w[1].elapsed_s > w[0].elapsed_s));
}

/// Regression (issue 14, break 11): `list_jobs` read every stored job while their states
/// changed, so one list could show a job that had ended as still running beside the job
/// that took its slot (5 running with a limit of 4). Each list is the table at one
/// moment now: never more running than the limit, and every job listed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_11_a_job_list_is_one_moment_never_more_running_than_the_limit() {
    let (engine, _dir) = engine_with(|c| c.jobs.max_running = 2).await;
    let mut handles = Vec::new();
    for i in 0..120 {
        let job = expect_job(
            engine
                .call(
                    ToolCall::new("short", json!({ "async_mode": true, "i": i })),
                    sleeper(0.005),
                )
                .await
                .unwrap(),
        );
        handles.push(job);
    }
    let mut lists = 0;
    loop {
        let jobs = engine.list_jobs(&JobFilter::default()).unwrap();
        lists += 1;
        assert_eq!(jobs.len(), 120, "every job listed once");
        let running = jobs
            .iter()
            .filter(|job| job.status() == JobStatus::Running)
            .count();
        assert!(running <= 2, "{running} running with a limit of 2");
        if jobs.iter().all(|job| job.status().is_terminal()) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(lists > 1, "the lists were taken while jobs ran");
    let newest_first: Vec<_> = engine
        .list_jobs(&JobFilter {
            limit: Some(3),
            ..JobFilter::default()
        })
        .unwrap()
        .iter()
        .map(|job| job.id)
        .collect();
    let mut by_creation = handles.clone();
    by_creation.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
    let expected: Vec<_> = by_creation.iter().take(3).map(|job| job.id).collect();
    assert_eq!(newest_first, expected);
}

/// Issue 15: `Engine::open` slept on the runtime's thread while it waited for the
/// database's lock, so nothing else on a current-thread runtime ran meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn opening_a_locked_database_does_not_block_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let _holder = smart_async::Store::open(dir.path(), 1 << 20).unwrap();
    let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let opened = Engine::open(EngineConfig::new(dir.path())).await;
    let ticked = ticks.load(Ordering::SeqCst);
    ticker.abort();
    assert!(
        matches!(
            opened,
            Err(EngineError::Store(smart_async::StoreError::InUse { .. }))
        ),
        "{:?}",
        opened.err()
    );
    assert!(
        ticked > 1,
        "another task ran while the open waited ({ticked} ticks)"
    );
}

/// Issue 16: a job's task handles were attached after it was spawned (the work's after
/// it got a run slot), so closing at the wrong moment could leave work running. Now a
/// job's one task exists from its creation: closing the engine with a running, a
/// pending and a promoted job drops all three works at once, and the next open reads
/// each as interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_drops_the_work_of_running_pending_and_promoted_jobs_and_reopening_reads_them_interrupted(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.deadline_s = Some(0.2);
    config.jobs = JobSettings {
        max_running: 1,
        ..JobSettings::default()
    };
    let engine = Engine::open(config.clone()).await.unwrap();
    let dropped: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
    let endless = |dropped: &CancellationToken| {
        let guard = dropped.clone().drop_guard();
        move |_ctx| async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(json!("never"))
        }
    };
    let background = || ToolCall::new("t", json!({"async_mode": true}));
    let running = expect_job(
        engine
            .call(background(), endless(&dropped[0]))
            .await
            .unwrap(),
    );
    wait_for_status(&engine, &running, JobStatus::Running).await;
    let pending = expect_job(
        engine
            .call(background(), endless(&dropped[1]))
            .await
            .unwrap(),
    );
    let promoted = expect_job(
        engine
            .call(ToolCall::new("u", json!({})), endless(&dropped[2]))
            .await
            .unwrap(),
    );
    assert!(promoted.promoted);
    assert_eq!(engine.job(pending.id).unwrap().status(), JobStatus::Pending);
    engine.close().await.unwrap();
    for (which, token) in ["running", "pending", "promoted"].iter().zip(&dropped) {
        assert!(
            token.is_cancelled(),
            "the {which} job's work outlived close"
        );
    }
    drop(engine);
    let engine = Engine::open(config).await.unwrap();
    for job in [&running, &pending, &promoted] {
        let state = engine.job(job.id).unwrap().state;
        assert_eq!(
            state,
            JobState::Failed {
                error: RunError::Interrupted
            },
            "{}",
            job.id
        );
    }
    // What the cut-off jobs had run was learned at close as a lower bound (issue 18):
    // the running job and the promoted call, each at least the 0.2 s it ran; the pending
    // job never ran and teaches nothing.
    let t = &engine.stats(Some("t"))[0];
    assert_eq!((t.samples, t.censored), (1, 1), "{t:?}");
    assert!(t.intercept_ln.is_some_and(|ln| ln.exp() >= 0.2), "{t:?}");
    let u = &engine.stats(Some("u"))[0];
    assert_eq!((u.samples, u.censored), (1, 1), "{u:?}");
    engine.close().await.unwrap();
}

/// Censored learning (issue 18): a tool whose every call is cancelled at 0.3 s (by its
/// user, once it became a job at the 0.25 s budget) is learned as running longer than
/// that, and once warm its next call goes straight to the background. Dropping cut
/// runs, as before, it stayed cold and every call ran inline first. The risk is fixed:
/// with a 0.25 s budget the break-even risk (5 / 5.25) would keep nearly every call
/// inline, which is right for such a client but not what this test is about.
#[tokio::test]
async fn a_tool_whose_calls_are_always_cancelled_is_learned_as_slow() {
    let (engine, _dir) = engine_with(|c| {
        c.budget_s = 0.25;
        c.risk = Some(0.05);
    })
    .await;
    // One feature (the scene's name): three coefficients, warm at six runs.
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let call = ToolCall::new("render", json!({"scene": "city"}));
        let work = |ctx: smart_async::JobContext| async move {
            ctx.cancelled().await;
            Err::<Value, _>(RunError::Cancelled)
        };
        let job = expect_job(engine.call(call, work).await.unwrap());
        assert!(job.promoted);
        tokio::time::sleep(Duration::from_millis(300).saturating_sub(started.elapsed())).await;
        engine.cancel_job(job.id).await.unwrap();
    }
    let stats = &engine.stats(Some("render"))[0];
    assert_eq!((stats.samples, stats.censored, stats.cancelled), (6, 6, 6));
    assert_eq!(stats.state, "warm");
    let decision = engine.predict("render", &json!({"scene": "city"})).await;
    assert_eq!(
        (decision.mode, decision.source),
        (Mode::Background, Source::Learned),
        "{}",
        decision.reason()
    );
    assert!(
        decision.predicted_s.is_some_and(|s| s > 0.3),
        "{decision:?}"
    );
}

/// A run stopped by its hard time limit failed for its caller, and ran at least the
/// limit: counted as failed, taught as censored.
#[tokio::test]
async fn a_timed_out_run_is_a_failure_taught_as_a_lower_bound() {
    let (engine, _dir) = engine_with(|_| {}).await;
    let outcome = engine
        .call(ToolCall::new("build", json!({})), |_ctx| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Value, _>(RunError::TimedOut { after_s: 0.05 })
        })
        .await
        .unwrap();
    assert!(matches!(
        expect_done(outcome).0,
        Err(RunError::TimedOut { .. })
    ));
    let stats = &engine.stats(Some("build"))[0];
    assert_eq!(
        (stats.failed, stats.samples, stats.censored),
        (1, 1, 1),
        "{stats:?}"
    );
}
