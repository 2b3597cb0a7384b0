//! Progress of an inline call for its client: the engine rings a mailbox every second
//! (and when the tool reports), and the request's own task sends the notification,
//! where rmcp knows which request (and over HTTP which stream) it belongs to.

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::Peer;
use rmcp::RoleServer;

use crate::engine::{
    CallFuture, CallOutcome, EngineError, HearProgress, InlineProgress, WorkOutput,
};
use crate::lock::lock;
use crate::policy::Seconds;

/// The latest progress report of an inline call, for the request's task to send.
#[derive(Default)]
pub(super) struct ProgressMailbox {
    latest: std::sync::Mutex<Option<InlineProgress>>,
    ring: tokio::sync::Notify,
}

impl HearProgress for ProgressMailbox {
    fn hear(&self, progress: InlineProgress) {
        *lock(&self.latest) = Some(progress);
        self.ring.notify_one();
    }
}

impl ProgressMailbox {
    async fn take(&self) -> InlineProgress {
        loop {
            let taken = lock(&self.latest).take();
            if let Some(progress) = taken {
                return progress;
            }
            self.ring.notified().await;
        }
    }
}

/// Waits for a call that did not end at its first poll, sending its progress as it
/// comes.
pub(super) async fn with_progress<T: WorkOutput>(
    outcome: &mut CallFuture<'_, T>,
    token: ProgressToken,
    mailbox: &ProgressMailbox,
    peer: &Peer<RoleServer>,
) -> Result<CallOutcome<T>, EngineError> {
    loop {
        // The notification is sent outside the select, which would otherwise hold its
        // output (an outcome's worth of bytes) across the send.
        let progress = tokio::select! {
            biased;
            outcome = &mut *outcome => return outcome,
            progress = mailbox.take() => progress,
        };
        let note = progress_notification(token.clone(), &progress);
        // Boxed: rmcp's send future is kilobytes.
        if let Err(e) = Box::pin(peer.notify_progress(note)).await {
            tracing::debug!(error = %e, "could not send a progress notification");
        }
    }
}

/// The notification for an inline call that is still running: the seconds it has run
/// as the progress (always rising), the prediction as the total while it lies ahead,
/// and the tool's own progress in the message.
fn progress_notification(
    token: ProgressToken,
    progress: &InlineProgress,
) -> ProgressNotificationParam {
    let mut message = format!("running for {}", Seconds(progress.elapsed_s));
    let mut note = ProgressNotificationParam::new(token, progress.elapsed_s);
    if let Some(predicted_s) = progress.predicted_s {
        message.push_str(&format!(", predicted {}", Seconds(predicted_s)));
        if predicted_s > progress.elapsed_s {
            note = note.with_total(predicted_s);
        }
    }
    if let Some(tool) = &progress.tool {
        message.push_str(&format!(" ({tool})"));
    }
    note.with_message(message)
}
