//! Client-aware budgets: how long a call may run inline depends on who is waiting.
//!
//! Clients give up at very different points (60 s for the TypeScript SDK and Claude
//! Desktop, 5 minutes for Cursor and VS Code), so the budget is chosen per client by
//! its `clientInfo.name`: a budget set in the config, else a default for a client whose
//! timeout is known, else the server's budget. A client also shows its timeout by what
//! it does: when it keeps cancelling inline calls at about the same elapsed time, that
//! is where it gives up, and its budget is lowered below it.
//!
//! Pure: names and seconds in, budgets out. The engine persists [`ClientRecord`]s.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::policy::Seconds;
use crate::principal::Principal;

/// Between a principal and a client's name in the key of an authenticated
/// principal's record (a unit separator: no client name holds one).
const PRINCIPAL_SEPARATOR: char = '\u{1f}';

/// The key a client's record is kept under: its name for the local user (as every
/// record was before principals), `PRINCIPAL␟NAME` for an authenticated principal,
/// so that one principal's cancels never lower another's budget.
pub fn record_key<'a>(client: &'a str, owner: &Principal) -> Cow<'a, str> {
    match owner.name() {
        None => Cow::Borrowed(client),
        Some(principal) => Cow::Owned(format!("{principal}{PRINCIPAL_SEPARATOR}{client}")),
    }
}

/// The principal (if any) and the client name of a record key.
fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once(PRINCIPAL_SEPARATOR) {
        Some((principal, client)) => (Some(principal), client),
        None => (None, key),
    }
}

/// How many of a client's recent inline cancellations are kept.
const KEPT_CANCELS: usize = 8;
/// How many cancellations at about the same elapsed time reveal a timeout.
pub const CANCELS_TO_LEARN: usize = 3;
/// Cancellations agree when the latest ones span at most this ratio (max / min).
const AGREEING_SPREAD: f64 = 1.25;
/// A learned budget stays this share of the client's timeout, so an answer that ends
/// on the budget still reaches the client in time.
pub const TIMEOUT_MARGIN: f64 = 0.8;
/// Cancellations sooner than this are a person or an agent changing its mind, not a
/// timeout.
const MIN_TIMEOUT_S: f64 = 0.5;

/// Budgets of clients whose timeouts are known, by `clientInfo.name` (compared without
/// case). Each is below the client's own limit by the same margin as learned ones.
pub const KNOWN_CLIENTS: &[(&str, f64, &str)] = &[
    (
        "claude-ai",
        50.0,
        "Claude Desktop gives up on a tool call after about 60 s",
    ),
    (
        "cursor-vscode",
        240.0,
        "Cursor waits 5 minutes for a tool call",
    ),
    (
        "Visual Studio Code",
        240.0,
        "VS Code waits 5 minutes for a tool call",
    ),
];

/// Where a client's budget came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// The server's budget: nothing is known about this client.
    Server,
    /// The built-in table of known clients.
    Known,
    /// The config file's `[clients]` table.
    Configured,
    /// Learned from where the client cancels inline calls.
    Learned,
}

impl BudgetSource {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            BudgetSource::Server => "server",
            BudgetSource::Known => "known",
            BudgetSource::Configured => "configured",
            BudgetSource::Learned => "learned",
        }
    }
}

/// The budget a client's calls are decided against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClientBudget {
    /// Seconds a call may take inline for this client.
    pub budget_s: f64,
    /// Why this many.
    pub source: BudgetSource,
}

/// What has been seen of one client: the elapsed seconds of its latest inline
/// cancellations, and the timeout they revealed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Elapsed seconds of its latest inline cancellations, oldest first.
    pub cancels_s: Vec<f64>,
    /// All inline cancellations seen.
    pub cancels_total: u64,
    /// The timeout its cancellations revealed, while nothing contradicts it.
    pub learned_timeout_s: Option<f64>,
}

impl ClientRecord {
    /// Notes an inline call the client cancelled after `elapsed_s`; true when the
    /// learned timeout changed.
    pub fn observe_cancel(&mut self, elapsed_s: f64) -> bool {
        if !(elapsed_s.is_finite() && elapsed_s >= 0.0) {
            return false;
        }
        self.cancels_total += 1;
        self.cancels_s.push(elapsed_s);
        if self.cancels_s.len() > KEPT_CANCELS {
            self.cancels_s.remove(0);
        }
        let learned = revealed_timeout_s(&self.cancels_s);
        let changed = learned.is_some() && learned != self.learned_timeout_s;
        if changed {
            self.learned_timeout_s = learned;
        }
        changed
    }

    /// Notes an inline call the client waited for to the end; true when that
    /// contradicts the learned timeout (the client waited well past it), which is
    /// then forgotten with the cancellations behind it.
    pub fn observe_answer(&mut self, runtime_s: f64) -> bool {
        match self.learned_timeout_s {
            Some(timeout_s) if runtime_s > timeout_s * AGREEING_SPREAD => {
                self.learned_timeout_s = None;
                self.cancels_s.clear();
                true
            }
            _ => false,
        }
    }
}

