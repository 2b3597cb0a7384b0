//! What the proxy passes down besides answers: the upstream's log messages and its
//! resource updates, each to the downstream sessions that asked for them.
//!
//! There is one upstream for every downstream session, so a resource is subscribed to
//! upstream when its first downstream session subscribes and unsubscribed when its last
//! leaves; an update goes to the sessions subscribed to that resource only. A session
//! is known by the client information it sent at `initialize` (rmcp's peers have no
//! identity of their own, and `resources/subscribe` exists only in that lifecycle).

use std::sync::{Arc, Mutex};

// Logging is deprecated in MCP, and still sent by the servers the proxy fronts.
#[allow(deprecated)]
use rmcp::model::LoggingMessageNotificationParam;
use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::service::Peer;
use rmcp::RoleServer;

use crate::lock::lock;

/// Downstream sessions and the resources each is subscribed to.
#[derive(Default)]
pub(super) struct Relay {
    subscribed: Mutex<Vec<(String, Peer<RoleServer>)>>,
}

/// Whether two peers are the same downstream session.
fn same_session(a: &Peer<RoleServer>, b: &Peer<RoleServer>) -> bool {
    match (a.peer_info(), b.peer_info()) {
        (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
        _ => false,
    }
}

impl Relay {
    /// Records a session's subscription; true when it is the resource's first, so the
    /// caller subscribes upstream.
    pub(super) fn subscribe(&self, uri: &str, session: Peer<RoleServer>) -> bool {
        let mut subscribed = lock(&self.subscribed);
        let first = !subscribed.iter().any(|(u, _)| u == uri);
        if !subscribed
            .iter()
            .any(|(u, p)| u == uri && same_session(p, &session))
        {
            subscribed.push((uri.to_owned(), session));
        }
        first
    }

    /// Forgets a subscription that upstream refused.
    pub(super) fn refused(&self, uri: &str, session: &Peer<RoleServer>) {
        lock(&self.subscribed).retain(|(u, p)| !(u == uri && same_session(p, session)));
    }

    /// Ends a session's subscription; true when no session is left on the resource, so
    /// the caller unsubscribes upstream.
    pub(super) fn unsubscribe(&self, uri: &str, session: &Peer<RoleServer>) -> bool {
        let mut subscribed = lock(&self.subscribed);
        let before = subscribed.iter().filter(|(u, _)| u == uri).count();
        subscribed.retain(|(u, p)| !(u == uri && same_session(p, session)));
        let left = subscribed.iter().filter(|(u, _)| u == uri).count();
        before > 0 && left == 0
    }

    /// Passes an update to the sessions subscribed to its resource; a session that is
    /// gone is forgotten.
    pub(super) async fn resource_updated(&self, update: ResourceUpdatedNotificationParam) {
        let sessions: Vec<Peer<RoleServer>> = lock(&self.subscribed)
            .iter()
            .filter(|(uri, _)| *uri == update.uri)
            .map(|(_, peer)| peer.clone())
            .collect();
        for session in sessions {
            if session
                .notify_resource_updated(update.clone())
                .await
                .is_err()
            {
                lock(&self.subscribed).retain(|(_, p)| !same_session(p, &session));
            }
        }
    }
}

/// Passes an upstream log message to every downstream session (the upstream has one
/// level for all of them: the last `logging/setLevel` any session sent).
#[allow(deprecated)] // see the import
pub(super) async fn log_message(
    sessions: Vec<Peer<RoleServer>>,
    message: LoggingMessageNotificationParam,
) {
    for session in sessions {
        let _ = session.notify_logging_message(message.clone()).await;
    }
}
