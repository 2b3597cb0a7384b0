//! The job list: every job newest first, with what `list_jobs` filters on, kept in
//! memory beside the store.
//!
//! `list_jobs` read and decoded every stored job on each call (68 ms with 10,000 jobs,
//! 342 ms under load) and read them while their states changed, so one list could show
//! a job still running and the job that took its slot already running too (5 running
//! with a limit of 4). Here a job's entry changes when its state is queued for the
//! store, under the same lock, so a list is the table at one moment: a job that has
//! not ended is held whole (it carries no result, so it is small), and so is an ended
//! one until its end is on disk; after that only its status is held, as its stored
//! record no longer changes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::{Job, JobFilter, JobStatus};
use crate::principal::Principal;

/// Newest first: creation time descending, then id.
type Key = (Reverse<u64>, Uuid);

/// One job in the list.
#[derive(Debug, Clone)]
enum Entry {
    /// Not ended: the record as last queued.
    Live(Job),
    /// Ended: its record is final, held until it is on disk, then read from the store
    /// when listed.
    Ended {
        status: JobStatus,
        tool: String,
        owner: Principal,
        finished_at_ms: Option<u64>,
        unstored: Option<Job>,
    },
}

/// A listed job: whole, or to be read from the store.
#[derive(Debug)]
pub(crate) enum Listed {
    Whole(Box<Job>),
    /// Ended, with its final record on disk.
    Stored(Uuid),
}

/// Every job, newest first.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    entries: BTreeMap<Key, Entry>,
    keys: HashMap<Uuid, Key>,
}

impl Listing {
    /// Records a job's state (new, or newer than the one listed).
    pub(crate) fn record(&mut self, job: &Job) {
        let key = (Reverse(job.created_at_ms), job.id);
        let entry = if job.status().is_terminal() {
            Entry::Ended {
                status: job.status(),
                tool: job.tool.clone(),
                owner: job.owner.clone(),
                finished_at_ms: job.finished_at_ms,
                unstored: Some(job.clone()),
            }
        } else {
            Entry::Live(job.clone())
        };
        if let Some(old) = self.keys.insert(job.id, key) {
            if old != key {
                self.entries.remove(&old);
            }
        }
        self.entries.insert(key, entry);
    }

    /// Notes that a job's end is on disk: its record is let go.
    pub(crate) fn stored(&mut self, id: Uuid) {
        let key = self.keys.get(&id);
        if let Some(Entry::Ended { unstored, .. }) = key.and_then(|key| self.entries.get_mut(key)) {
            *unstored = None;
        }
    }

    /// Forgets jobs (pruned from the store).
    pub(crate) fn remove(&mut self, ids: &[Uuid]) {
        for id in ids {
            if let Some(key) = self.keys.remove(id) {
                self.entries.remove(&key);
            }
        }
    }

