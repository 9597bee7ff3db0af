//! The one table that maps node errors to gRPC status codes.
//!
//! Internal and storage details are logged here and replaced by a generic message, so no
//! internal detail or student data reaches a client.

use tonic::{Code, Status};

use crate::error::Error;

/// Converts a node error into the status a client sees.
pub fn to_status(err: Error) -> Status {
    let code = match &err {
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::InvalidInput(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Aborted(_) => Code::Aborted,
        Error::Storage(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
    };
    match err {
        Error::Storage(detail) => {
            tracing::error!(%detail, "storage error");
            Status::new(code, "the node's store failed; see the node's log")
        }
        Error::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            Status::new(code, "internal error; see the node's log")
        }
        other => Status::new(code, other.to_string()),
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        to_status(err)
    }
}
