//! `weft.v1.AdminService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_service_server::AdminService;

use super::{caller, convert};
use crate::service::NodeService;

/// The admin service over a node.
pub struct AdminApi {
    svc: Arc<NodeService>,
}

impl AdminApi {
    /// Wraps a node service.
    pub fn new(svc: Arc<NodeService>) -> Self {
        Self { svc }
    }
}

fn peer_status(
    agency: crate::model::AgencyId,
    i: crate::service::replica::PeerInfo,
    head: u64,
) -> pb::PeerStatus {
    pb::PeerStatus {
        agency: agency.to_string(),
        endpoint: i.endpoint,
        connected: i.connected,
        last_sync_ms: i.last_sync_ms,
        behind: head.saturating_sub(i.acked_seq),
        last_error: i.last_error,
        sections_sent: i.sections_sent,
        sections_received: i.sections_received,
        rejected: i.rejected,
        purges: i.purges,
        bytes_sent: i.bytes_sent,
        bytes_received: i.bytes_received,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    /// `Status`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Status"))]
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let st = self.svc.status(&who).await?;
        let head = st.stats.feed_seq;
        Ok(Response::new(pb::StatusResponse {
            agency: self.svc.agency().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            plans: st.stats.plans,
            feed_seq: st.stats.feed_seq,
            audit_entries: st.stats.audit_entries,
            store_bytes: st.stats.bytes,
            uptime_seconds: st.uptime_seconds,
            certificate_expires_ms: st.certificate_expires.map_or(0, |t| t.as_millis()),
            peers: st
                .peers
                .into_iter()
                .map(|(a, i)| peer_status(a, i, head))
                .collect(),
            warnings: st.warnings,
            last_backup_ms: self.svc.last_backup().await?.map_or(0, |t| t.as_millis()),
        }))
    }

    /// `AuditLog`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "AuditLog"))]
    async fn audit_log(
        &self,
        req: Request<pb::AuditLogRequest>,
    ) -> Result<Response<pb::AuditLogResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let r = req.into_inner();
        let plan = convert::opt(&r.plan_id).map(convert::plan_id).transpose()?;
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let entries = self.svc.audit_log(&who, plan, r.after_index, limit).await?;
        Ok(Response::new(pb::AuditLogResponse {
            entries: entries.iter().map(convert::audit).collect(),
        }))
    }

    /// `VerifyAudit`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "VerifyAudit"))]
    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let out = match self.svc.verify_audit(&who).await? {
            Ok(n) => pb::VerifyAuditResponse {
                ok: true,
                entries: n,
                first_bad_index: 0,
                problem: String::new(),
            },
            Err(b) => pb::VerifyAuditResponse {
                ok: false,
                entries: 0,
                first_bad_index: b.index,
                problem: b.problem,
            },
        };
        Ok(Response::new(out))
    }

    /// `Peers`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Peers"))]
    async fn peers(
        &self,
        req: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let who = caller(&self.svc, &req).await?;
        let (peers, head) = self.svc.peers(&who).await?;
        Ok(Response::new(pb::PeersResponse {
            peers: peers
                .into_iter()
                .map(|(agency, i)| peer_status(agency, i, head))
                .collect(),
        }))
    }

    type BackupStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    /// `Backup`.
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "Backup"))]
    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let who = caller(&self.svc, &req).await?;
        let (file, summary) = self.svc.backup(&who).await?;
        tracing::info!(
            records = summary.records,
            bytes = summary.bytes,
            "backup taken"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = match file.reopen() {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!("backup file: {e}"))));
                    return;
                }
            };
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = pb::BackupChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ =
                            tx.blocking_send(Err(Status::internal(format!("backup file: {e}"))));
                        break;
                    }
                }
            }
            drop(file);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
