//! `weft.v1.GoalService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::goal_service_server::GoalService;

use super::{caller, convert};
use crate::service::{GoalChange, NodeService};

/// The goal service over a node.
pub struct GoalApi {
    svc: Arc<NodeService>,
}

impl GoalApi {
    /// Wraps a node service.
    pub fn new(svc: Arc<NodeService>) -> Self {
        Self { svc }
    }
}

#[tonic::async_trait]
impl GoalService for GoalApi {
    /// `AddGoal`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "AddGoal"))]
    async fn add_goal(
        &self,
        req: Request<pb::AddGoalRequest>,
    ) -> Result<Response<pb::GoalResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let (id, goal) = self
            .svc
            .add_goal(
                &who,
                convert::plan_id(&r.plan_id)?,
                &r.domain,
                &r.text,
                &r.horizon,
                convert::opt(&r.target_date),
            )
            .await?;
        Ok(Response::new(pb::GoalResponse {
            goal_id: id,
            goal_json: goal.to_string(),
        }))
    }

    /// `UpdateGoal`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "UpdateGoal"))]
    async fn update_goal(
        &self,
        req: Request<pb::UpdateGoalRequest>,
    ) -> Result<Response<pb::GoalResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let goal = self
            .svc
            .update_goal(
                &who,
                convert::plan_id(&r.plan_id)?,
                &r.goal_id,
                GoalChange {
                    status: convert::opt(&r.status),
                    text: convert::opt(&r.text),
                    target_date: convert::opt(&r.target_date),
                    note: convert::opt(&r.note),
                },
            )
            .await?;
        Ok(Response::new(pb::GoalResponse {
            goal_id: r.goal_id,
            goal_json: goal.to_string(),
        }))
    }
}
