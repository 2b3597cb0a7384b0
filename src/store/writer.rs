//! The one writer: every write to the database goes through one thread, which applies
//! what has queued up and flushes once for the whole batch (group commit).
//!
//! sled 0.34 deadlocks when flushes run concurrently (spacejam/sled#1308; here it hung
//! the server for good under a burst of background submissions), and its own
//! background flusher would be a second one: that is switched off, and this thread is
//! the only one that ever writes or flushes. A write is answered once it is on disk, so
//! a job is durable before its handle is returned, and a burst of submissions costs
//! one flush, not one each.
//!
//! sled keeps the first I/O error for good: after a full disk every later write failed,
//! even once space was freed. So after a failed write the writer closes the database
//! and opens it again before the next batch (at most once a second), and writes come
//! back when the disk does. What the failed batch wrote is lost with the old handle;
//! its callers were told, and keep it to write again.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{open_error, Shared, StoreError, Trees};

/// A write, run on the writer's thread against the database as it is then.
pub(super) type Apply = Box<dyn FnOnce(&Trees) -> sled::Result<()> + Send>;

/// At most this many writes share one flush: a bound on how long the first of a burst
/// waits for the last.
const MAX_BATCH: usize = 1024;

/// How long after a failed reopen the next is tried: a disk that is still full is not
/// asked again for every write.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

struct Op {
    /// `None` asks only for a flush of what came before.
    apply: Option<Apply>,
    /// Whether it is answered only once on disk; a batch of writes that are not is
    /// applied without a flush, and goes to disk with the next that is.
    durable: bool,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle that queues writes; the thread ends when the last handle is dropped,
/// after the writes queued before.
#[derive(Debug)]
pub(super) struct Writer {
    ops: mpsc::Sender<Op>,
}

impl Writer {
    pub(super) fn start(shared: Arc<Shared>) -> std::io::Result<Writer> {
        let (ops, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("smart-async-writer".to_owned())
            .spawn(move || run(&shared, &queue))?;
        Ok(Writer { ops })
    }

    /// Queues `apply` (or, with `None`, a flush of everything queued before) at once;
    /// the answer comes once it is on disk. Writes are applied in the order queued.
    pub(super) fn queue(
        &self,
        shared: &Shared,
        apply: Option<Apply>,
        durable: bool,
    ) -> PendingWrite {
        let (reply, answer) = oneshot::channel();
        let state = match self.ops.send(Op {
            apply,
            durable,
            reply,
        }) {
            Ok(()) => Pending::Queued(answer),
            Err(_) => Pending::Failed(None),
        };
        PendingWrite {
            state,
            path: shared.path.clone(),
        }
    }
}

/// A write that was queued (or refused before it could be): resolves once it is on
/// disk, or with why it is not. Dropping it does not take the write back.
#[must_use = "a write is only known to be on disk once this resolves"]
#[derive(Debug)]
pub struct PendingWrite {
    state: Pending,
    path: PathBuf,
}

#[derive(Debug)]
enum Pending {
    Queued(oneshot::Receiver<Result<(), StoreError>>),
    /// Refused before queueing; `None` once taken, or when the writer was gone.
    Failed(Option<StoreError>),
}

impl PendingWrite {
    pub(super) fn failed(path: &Path, error: StoreError) -> PendingWrite {
        PendingWrite {
            state: Pending::Failed(Some(error)),
            path: path.to_path_buf(),
        }
    }
}

impl Future for PendingWrite {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let stopped = |path: &PathBuf| StoreError::Stopped { path: path.clone() };
        match &mut this.state {
            Pending::Queued(answer) => Pin::new(answer)
                .poll(cx)
                .map(|answer| answer.unwrap_or_else(|_| Err(stopped(&this.path)))),
            Pending::Failed(error) => {
                Poll::Ready(Err(error.take().unwrap_or_else(|| stopped(&this.path))))
            }
        }
    }
}

/// The writer's loop: take what has queued up, apply it, flush once, answer each.
fn run(shared: &Shared, queue: &mpsc::Receiver<Op>) {
    // The error that broke the database, and when to try opening it again.
    let mut broken: Option<(sled::Error, Instant)> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Some((error, next_try)) = &broken {
            if Instant::now() < *next_try {
                answer_all(shared, batch, error);
                continue;
            }
            match shared.reopen() {
                Ok(()) => broken = None,
                Err(e) => {
                    tracing::debug!(error = %e, "the database could not be opened again yet");
                    let error = copy(error);
                    answer_all(shared, batch, &error);
                    broken = Some((error, Instant::now() + REOPEN_PAUSE));
                    continue;
                }
            }
        }
        let Some(trees) = shared.current() else {
            // Only a reopen empties it, and that happened above on this thread.
            let error = sled::Error::ReportableBug("the database is not open".to_owned());
            answer_all(shared, batch, &error);
            continue;
        };
        let applied: Vec<sled::Result<()>> = batch
            .iter_mut()
            .map(|op| {
                op.apply
                    .take()
                    .map_or(Ok(()), |apply| guarded(apply, &trees))
            })
            .collect();
        let flushed = if batch.iter().any(|op| op.durable) {
            trees.db.flush().map(|_| ())
        } else {
            Ok(())
        };
        drop(trees);
        for (op, applied) in batch.into_iter().zip(applied) {
            let result = applied.and_then(|()| flushed.as_ref().map(|_| ()).map_err(copy));
            if let (Err(e @ sled::Error::Io(_)), None) = (&result, &broken) {
                // Opened again at once, before the next batch.
                broken = Some((copy(e), Instant::now()));
            }
            let _ = op
                .reply
                .send(result.map_err(|e| open_error(&shared.path, e)));
        }
    }
}

/// Runs one write; a panic in it (sled has some on damaged data) fails that write, not
/// the writer.
fn guarded(apply: Apply, trees: &Trees) -> sled::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(trees))).unwrap_or_else(
        |panic| {
            let detail = crate::run_error::panic_message(&*panic);
            Err(sled::Error::ReportableBug(format!(
                "a write panicked: {detail}"
            )))
        },
    )
}

fn answer_all(shared: &Shared, batch: Vec<Op>, error: &sled::Error) {
    for op in batch {
        let _ = op.reply.send(Err(open_error(&shared.path, copy(error))));
    }
}

/// A copy of a sled error. sled's own `clone` wraps an I/O error's `Debug` text in a
/// new one, so an error cloned from its clones grows with each copy (to 120 MB within
/// a minute of a full disk, with a second's retries): this copies its message once.
fn copy(error: &sled::Error) -> sled::Error {
    match error {
        sled::Error::Io(io) => sled::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => other.clone(),
    }
}
