//! What the engine learned, kept in memory and written to the store: samples and
//! changed records every [`PERSIST_INTERVAL`] (a call pays for no write), put back
//! when a write fails; and the sweeper that writes them and prunes old jobs and
//! samples.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, Inner, Knowledge};
use crate::clients::ClientRecord;
use crate::jobs::now_ms;
use crate::learner::Changed;
use crate::lock::lock;
use crate::store::{PendingWrite, Sample, StoreError};

/// How often finished jobs and old samples are pruned.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Samples kept in memory while the store cannot take them; past this the oldest go.
pub(super) const MAX_PENDING_SAMPLES: usize = 100_000;
/// How often samples and changed models are written to the store.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
impl Engine {
    /// Writes the samples and the records that changed since the last write. Called
    /// every [`PERSIST_INTERVAL`] and on close, so a call pays for no write (a sled
    /// insert per call cost more than everything else the engine does for it) and a
    /// crash loses at most that long of learning. What a failed write did not store
    /// goes back for the next one.
    pub(super) async fn persist(&self) -> Result<(), StoreError> {
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

/// Writes changed models every [`PERSIST_INTERVAL`], and prunes jobs and samples
/// every [`SWEEP_INTERVAL`].
pub(super) async fn sweep(engine: Weak<Inner>, shutdown: CancellationToken) {
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
