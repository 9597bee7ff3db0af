//! `weft.v1.ReferralService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::referral_service_server::ReferralService;

use super::{caller, convert};
use crate::service::NodeService;

/// The referral service over a node.
pub struct ReferralApi {
    svc: Arc<NodeService>,
}

impl ReferralApi {
    /// Wraps a node service.
    pub fn new(svc: Arc<NodeService>) -> Self {
        Self { svc }
    }
}

#[tonic::async_trait]
impl ReferralService for ReferralApi {
    /// `AddReferral`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "AddReferral"))]
    async fn add_referral(
        &self,
        req: Request<pb::AddReferralRequest>,
    ) -> Result<Response<pb::ReferralResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let (id, json) = self
            .svc
            .add_referral(
                &who,
                convert::plan_id(&r.plan_id)?,
                &r.service,
                &r.provider_agency,
                convert::opt(&r.note),
            )
            .await?;
        Ok(Response::new(pb::ReferralResponse {
            referral_id: id,
            referral_json: json.to_string(),
        }))
    }

    /// `UpdateReferral`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "UpdateReferral"))]
    async fn update_referral(
        &self,
        req: Request<pb::UpdateReferralRequest>,
    ) -> Result<Response<pb::ReferralResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let json = self
            .svc
            .update_referral(
                &who,
                convert::plan_id(&r.plan_id)?,
                &r.referral_id,
                &r.status,
                convert::opt(&r.note),
            )
            .await?;
        Ok(Response::new(pb::ReferralResponse {
            referral_id: r.referral_id,
            referral_json: json.to_string(),
        }))
    }
}
