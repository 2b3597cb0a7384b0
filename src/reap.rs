//! Ending every process a run started, wherever it went.
//!
//! A command tool runs in a process group of its own, which cancellation kills, and
//! dies with the server (`PR_SET_PDEATHSIG`). Neither reaches a process that left the
//! group (`setsid`, a daemon's double fork), nor, after a `kill -9` of the server, the
//! command's own children. So every command carries its run's id in its environment
//! ([`RUN_VAR`]), which everything it starts inherits; a cancel ends every process
//! that carries it, and a restart ends what the runs it finds interrupted left behind.
//! The id is random per run, so a reused pid can never be mistaken for one of ours. A
//! process that clears its own environment escapes this, by its own choice. Linux only
//! (it reads `/proc/PID/environ`, readable for our own processes).

use std::collections::HashSet;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use uuid::Uuid;

/// The environment variable that carries a command's run id.
pub const RUN_VAR: &str = "SMART_ASYNC_RUN";

/// How many times the process table is read: a process can fork while it is read,
/// and its child is found on the next round.
const ROUNDS: usize = 8;

/// Kills (SIGKILL) every process, other than this one, whose environment carries one
/// of these runs' ids; returns how many it killed.
pub fn end_runs(runs: &[Uuid]) -> usize {
    let marks: Vec<Vec<u8>> = runs
        .iter()
        .filter(|run| !run.is_nil())
        .map(|run| format!("{RUN_VAR}={run}").into_bytes())
        .collect();
    if marks.is_empty() {
        return 0;
    }
    let me = std::process::id();
    let mut killed = HashSet::new();
    for _ in 0..ROUNDS {
        let found: Vec<u32> = marked(&marks, me)
            .into_iter()
            .filter(|pid| !killed.contains(pid))
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in found {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
    }
    killed.len()
}

/// Pids whose environment holds one of `marks` exactly (a zombie's reads empty).
fn marked(marks: &[Vec<u8>], me: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|pair| marks.iter().any(|mark| pair == mark.as_slice()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    }

    #[test]
    fn kills_what_carries_the_mark_and_nothing_else() {
        let run = Uuid::new_v4();
        let other = Uuid::new_v4();
        let spawn = |mark: Uuid| {
            std::process::Command::new("sleep")
                .arg("600")
                .env(RUN_VAR, mark.to_string())
                .spawn()
                .unwrap()
        };
        let mut marked = spawn(run);
        let mut spared = spawn(other);
        // A child just spawned may not show its new environment in /proc yet under
        // load (seen once in a full run): a cancel comes long after the spawn.
        let mut killed = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while killed == 0 && Instant::now() < deadline {
            killed = end_runs(&[run, Uuid::nil()]);
            if killed == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(killed, 1);
        marked.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            assert!(alive(spared.id()), "another run's process is left alone");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(end_runs(&[Uuid::nil()]), 0, "the nil id marks nothing");
        spared.kill().unwrap();
        spared.wait().unwrap();
    }
}