    /// The jobs the filter selects, newest first, as they are now.
    pub(crate) fn select(&self, filter: &JobFilter) -> Vec<Listed> {
        self.entries
            .iter()
            .filter(|(_, entry)| {
                let (status, tool, owner) = match entry {
                    Entry::Live(job) => (job.status(), job.tool.as_str(), &job.owner),
                    Entry::Ended {
                        status,
                        tool,
                        owner,
                        ..
                    } => (*status, tool.as_str(), owner),
                };
                filter.status.is_none_or(|wanted| status == wanted)
                    && filter.tool.as_deref().is_none_or(|wanted| tool == wanted)
                    && filter.owner.as_ref().is_none_or(|wanted| owner == wanted)
            })
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|((_, id), entry)| match entry {
                Entry::Live(job)
                | Entry::Ended {
                    unstored: Some(job),
                    ..
                } => Listed::Whole(Box::new(job.clone())),
                Entry::Ended { unstored: None, .. } => Listed::Stored(*id),
            })
            .collect()
    }

    /// Ended jobs with their owners, the most recently ended first (never-ended
    /// times last).
    pub(crate) fn ended_newest_first(&self) -> Vec<(Uuid, Option<u64>, Principal)> {
        let mut ended: Vec<(Uuid, Option<u64>, Principal)> = self
            .entries
            .iter()
            .filter_map(|((_, id), entry)| match entry {
                Entry::Ended {
                    finished_at_ms,
                    owner,
                    ..
                } => Some((*id, *finished_at_ms, owner.clone())),
                Entry::Live(_) => None,
            })
            .collect();
        ended.sort_by_key(|(_, finished_at_ms, _)| Reverse(*finished_at_ms));
        ended
    }

    /// How many of `owner`'s jobs are running or pending.
    pub(crate) fn active_of(&self, owner: &Principal) -> usize {
        self.entries
            .values()
            .filter(|entry| matches!(entry, Entry::Live(job) if job.owner == *owner))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobState;
    use proptest::prelude::*;
    use serde_json::Value;

    fn job(n: u128, created_at_ms: u64, tool: &str, state: JobState) -> Job {
        let mut job = super::super::tests::job(state, None, None);
        job.id = Uuid::from_u128(n);
        job.created_at_ms = created_at_ms;
        job.tool = tool.to_owned();
        job
    }

    fn ids(listed: &[Listed]) -> Vec<u128> {
        listed
            .iter()
            .map(|l| match l {
                Listed::Whole(job) => job.id.as_u128(),
                Listed::Stored(id) => id.as_u128(),
            })
            .collect()
    }

    fn state(n: u8) -> JobState {
        match n % 5 {
            0 => JobState::Pending,
            1 => JobState::Running,
            2 => JobState::Completed {
                result: Value::Null.into(),
            },
            3 => JobState::Failed {
                error: crate::run_error::RunError::tool("e"),
            },
            _ => JobState::Cancelled,
        }
    }

    #[test]
    fn lists_newest_first_with_the_latest_state_and_the_filter() {
        let mut listing = Listing::default();
        listing.record(&job(1, 10, "a", JobState::Pending));
        listing.record(&job(2, 20, "b", JobState::Running));
        listing.record(&job(3, 20, "a", JobState::Running));
        listing.record(&job(1, 10, "a", JobState::Running));
        let all = JobFilter::default();
        assert_eq!(ids(&listing.select(&all)), [2, 3, 1]);
        let running_a = JobFilter {
            status: Some(JobStatus::Running),
            tool: Some("a".to_owned()),
            limit: Some(1),
            ..JobFilter::default()
        };
        assert_eq!(ids(&listing.select(&running_a)), [3]);
        listing.record(&job(3, 20, "a", JobState::Cancelled));
        assert!(
            matches!(listing.select(&all)[1], Listed::Whole(_)),
            "held until stored"
        );
        listing.stored(Uuid::from_u128(3));
        assert!(matches!(listing.select(&all)[1], Listed::Stored(_)));
        listing.remove(&[Uuid::from_u128(2)]);
        assert_eq!(ids(&listing.select(&all)), [3, 1]);
    }

    proptest! {
        /// Whatever the order of states, a list is what filtering the latest state of
        /// every job would give.
        #[test]
        fn a_list_is_the_latest_states_filtered(
            writes in prop::collection::vec((0u128..12, 0u64..5, 0u8..5, 0u8..2), 0..60),
            status in prop::option::of(0u8..5),
            limit in prop::option::of(0usize..8),
        ) {
            let mut listing = Listing::default();
            let mut latest: HashMap<u128, Job> = HashMap::new();
            for (n, created, s, tool) in writes {
                // A job's creation time never changes.
                let created = latest.get(&n).map_or(created, |j| j.created_at_ms);
                let record = job(n, created, if tool == 0 { "a" } else { "b" }, state(s));
                listing.record(&record);
                latest.insert(n, record);
            }
            let filter = JobFilter { status: status.map(|s| state(s).status()), tool: None, limit, owner: None };
            let mut expected: Vec<&Job> = latest
                .values()
                .filter(|j| filter.status.is_none_or(|s| j.status() == s))
                .collect();
            expected.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
            expected.truncate(limit.unwrap_or(usize::MAX));
            let expected: Vec<u128> = expected.iter().map(|j| j.id.as_u128()).collect();
            prop_assert_eq!(ids(&listing.select(&filter)), expected);
        }
    }
}
