//! `weft.v1.PlanService`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::plan_service_server::PlanService;

use super::{caller, convert};
use crate::service::NodeService;

/// The plan service over a node.
pub struct PlanApi {
    svc: Arc<NodeService>,
}

impl PlanApi {
    /// Wraps a node service.
    pub fn new(svc: Arc<NodeService>) -> Self {
        Self { svc }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PlanEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PlanService for PlanApi {
    /// `CreatePlan`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "CreatePlan"))]
    async fn create_plan(
        &self,
        req: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::CreatePlanResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let plan = self
            .svc
            .create_plan(
                &who,
                &r.given_name,
                &r.family_name,
                convert::opt(&r.date_of_birth),
                convert::fields(r.fields),
            )
            .await?;
        Ok(Response::new(pb::CreatePlanResponse {
            plan: Some(convert::plan(&plan)),
        }))
    }

    /// `ListPlans`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "ListPlans"))]
    async fn list_plans(
        &self,
        req: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let after = convert::opt(&r.page_token)
            .map(convert::plan_id)
            .transpose()?;
        let size = if r.page_size == 0 {
            100
        } else {
            r.page_size as usize
        };
        let (plans, next) = self.svc.list_plans(&who, after, size).await?;
        Ok(Response::new(pb::ListPlansResponse {
            plans: plans.iter().map(convert::summary).collect(),
            next_page_token: next.map(|p| p.to_string()).unwrap_or_default(),
        }))
    }

    /// `GetPlan`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "GetPlan"))]
    async fn get_plan(
        &self,
        req: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let (plan, views, withheld) = self
            .svc
            .get_plan(&who, convert::plan_id(&r.plan_id)?, &r.sections)
            .await?;
        Ok(Response::new(pb::GetPlanResponse {
            plan: Some(convert::plan(&plan)),
            sections: views.iter().map(convert::section).collect(),
            withheld: withheld.iter().map(|s| s.to_string()).collect(),
        }))
    }

    /// `SetFields`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "SetFields"))]
    async fn set_fields(
        &self,
        req: Request<pb::SetFieldsRequest>,
    ) -> Result<Response<pb::SetFieldsResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let edited = self
            .svc
            .set_fields(
                &who,
                convert::plan_id(&r.plan_id)?,
                convert::fields(r.fields),
            )
            .await?;
        Ok(Response::new(pb::SetFieldsResponse {
            sections: edited.sections.iter().map(|s| s.to_string()).collect(),
            feed_seq: edited.feed_seq,
            durable_unix_us: convert::unix_us(edited.durable),
        }))
    }

    /// `PlanHistory`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "PlanHistory"))]
    async fn plan_history(
        &self,
        req: Request<pb::PlanHistoryRequest>,
    ) -> Result<Response<pb::PlanHistoryResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let entries = self
            .svc
            .history(&who, convert::plan_id(&req.get_ref().plan_id)?)
            .await?;
        Ok(Response::new(pb::PlanHistoryResponse {
            entries: entries.iter().map(convert::history).collect(),
        }))
    }

    type WatchPlanStream = EventStream;

    /// `WatchPlan`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "WatchPlan"))]
    async fn watch_plan(
        &self,
        req: Request<pb::WatchPlanRequest>,
    ) -> Result<Response<Self::WatchPlanStream>, Status> {
        let who = caller(&self.svc, &req).await?;
        let plan = convert::plan_id(&req.get_ref().plan_id)?;
        let events = self.svc.watch(&who, plan).await?;
        // An error (the watch fell behind) ends the stream with its status.
        let stream = events.map(|e| e.map(|e| convert::event(&e)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
