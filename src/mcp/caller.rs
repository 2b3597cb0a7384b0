//! Whose request this is: the caller the HTTP guard authenticated (in the request's
//! HTTP parts), else the local user; and the jobs that caller may see. Another
//! principal's job is answered exactly as an unknown id, so its existence does not
//! leak.

use rmcp::service::RequestContext;
use rmcp::RoleServer;
use uuid::Uuid;

use crate::engine::{Engine, EngineError};
use crate::jobs::{Job, JobError};
use crate::principal::{Caller, Principal};

/// The request's caller.
pub(super) fn caller(ctx: &RequestContext<RoleServer>) -> Caller {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .unwrap_or_default()
}

/// The job `id` as `caller` may see it: not found when it is another principal's.
pub(super) fn visible_job(engine: &Engine, id: Uuid, caller: &Caller) -> Result<Job, EngineError> {
    let job = engine.job(id)?;
    if caller.sees(&job.owner) {
        Ok(job)
    } else {
        Err(EngineError::Job(JobError::NotFound(id)))
    }
}

/// Whose jobs a list shows the caller: its own, or all for an admin.
pub(super) fn listed_owner(caller: &Caller) -> Option<Principal> {
    (!caller.admin).then(|| caller.principal.clone())
}
