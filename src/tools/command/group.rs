//! The command's process group: the kernel kills the command if the server dies, and
//! a cancelled, timed-out or dropped run takes its whole group (and everything that
//! carries its run id) with it, since `kill_on_drop` reaches only the direct child.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::reap::end_runs;

/// How long a stopped command gets after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Has the kernel kill the command when the server dies, even by `kill -9` (issue
/// 14, break 7: commands kept running, their jobs read "interrupted by restart"). The
/// signal follows the thread that spawned the child: a runtime's worker, which lives
/// as long as the runtime. What the command starts itself is in its process group,
/// which cancellation and a clean stop kill.
pub(super) fn die_with_the_server(command: &mut tokio::process::Command) {
    let server = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec, and makes only
    // async-signal-safe system calls (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The server may have died before the call above took effect.
            if nix::unistd::getppid() != server {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Kills the process group, and every process that carries the run's id, when the run
/// is dropped before the command ended: a shutdown or an aborted job must not leave a
/// build running, and `kill_on_drop` reaches only the direct child.
pub(super) struct GroupGuard(pub(super) Option<(Pid, uuid::Uuid)>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some((group, run)) = self.0 {
            let _ = killpg(group, Signal::SIGKILL);
            end_runs(&[run]);
        }
    }
}

/// SIGTERM to the whole process group, then SIGKILL if it is still there.
pub(super) async fn stop_group(group: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = killpg(group, Signal::SIGKILL);
        }
        // Children of the command may outlive it in the group: make sure they go too.
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::super::tests::{roots, spec};
    use super::super::CommandTool;
    use super::*;
    use crate::jobs::JobContext;
    use crate::run_error::RunError;
    use crate::tools::Tool;

    #[tokio::test]
    async fn cancelling_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell starts a grandchild and records its pid.
        let script = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
        let tool = CommandTool::new(spec(&["sh", "-c", &script]), dir.path(), roots()).unwrap();
        let token = CancellationToken::new();
        let work = tool.start(&json!({})).unwrap();
        let running = tokio::spawn(work(JobContext::new(token.clone())));
        let grandchild = wait_for_pid(&pid_file).await;
        token.cancel();
        assert_eq!(running.await.unwrap().unwrap_err(), RunError::Cancelled);
        assert!(
            gone(grandchild),
            "the grandchild {grandchild} is still running"
        );
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
        let tool = CommandTool::new(spec(&["sh", "-c", &script]), dir.path(), roots()).unwrap();
        let work = tool.start(&json!({})).unwrap();
        let running = tokio::spawn(work(JobContext::new(CancellationToken::new())));
        let grandchild = wait_for_pid(&pid_file).await;
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert!(
            gone(grandchild),
            "the grandchild {grandchild} is still running"
        );
    }

    async fn wait_for_pid(pid_file: &std::path::Path) -> i32 {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(pid_file) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the command never wrote its pid");
    }

    /// Whether a process has exited (or is a zombie waiting for its parent).
    fn gone(pid: i32) -> bool {
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            nix::sys::signal::kill(Pid::from_raw(pid), None).is_err()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
        })
    }
}
