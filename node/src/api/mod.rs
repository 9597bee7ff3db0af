//! The client API: tonic services, one file per gRPC service.
//!
//! Each handler opens a span, authenticates the caller, converts the request into domain
//! types (`convert`), calls [`NodeService`], and maps errors through the one table in
//! [`error`]. Nothing else.
//!
//! *Architecture invariant:* only `node::api` touches generated proto types.

pub mod admin;
pub mod consent;
pub mod convert;
pub mod error;
pub mod federation;
pub mod goals;
pub mod plans;
pub mod referrals;
pub mod users;

use std::sync::Arc;

use tonic::{Request, Status};

use crate::model::Caller;
use crate::service::NodeService;

/// Largest request accepted by the client API.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Reads the bearer token from `authorization` metadata and resolves the caller.
pub(crate) async fn caller<T>(svc: &NodeService, req: &Request<T>) -> Result<Caller, Status> {
    let token = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
    Ok(svc.authenticate(token.filter(|t| !t.is_empty())).await?)
}

/// Builds the client API router over a service.
pub fn routes(svc: Arc<NodeService>) -> tonic::service::Routes {
    use weft_proto::v1::*;
    let mut b = tonic::service::Routes::builder();
    b.add_service(
        plan_service_server::PlanServiceServer::new(plans::PlanApi::new(svc.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        goal_service_server::GoalServiceServer::new(goals::GoalApi::new(svc.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        referral_service_server::ReferralServiceServer::new(referrals::ReferralApi::new(
            svc.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        user_service_server::UserServiceServer::new(users::UserApi::new(svc.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        consent_service_server::ConsentServiceServer::new(consent::ConsentApi::new(svc.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        admin_service_server::AdminServiceServer::new(admin::AdminApi::new(svc))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    );
    b.routes()
}
