//! Who a call is made for, and whose jobs a caller may see.
//!
//! Over stdio, and over HTTP without authentication, every caller is the one local
//! user. With authentication, each request is made for the principal its token names,
//! and the jobs it starts are that principal's own: another principal's job is, to
//! it, a job that does not exist. An admin principal sees every job.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who a call is made for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Option<String>", into = "Option<String>")]
pub enum Principal {
    /// The one local user: stdio, or HTTP without authentication.
    #[default]
    Local,
    /// A caller authenticated by its token, by the name the token gave it.
    Named(Arc<str>),
}

impl Principal {
    /// A named principal.
    pub fn named(name: impl Into<Arc<str>>) -> Principal {
        Principal::Named(name.into())
    }

    /// Whether this is the local user.
    pub fn is_local(&self) -> bool {
        matches!(self, Principal::Local)
    }

    /// The name, `None` for the local user.
    pub fn name(&self) -> Option<&str> {
        match self {
            Principal::Local => None,
            Principal::Named(name) => Some(name),
        }
    }
}

impl From<Option<String>> for Principal {
    fn from(name: Option<String>) -> Principal {
        name.map_or(Principal::Local, Principal::named)
    }
}

impl From<Principal> for Option<String> {
    fn from(principal: Principal) -> Option<String> {
        principal.name().map(str::to_owned)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Local => f.write_str("the local user"),
            Principal::Named(name) => f.write_str(name),
        }
    }
}

/// A request's caller: its principal, and whether it may see every principal's jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// Who it is.
    pub principal: Principal,
    /// Whether it is an admin (`[auth] admins`).
    pub admin: bool,
}

impl Caller {
    /// The local user: stdio, or HTTP without authentication.
    pub fn local() -> Caller {
        Caller::default()
    }

    /// Whether a job of `owner` is visible to this caller.
    pub fn sees(&self, owner: &Principal) -> bool {
        self.admin || self.principal == *owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_sees_its_own_jobs_and_an_admin_sees_all() {
        let alice = Caller {
            principal: Principal::named("alice"),
            admin: false,
        };
        let ops = Caller {
            principal: Principal::named("ops"),
            admin: true,
        };
        assert!(alice.sees(&Principal::named("alice")));
        assert!(!alice.sees(&Principal::named("bob")));
        assert!(!alice.sees(&Principal::Local));
        assert!(!Caller::local().sees(&Principal::named("alice")));
        assert!(Caller::local().sees(&Principal::Local));
        assert!(ops.sees(&Principal::named("alice")) && ops.sees(&Principal::Local));
    }

    #[test]
    fn the_local_user_is_stored_as_no_name() {
        assert_eq!(
            serde_json::to_value(Principal::Local).unwrap(),
            serde_json::Value::Null
        );
        let alice: Principal = serde_json::from_str("\"alice\"").unwrap();
        assert_eq!(alice, Principal::named("alice"));
        assert_eq!(
            serde_json::from_str::<Principal>("null").unwrap(),
            Principal::Local
        );
    }
}