/// The timeout the latest cancellations agree on: the earliest of the last
/// [`CANCELS_TO_LEARN`], when they lie within 25% of each other.
pub fn revealed_timeout_s(cancels_s: &[f64]) -> Option<f64> {
    let latest = cancels_s.get(cancels_s.len().checked_sub(CANCELS_TO_LEARN)?..)?;
    let min_s = latest.iter().copied().fold(f64::INFINITY, f64::min);
    let max_s = latest.iter().copied().fold(0.0, f64::max);
    (min_s >= MIN_TIMEOUT_S && max_s <= min_s * AGREEING_SPREAD).then_some(min_s)
}

/// The budgets: the server's, the configured ones, and what each client showed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientBudgets {
    server_budget_s: f64,
    /// Configured budgets by client name (matched without case).
    configured: BTreeMap<String, f64>,
    /// What each client showed, by name as the client sent it.
    records: BTreeMap<String, ClientRecord>,
}

impl ClientBudgets {
    /// Budgets with `server_budget_s` for unknown clients and `configured` ones by
    /// client name.
    pub fn new(server_budget_s: f64, configured: &BTreeMap<String, f64>) -> ClientBudgets {
        ClientBudgets {
            server_budget_s,
            configured: configured.clone(),
            records: BTreeMap::new(),
        }
    }

    /// Puts back what was learned before.
    pub fn restore(&mut self, name: String, record: ClientRecord) {
        self.records.insert(name, record);
    }

    /// The budget for a client by its [`record_key`] (`None`: the client did not say
    /// who it is): configured and known budgets by its name, learned ones by its key.
    pub fn budget(&self, client: Option<&str>) -> ClientBudget {
        let server = ClientBudget {
            budget_s: self.server_budget_s,
            source: BudgetSource::Server,
        };
        let Some(key) = client else {
            return server;
        };
        let name = split_key(key).1;
        let configured = self
            .configured
            .iter()
            .find(|(configured, _)| configured.eq_ignore_ascii_case(name));
        let base = if let Some((_, budget_s)) = configured {
            ClientBudget {
                budget_s: *budget_s,
                source: BudgetSource::Configured,
            }
        } else if let Some((_, budget_s, _)) = KNOWN_CLIENTS
            .iter()
            .find(|(known, ..)| known.eq_ignore_ascii_case(name))
        {
            ClientBudget {
                budget_s: *budget_s,
                source: BudgetSource::Known,
            }
        } else {
            server
        };
        let learned_s = self
            .records
            .get(key)
            .and_then(|r| r.learned_timeout_s)
            .map(|timeout_s| timeout_s * TIMEOUT_MARGIN);
        match learned_s {
            Some(budget_s) if budget_s < base.budget_s => ClientBudget {
                budget_s,
                source: BudgetSource::Learned,
            },
            _ => base,
        }
    }

    /// The record of a client, created on first use.
    pub fn record_mut(&mut self, name: &str) -> &mut ClientRecord {
        self.records.entry(name.to_owned()).or_default()
    }

    /// Notes that `client` waited `runtime_s` for an inline answer (see
    /// [`ClientRecord::observe_answer`]); a client that never cancelled gets no record.
    pub fn observe_answer(&mut self, client: &str, runtime_s: f64) -> bool {
        self.records
            .get_mut(client)
            .is_some_and(|record| record.observe_answer(runtime_s))
    }

    /// What is known of every client that has shown something or has a configured
    /// budget, by name.
    pub fn stats(&self) -> Vec<ClientStats> {
        let mut names: Vec<&str> = self.records.keys().map(String::as_str).collect();
        for configured in self.configured.keys() {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(configured)) {
                names.push(configured);
            }
        }
        names.sort_unstable();
        names
            .into_iter()
            .map(|key| {
                let record = self.records.get(key).cloned().unwrap_or_default();
                let budget = self.budget(Some(key));
                let (principal, name) = split_key(key);
                ClientStats {
                    name: name.to_owned(),
                    principal: principal.map(str::to_owned),
                    budget_s: budget.budget_s,
                    source: budget.source,
                    learned_timeout_s: record.learned_timeout_s,
                    inline_cancels: record.cancels_total,
                    recent_cancels_s: record.cancels_s,
                }
            })
            .collect()
    }
}

/// One client as `predictor_stats` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStats {
    /// Its `clientInfo.name`.
    pub name: String,
    /// The authenticated principal whose calls these are; `None`: the local user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The budget its calls are decided against.
    pub budget_s: f64,
    /// Where that budget came from.
    pub source: BudgetSource,
    /// The timeout its cancellations revealed.
    pub learned_timeout_s: Option<f64>,
    /// Inline calls it cancelled.
    pub inline_cancels: u64,
    /// Elapsed seconds of the latest of those, oldest first.
    pub recent_cancels_s: Vec<f64>,
}

