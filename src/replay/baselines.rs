//! The policies people use today, which replay scores the learned one against: the
//! static table alone, everything inline, the mean of the last two runtimes, and the
//! 90th percentile of the history. Each costs the same per call however long the trace:
//! a tool's state is a few numbers or a histogram of fixed size.

use crate::features::Features;
use crate::policy::{Mode, StaticTable};

use super::{Contender, Said};

/// Per-tool state, keyed by the tool's name; hashbrown's map for `entry_ref`, which
/// copies a name only the first time it is seen.
type PerTool<T> = hashbrown::HashMap<String, T>;

/// The cold-start table alone.
pub(super) struct StaticOnly {
    pub(super) table: StaticTable,
}

impl StaticOnly {
    fn mode(table: &StaticTable, tool: &str, features: &Features, async_mode: bool) -> Mode {
        if async_mode || table.check(tool, features, false).is_some() {
            Mode::Background
        } else {
            Mode::Inline
        }
    }
}

impl Contender for StaticOnly {
    fn name(&self) -> &'static str {
        "static"
    }

    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said {
        (Self::mode(&self.table, tool, features, async_mode), None)
    }

    fn learn(&mut self, _: &str, _: &Features, _: f64) {}
}

/// A plain server with deadline promotion: everything inline.
pub(super) struct AlwaysSync;

impl Contender for AlwaysSync {
    fn name(&self) -> &'static str {
        "always_sync"
    }

    fn decide(&mut self, _: &str, _: &Features, _: bool) -> Said {
        (Mode::Inline, None)
    }

    fn learn(&mut self, _: &str, _: &Features, _: f64) {}
}

/// Per tool, the mean of its last two runtimes (Tsafrir, Etsion & Feitelson 2007);
/// the static table until a tool has two.
pub(super) struct LastTwo {
    pub(super) table: StaticTable,
    pub(super) budget_s: f64,
    pub(super) last: PerTool<(Option<f64>, Option<f64>)>,
}

impl Contender for LastTwo {
    fn name(&self) -> &'static str {
        "last2_avg"
    }

    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said {
        match self.last.get(tool) {
            Some((Some(a), Some(b))) if !async_mode => {
                let mode = if (a + b) / 2.0 > self.budget_s {
                    Mode::Background
                } else {
                    Mode::Inline
                };
                (mode, None)
            }
            _ => (
                StaticOnly::mode(&self.table, tool, features, async_mode),
                None,
            ),
        }
    }

    fn learn(&mut self, tool: &str, _: &Features, runtime_s: f64) {
        let entry = self.last.entry_ref(tool).or_default();
        *entry = (Some(runtime_s), entry.0);
    }
}

/// Per tool, the 90th percentile of all its past runtimes once it has five; the
/// static table before. The history is a log-spaced histogram (1% wide bins), so memory
/// stays bounded however long the trace, and a quantile costs the same at the ten
/// millionth call as at the tenth.
pub(super) struct P90History {
    pub(super) table: StaticTable,
    pub(super) budget_s: f64,
    pub(super) histograms: PerTool<LogHistogram>,
}

impl Contender for P90History {
    fn name(&self) -> &'static str {
        "p90_history"
    }

    fn decide(&mut self, tool: &str, features: &Features, async_mode: bool) -> Said {
        match self.histograms.get(tool) {
            Some(history) if history.count() >= 5 && !async_mode => {
                let p90 = history.quantile(0.9);
                let mode = if p90 > self.budget_s {
                    Mode::Background
                } else {
                    Mode::Inline
                };
                (mode, Some(p90))
            }
            _ => (
                StaticOnly::mode(&self.table, tool, features, async_mode),
                None,
            ),
        }
    }

    fn learn(&mut self, tool: &str, _: &Features, runtime_s: f64) {
        self.histograms.entry_ref(tool).or_default().add(runtime_s);
    }
}

const HISTOGRAM_MIN_S: f64 = 1e-3;
const HISTOGRAM_BIN_RATIO_LN: f64 = 0.01;
/// Bins from 1 ms up: 2,048 bins 1% wide reach 9 days; longer runtimes share the last.
const HISTOGRAM_BINS: usize = 2048;

/// Runtimes in log-spaced bins, as a Fenwick tree (Fenwick, *A new data structure for
/// cumulative frequency tables*, 1994) over the bins: adding a runtime and finding a
/// quantile both take `log₂ 2048 = 11` steps. (Sorting the bins for each quantile, as
/// an earlier version did, made the cost per call grow with the trace.)
#[derive(Debug, Clone)]
pub(super) struct LogHistogram {
    /// `tree[i]` holds the count of the bins `(i − lowbit(i), i]`, 1-based.
    tree: Vec<u32>,
    count: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            tree: vec![0; HISTOGRAM_BINS + 1],
            count: 0,
        }
    }
}

impl LogHistogram {
    pub(super) fn add(&mut self, runtime_s: f64) {
        let bin = ((runtime_s.max(HISTOGRAM_MIN_S) / HISTOGRAM_MIN_S).ln() / HISTOGRAM_BIN_RATIO_LN)
            as usize;
        let mut index = bin.min(HISTOGRAM_BINS - 1) + 1;
        while index <= HISTOGRAM_BINS {
            self.tree[index] = self.tree[index].saturating_add(1);
            index += index & index.wrapping_neg();
        }
        self.count += 1;
    }

    /// The upper edge of the bin holding the q-quantile.
    pub(super) fn quantile(&self, q: f64) -> f64 {
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        // The largest prefix of bins holding fewer than `rank` runtimes; the quantile
        // is in the bin after it.
        let (mut position, mut below) = (0, 0u64);
        let mut step = HISTOGRAM_BINS;
        while step > 0 {
            let next = position + step;
            if next <= HISTOGRAM_BINS && below + u64::from(self.tree[next]) < rank {
                position = next;
                below += u64::from(self.tree[next]);
            }
            step /= 2;
        }
        if position >= HISTOGRAM_BINS {
            return f64::INFINITY;
        }
        HISTOGRAM_MIN_S * ((position + 1) as f64 * HISTOGRAM_BIN_RATIO_LN).exp()
    }

    pub(super) fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_histogram_quantile_is_within_a_bin_of_the_truth() {
        let mut h = LogHistogram::default();
        for i in 1..=1000 {
            h.add(i as f64);
        }
        let p90 = h.quantile(0.9);
        assert!((p90 / 900.0 - 1.0).abs() < 0.02, "{p90}");
        assert_eq!(h.count(), 1000);
    }

    proptest! {
        /// The tree finds the bin that a sort of every runtime finds.
        #[test]
        fn the_quantile_is_the_sorted_one(runtimes in prop::collection::vec(0.0f64..7e5, 1..300), q in 0.01f64..1.0) {
            let mut h = LogHistogram::default();
            for &r in &runtimes {
                h.add(r);
            }
            let mut sorted = runtimes.clone();
            sorted.sort_by(f64::total_cmp);
            let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
            let truth = sorted[rank - 1].max(HISTOGRAM_MIN_S);
            let found = h.quantile(q);
            // The upper edge of the truth's bin: at or above it, and within 1%.
            prop_assert!(found >= truth * (1.0 - 1e-9), "{found} < {truth}");
            prop_assert!(found <= truth * (HISTOGRAM_BIN_RATIO_LN.exp() + 1e-9), "{found} ≫ {truth}");
        }
    }
}
