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

/// The names of the client API's gRPC services, as the health service reports them.
pub const SERVICE_NAMES: &[&str] = &[
    "weft.v1.PlanService",
    "weft.v1.GoalService",
    "weft.v1.ReferralService",
    "weft.v1.UserService",
    "weft.v1.ConsentService",
    "weft.v1.AdminService",
];

/// Builds the client API router over a service, with the standard gRPC health service
/// (`grpc.health.v1.Health`, every Weft service reported as serving) and server reflection
/// (so `grpcurl` can list and call the API). Returns the health reporter, so the server can
/// report not-serving when it starts to shut down.
pub async fn routes(
    svc: Arc<NodeService>,
) -> Result<(tonic::service::Routes, tonic_health::server::HealthReporter), crate::error::Error> {
    use weft_proto::v1::*;
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Reflection lists the services on this port only (not the peer-only Federation).
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in SERVICE_NAMES {
        reflection = reflection.with_service_name(*name);
    }
    let reflection = reflection
        .build_v1()
        .map_err(|e| crate::error::Error::Internal(format!("reflection: {e}")))?;
    let mut b = tonic::service::Routes::builder();
    b.add_service(health).add_service(reflection);
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
    Ok((b.routes(), reporter))
}