impl fmt::Display for ClientStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(principal) = &self.principal {
            write!(f, " (for {principal})")?;
        }
        write!(
            f,
            ": budget {} ({})",
            Seconds(self.budget_s),
            self.source.name()
        )?;
        if let Some(timeout_s) = self.learned_timeout_s {
            write!(
                f,
                ", it cancels inline calls at about {} (its timeout)",
                Seconds(timeout_s)
            )?;
        }
        if self.inline_cancels > 0 {
            write!(f, ", {} inline calls cancelled", self.inline_cancels)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Issue 17: client budgets learned from one principal's cancels do not lower
    /// another principal's budget.
    #[test]
    fn one_principals_cancels_do_not_lower_anothers_budget() {
        let mut budgets = budgets();
        let alice = record_key("My-Agent", &Principal::named("alice"));
        for _ in 0..CANCELS_TO_LEARN {
            budgets.record_mut(&alice).observe_cancel(10.0);
        }
        assert_eq!(
            budgets.budget(Some(&alice)),
            ClientBudget {
                budget_s: 10.0 * TIMEOUT_MARGIN,
                source: BudgetSource::Learned
            }
        );
        let configured = ClientBudget {
            budget_s: 20.0,
            source: BudgetSource::Configured,
        };
        let bob = record_key("My-Agent", &Principal::named("bob"));
        assert_eq!(budgets.budget(Some(&bob)), configured);
        assert_eq!(budgets.budget(Some("My-Agent")), configured);
        let stats = budgets.stats();
        let alices = stats.iter().find(|s| s.principal.is_some()).unwrap();
        assert_eq!(
            (alices.name.as_str(), alices.principal.as_deref()),
            ("My-Agent", Some("alice"))
        );
        assert!(
            alices
                .to_string()
                .starts_with("My-Agent (for alice): budget"),
            "{alices}"
        );
    }

    fn budgets() -> ClientBudgets {
        let configured = BTreeMap::from([("My-Agent".to_owned(), 20.0)]);
        ClientBudgets::new(50.0, &configured)
    }

    #[test]
    fn budgets_come_from_config_then_known_clients_then_the_server() {
        let budgets = budgets();
        let of = |name| budgets.budget(name);
        assert_eq!(of(None).source, BudgetSource::Server);
        assert_eq!(of(Some("someone")).budget_s, 50.0);
        assert_eq!(of(Some("my-agent")).budget_s, 20.0);
        assert_eq!(of(Some("my-agent")).source, BudgetSource::Configured);
        assert_eq!(of(Some("cursor-vscode")).budget_s, 240.0);
        assert_eq!(of(Some("CLAUDE-AI")).source, BudgetSource::Known);
    }

    #[test]
    fn three_cancels_at_about_the_same_time_lower_the_budget_below_them() {
        let mut budgets = budgets();
        let record = budgets.record_mut("impatient");
        assert!(!record.observe_cancel(3.05));
        assert!(!record.observe_cancel(3.0));
        assert!(record.observe_cancel(3.1));
        let budget = budgets.budget(Some("impatient"));
        assert_eq!(budget.source, BudgetSource::Learned);
        assert!((budget.budget_s - 3.0 * TIMEOUT_MARGIN).abs() < 1e-9);
        let stats = budgets.stats();
        let shown = stats.iter().find(|s| s.name == "impatient").unwrap();
        assert_eq!(shown.learned_timeout_s, Some(3.0));
        assert!(shown.to_string().contains("its timeout"), "{shown}");
    }

    #[test]
    fn scattered_or_instant_cancels_reveal_nothing() {
        assert_eq!(revealed_timeout_s(&[3.0, 9.0, 30.0]), None);
        assert_eq!(revealed_timeout_s(&[0.1, 0.1, 0.1]), None);
        assert_eq!(revealed_timeout_s(&[3.0, 3.0]), None);
        assert_eq!(revealed_timeout_s(&[50.0, 3.0, 3.2, 3.1]), Some(3.0));
    }

    #[test]
    fn a_learned_budget_never_raises_a_lower_one() {
        let mut budgets = budgets();
        for _ in 0..3 {
            budgets.record_mut("my-agent").observe_cancel(60.0);
        }
        assert_eq!(budgets.budget(Some("my-agent")).budget_s, 20.0);
    }

    #[test]
    fn waiting_well_past_the_learned_timeout_forgets_it() {
        let mut budgets = budgets();
        let record = budgets.record_mut("c");
        for _ in 0..3 {
            record.observe_cancel(3.0);
        }
        assert!(!record.observe_answer(3.5));
        assert!(budgets.observe_answer("c", 10.0));
        assert_eq!(budgets.budget(Some("c")).source, BudgetSource::Server);
        assert!(!budgets.observe_answer("never-cancelled", 99.0));
        assert!(budgets.stats().iter().all(|c| c.name != "never-cancelled"));
    }

    proptest! {
        #[test]
        fn the_budget_is_positive_and_never_above_the_base(
            cancels in proptest::collection::vec(-1.0f64..100.0, 0..20),
        ) {
            let mut budgets = budgets();
            for elapsed_s in &cancels {
                budgets.record_mut("p").observe_cancel(*elapsed_s);
            }
            let budget = budgets.budget(Some("p"));
            prop_assert!(budget.budget_s > 0.0 && budget.budget_s <= 50.0);
            let record = budgets.record_mut("p");
            prop_assert!(record.cancels_s.len() <= KEPT_CANCELS);
        }
    }
}
