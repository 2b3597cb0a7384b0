//! Job states as they are queued for the store, with the listing they make, the
//! states the store refused, and each principal's recent starts: everything that
//! changes together under the job table's one lock.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use super::listing::Listing;
use super::{Job, JobError, JobSettings};
use crate::principal::Principal;

/// Job states as queued (see [`Jobs::queued`]).
#[derive(Default)]
pub(super) struct Queued {
    /// Every job, newest first, in its latest state.
    pub(super) listing: Listing,
    /// States the store refused, by job, each with the number of the write that queued
    /// it: a job reads from here until [`Jobs::write_unwritten`] or its next state is
    /// stored, so a failing disk never costs a result the work already gave. A newer
    /// state replaces a refused one as it is queued, so a retry never lands after it.
    pub(super) refused: HashMap<Uuid, (u64, Job)>,
    writes: u64,
    /// When each principal started its background jobs of the last minute (ms).
    starts: HashMap<Principal, VecDeque<u64>>,
}

/// A minute, in milliseconds: the window of [`JobSettings::max_starts_per_minute`].
const MINUTE_MS: u64 = 60_000;

impl Queued {
    /// Whether `owner` may start another background job at `now_ms`; notes the start
    /// when it may. The local user (stdio, HTTP without authentication, the library)
    /// is the only caller there is, and is not held back.
    pub(super) fn admit(
        &mut self,
        owner: &Principal,
        settings: &JobSettings,
        now_ms: u64,
    ) -> Result<(), JobError> {
        if owner.is_local() {
            return Ok(());
        }
        let limit = settings.max_active_per_principal;
        if self.listing.active_of(owner) >= limit {
            return Err(JobError::TooManyActive {
                owner: owner.clone(),
                limit,
            });
        }
        let starts = self.starts.entry(owner.clone()).or_default();
        while starts.front().is_some_and(|&at| at + MINUTE_MS <= now_ms) {
            starts.pop_front();
        }
        let limit = settings.max_starts_per_minute;
        if starts.len() >= limit as usize {
            let oldest = starts.front().copied().unwrap_or(now_ms);
            return Err(JobError::TooManyStarts {
                owner: owner.clone(),
                limit,
                retry_s: (oldest + MINUTE_MS).saturating_sub(now_ms).div_ceil(1000),
            });
        }
        starts.push_back(now_ms);
        // Principals that started nothing this minute are let go.
        if self.starts.len() > 1024 {
            self.starts
                .retain(|_, starts| starts.back().is_some_and(|&at| at + MINUTE_MS > now_ms));
        }
        Ok(())
    }

    pub(super) fn next_write(&mut self) -> u64 {
        self.writes += 1;
        self.writes
    }

    /// What became of write number `write` of `job`: stored, it leaves (unless a newer
    /// state was queued since); refused, it is kept (unless a newer one is).
    pub(super) fn settle(&mut self, write: u64, job: &Job, stored: bool) {
        let newer_queued = self
            .refused
            .get(&job.id)
            .is_some_and(|(latest, _)| *latest > write);
        if newer_queued {
            return;
        }
        if stored {
            self.refused.remove(&job.id);
            if job.status().is_terminal() {
                self.listing.stored(job.id);
            }
        } else {
            self.refused.insert(job.id, (write, job.clone()));
        }
    }
}
