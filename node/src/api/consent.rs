//! `weft.v1.ConsentService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_consent::Action;
use weft_proto::v1 as pb;
use weft_proto::v1::consent_service_server::ConsentService;

use super::{caller, convert};
use crate::error::Error;
use crate::service::{ConsentView, GrantInput, NodeService};

/// The consent service over a node.
pub struct ConsentApi {
    svc: Arc<NodeService>,
}

impl ConsentApi {
    /// Wraps a node service.
    pub fn new(svc: Arc<NodeService>) -> Self {
        Self { svc }
    }
}

fn view(v: &ConsentView) -> pb::ConsentView {
    let r = &v.record;
    pb::ConsentView {
        consent_id: r.id.to_string(),
        subject_id: r.subject.clone(),
        grantor_name: r.grantor.name.clone(),
        relationship: r.grantor.relationship.to_string(),
        disclosing_agency: r.disclosing_agency.to_string(),
        recorded_by: format!("{}/{}", r.recorded_by.agency, r.recorded_by.user),
        recorded_at_ms: r.recorded_at.as_millis(),
        method: r.collection_method.to_string(),
        provisions: r
            .provisions
            .iter()
            .map(|p| pb::ProvisionView {
                grantee_agency: p.grantee.to_string(),
                sections: p.sections.clone(),
                access: p.access.to_string(),
                purpose: p.purpose.to_string(),
                valid_from_ms: p.valid_from.as_millis(),
                valid_until_ms: p.valid_until.map_or(0, |t| t.as_millis()),
            })
            .collect(),
        state: v.state.as_str().to_string(),
        revoked_by: v
            .revocation
            .as_ref()
            .map(|x| format!("{}/{}", x.revoked_by.agency, x.revoked_by.user))
            .unwrap_or_default(),
        revoked_at_ms: v
            .revocation
            .as_ref()
            .map_or(0, |x| x.revoked_at.as_millis()),
        revocation_reason: v
            .revocation
            .as_ref()
            .and_then(|x| x.reason.clone())
            .unwrap_or_default(),
        signer: v.signer.to_string(),
        signature_sha256: hex::encode(v.digest),
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    /// `Grant`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Grant"))]
    async fn grant(
        &self,
        req: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let input = GrantInput {
            plan: Some(convert::plan_id(&r.plan_id)?),
            grantee: r.grantee_agency,
            sections: r.sections,
            access: r.access,
            purpose: r.purpose,
            valid_from: convert::opt(&r.valid_from).map(String::from),
            valid_until: r.valid_until,
            grantor_name: r.grantor_name,
            relationship: r.relationship,
            method: r.method,
        };
        Ok(Response::new(view(&self.svc.grant(&who, input).await?)))
    }

    /// `Revoke`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Revoke"))]
    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        if r.consent_id.is_empty() {
            return Err(Error::invalid("consent_id is required").into());
        }
        let v = self
            .svc
            .revoke(&who, &r.consent_id, convert::opt(&r.reason))
            .await?;
        Ok(Response::new(view(&v)))
    }

    /// `List`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "List"))]
    async fn list(
        &self,
        req: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let plan = convert::opt(&r.plan_id).map(convert::plan_id).transpose()?;
        let subject = convert::opt(&r.subject_id).map(|s| s.parse()).transpose()?;
        let views = self.svc.list_consents(&who, plan, subject).await?;
        Ok(Response::new(pb::ListConsentsResponse {
            consents: views.iter().map(view).collect(),
        }))
    }

    /// `Get`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Get"))]
    async fn get(
        &self,
        req: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        let who = caller(&self.svc, &req).await?;
        let v = self
            .svc
            .get_consent(&who, &req.get_ref().consent_id)
            .await?;
        Ok(Response::new(view(&v)))
    }

    /// `Explain`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Explain"))]
    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let action = match r.action.as_str() {
            "" | "read" => Action::Read,
            "write" => Action::Write,
            other => {
                return Err(
                    Error::invalid(format!("action `{other}`: expected read or write")).into(),
                )
            }
        };
        let d = self
            .svc
            .explain(
                &who,
                convert::plan_id(&r.plan_id)?,
                &r.agency,
                &r.section,
                action,
            )
            .await?;
        Ok(Response::new(pb::ExplainResponse {
            allowed: d.is_allow(),
            reason: d.to_string(),
        }))
    }

    /// `ExportFhir`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "ExportFhir"))]
    async fn export_fhir(
        &self,
        req: Request<pb::ExportFhirRequest>,
    ) -> Result<Response<pb::ExportFhirResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let bundle = self
            .svc
            .export_fhir(&who, convert::plan_id(&req.get_ref().plan_id)?)
            .await?;
        Ok(Response::new(pb::ExportFhirResponse {
            bundle_json: bundle.to_string(),
        }))
    }

    /// `Disclosures`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Disclosures"))]
    async fn disclosures(
        &self,
        req: Request<pb::DisclosuresRequest>,
    ) -> Result<Response<pb::DisclosuresResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let entries = self
            .svc
            .disclosures(&who, convert::plan_id(&req.get_ref().plan_id)?)
            .await?;
        Ok(Response::new(pb::DisclosuresResponse {
            disclosures: entries
                .iter()
                .map(|e| pb::Disclosure {
                    time_ms: e.draft.time.as_millis(),
                    agency: e.draft.agency.clone(),
                    user: e.draft.user.clone(),
                    action: e.draft.action.as_str().to_string(),
                    sections: e.draft.sections.clone(),
                    basis: e.draft.basis.clone(),
                })
                .collect(),
        }))
    }
}
