//! `weft.v1.UserService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::user_service_server::UserService;

use super::{caller, convert};
use crate::service::NodeService;

/// The user service over a node.
pub struct UserApi {
    svc: Arc<NodeService>,
}

impl UserApi {
    /// Wraps a node service.
    pub fn new(svc: Arc<NodeService>) -> Self {
        Self { svc }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    /// `AddUser`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "AddUser"))]
    async fn add_user(
        &self,
        req: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let role = r.role.parse()?;
        let plans = r
            .plan_ids
            .iter()
            .map(|p| convert::plan_id(p))
            .collect::<Result<Vec<_>, _>>()?;
        let agency = convert::opt(&r.agency).map(convert::agency).transpose()?;
        let (user, token) = self
            .svc
            .add_user(&who, &r.name, role, &plans, agency)
            .await?;
        Ok(Response::new(pb::AddUserResponse {
            user: Some(convert::user(&user, self.svc.agency().as_str())),
            token,
        }))
    }

    /// `ListUsers`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "ListUsers"))]
    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let users = self.svc.list_users(&who).await?;
        let agency = self.svc.agency().as_str();
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(|u| convert::user(u, agency)).collect(),
        }))
    }

    /// `InviteGuardian`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "InviteGuardian"))]
    async fn invite_guardian(
        &self,
        req: Request<pb::InviteGuardianRequest>,
    ) -> Result<Response<pb::InviteGuardianResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let plan = convert::plan_id(&r.plan_id)?;
        let base = self.svc.family_url().ok_or_else(|| {
            Status::failed_precondition(
                "the family page is not enabled on this node (add [family] to its config)",
            )
        })?;
        let invite = self
            .svc
            .invite_guardian(&who, plan, &r.name, &r.relationship)
            .await?;
        Ok(Response::new(pb::InviteGuardianResponse {
            link: crate::family::invite_link(&base, &invite.token),
            expires_at_ms: invite.expires_at_ms,
        }))
    }

    /// `WhoAmI`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "WhoAmI"))]
    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = caller(&self.svc, &req).await?;
        Ok(Response::new(pb::User {
            name: who.user.clone(),
            role: who.role.to_string(),
            agency: who.agency.to_string(),
            subject_ids: who.subjects.iter().map(|s| s.to_string()).collect(),
            created_at_ms: 0,
        }))
    }
}
