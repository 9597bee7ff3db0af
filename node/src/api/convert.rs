//! Conversions between wire types and domain types.

use tonic::Status;
use weft_proto::v1 as pb;

use crate::audit::AuditEntry;
use crate::error::Error;
use crate::model::{PlanId, PlanRecord, UserRecord};
use crate::service::{HistoryEntry, PlanEvent, PlanSummary, SectionView};

/// Parses a plan id field.
pub fn plan_id(s: &str) -> Result<PlanId, Status> {
    if s.is_empty() {
        return Err(Error::invalid("plan_id is required").into());
    }
    Ok(s.parse()?)
}

/// Parses an agency id field.
pub fn agency(s: &str) -> Result<crate::model::AgencyId, Status> {
    crate::model::AgencyId::parse(s.trim())
        .map_err(|e| Error::invalid(format!("agency: {e}")).into())
}

/// An optional text field: proto3 sends absent strings as empty.
pub fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// `(section, field, value)` triples.
pub fn fields(values: Vec<pb::FieldValue>) -> Vec<(String, String, String)> {
    values
        .into_iter()
        .map(|f| (f.section, f.field, f.value))
        .collect()
}

/// A plan record.
pub fn plan(p: &PlanRecord) -> pb::Plan {
    pb::Plan {
        plan_id: p.id.to_string(),
        subject_id: p.subject.to_string(),
        home_agency: p.home.to_string(),
        created_at_ms: p.created_at.as_millis(),
    }
}

/// A plan summary.
pub fn summary(s: &PlanSummary) -> pb::PlanSummary {
    pb::PlanSummary {
        plan: Some(plan(&s.plan)),
        display_name: s.display_name.clone(),
        tier: s.tier,
    }
}

/// A section view.
pub fn section(v: &SectionView) -> pb::Section {
    pb::Section {
        name: v.name.to_string(),
        content_json: v.content.to_string(),
        last_changed_by: v.last_changed_by.clone(),
        last_changed_at_ms: v.last_changed_at,
        changes: v.changes,
    }
}

/// A history entry.
pub fn history(h: &HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        section: h.section.to_string(),
        agency: h.change.agency.clone(),
        user: h.change.user.clone(),
        time_ms: h.change.time_ms,
        summary: h.change.summary.clone(),
        change_hash: h.change.hash.clone(),
    }
}

/// A plan event.
pub fn event(e: &PlanEvent) -> pb::PlanEvent {
    pb::PlanEvent {
        plan_id: e.plan.to_string(),
        section: e.section.to_string(),
        feed_seq: e.seq,
        agency: e.agency.to_string(),
        user: e.user.clone(),
        time_ms: e.time.as_millis(),
        summary: e.summary.clone(),
        durable_unix_us: unix_us(e.durable),
    }
}

/// Microseconds since the Unix epoch (0 before it).
pub fn unix_us(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A user, without its token hash.
pub fn user(u: &UserRecord, agency: &str) -> pb::User {
    pb::User {
        name: u.name.clone(),
        role: u.role.to_string(),
        agency: u.agency.as_ref().map_or(agency, |a| a.as_str()).to_string(),
        subject_ids: u.subjects.iter().map(|s| s.to_string()).collect(),
        created_at_ms: u.created_at.as_millis(),
    }
}

/// An audit entry.
pub fn audit(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        index: e.index,
        time_ms: e.draft.time.as_millis(),
        agency: e.draft.agency.clone(),
        user: e.draft.user.clone(),
        action: e.draft.action.as_str().to_string(),
        outcome: e.draft.outcome.as_str().to_string(),
        plan_id: e.draft.plan.map(|p| p.to_string()).unwrap_or_default(),
        sections: e.draft.sections.clone(),
        detail: e.draft.detail.clone(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
        basis: e.draft.basis.clone(),
    }
}
