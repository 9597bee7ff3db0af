//! The node's error type. `api::error` holds the one table that maps these kinds to gRPC codes.
//!
//! Messages name what is wrong (a section, a field, a limit) and never carry student data or
//! internal details; internal causes are logged, not returned.

use thiserror::Error;

/// Everything that can go wrong inside a node.
#[derive(Clone, Debug, Error)]
pub enum Error {
    /// The caller presented no valid token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The caller may not do this; the reason names the rule, not data.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Bad input: names the field and the problem.
    #[error("invalid argument: {0}")]
    InvalidInput(String),
    /// The named thing does not exist (or the caller may not know that it does).
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The operation cannot run in the current state (e.g. a section not yet replicated).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The operation stopped part way and the caller should start it again (a watch that
    /// fell behind its plan's events).
    #[error("aborted: {0}")]
    Aborted(String),
    /// The store failed; the detail is for logs only.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug or an unexpected state; the detail is for logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Bad input with a message naming the problem.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// A storage failure.
    pub fn storage(err: impl std::fmt::Display) -> Self {
        Error::Storage(err.to_string())
    }

    /// An internal failure.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Error::Internal(err.to_string())
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(e: automerge::AutomergeError) -> Self {
        Error::Internal(format!("automerge: {e}"))
    }
}

/// Results of node operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
