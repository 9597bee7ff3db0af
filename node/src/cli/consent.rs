//! `weft consent …` and `weft audit disclosures`: the family's controls from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value as Json};
use weft_proto::v1 as pb;

use super::client::{connect, print_json, status_error, time, JsonConn};

/// `weft consent …`
#[derive(Subcommand, Debug)]
pub enum ConsentCmd {
    /// Record a consent the family gave; prints its id.
    Grant {
        /// The plan.
        #[arg(long)]
        plan: String,
        /// The agency that may receive the sections.
        #[arg(long = "to")]
        to: String,
        /// Sections, comma-separated (e.g. goals,health).
        #[arg(long, value_delimiter = ',', required = true)]
        sections: Vec<String>,
        /// read | read_write
        #[arg(long)]
        access: String,
        /// care_coordination | referral | evaluation
        #[arg(long)]
        purpose: String,
        /// Last day the consent is valid, YYYY-MM-DD (through the end of that day, UTC).
        #[arg(long)]
        until: String,
        /// First day, YYYY-MM-DD (default: now).
        #[arg(long)]
        from: Option<String>,
        /// Who consented (guardian or eligible student).
        #[arg(long)]
        grantor: String,
        /// parent | guardian | foster_parent | eligible_student | other
        #[arg(long)]
        relationship: String,
        /// paper_form (paper) | e_signature | verbal_with_witness
        #[arg(long, default_value = "paper_form")]
        method: String,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Revoke a consent (final); the other agency loses access at once.
    Revoke {
        /// The consent id.
        consent: String,
        /// Why (optional).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// List a plan's consents with their state now.
    List {
        /// The plan.
        #[arg(long)]
        plan: String,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Show one consent.
    Get {
        /// The consent id.
        consent: String,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Why may (or may not) an agency read or write a section of a plan now?
    Explain {
        /// The plan.
        #[arg(long)]
        plan: String,
        /// The agency asking.
        #[arg(long)]
        agency: String,
        /// The section.
        #[arg(long)]
        section: String,
        /// read | write
        #[arg(long, default_value = "read")]
        action: String,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Export a plan's consents as HL7 FHIR R4 Consent resources (a JSON Bundle).
    Export {
        /// The plan.
        #[arg(long)]
        plan: String,
        /// FHIR R4 JSON (the only format).
        #[arg(long, required = true)]
        fhir: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: super::client::Conn,
    },
}

fn view_json(v: &pb::ConsentView) -> Json {
    json!({
        "consent_id": v.consent_id, "state": v.state, "subject_id": v.subject_id,
        "grantor": v.grantor_name, "relationship": v.relationship,
        "disclosing_agency": v.disclosing_agency, "recorded_by": v.recorded_by,
        "recorded_at": time(v.recorded_at_ms), "method": v.method,
        "provisions": v.provisions.iter().map(|p| json!({
            "to": p.grantee_agency, "sections": p.sections, "access": p.access, "purpose": p.purpose,
            "from": time(p.valid_from_ms), "until": time(p.valid_until_ms)})).collect::<Vec<_>>(),
        "revoked_by": v.revoked_by,
        "revoked_at": if v.revoked_at_ms > 0 { time(v.revoked_at_ms) } else { String::new() },
        "revocation_reason": v.revocation_reason,
        "signer": v.signer, "signature_sha256": v.signature_sha256,
    })
}

fn print_view(v: &pb::ConsentView) {
    println!(
        "{}  {}  given by {} ({}), recorded by {} at {} ({})",
        v.consent_id,
        v.state,
        v.grantor_name,
        v.relationship,
        v.recorded_by,
        time(v.recorded_at_ms),
        v.method
    );
    for p in &v.provisions {
        println!(
            "    {} may {} {} for {} until {}",
            p.grantee_agency,
            if p.access == "read_write" {
                "read and write"
            } else {
                "read"
            },
            p.sections.join(", "),
            p.purpose,
            time(p.valid_until_ms)
        );
    }
    if !v.revoked_by.is_empty() {
        println!(
            "    revoked by {} at {}{}",
            v.revoked_by,
            time(v.revoked_at_ms),
            if v.revocation_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", v.revocation_reason)
            }
        );
    }
}

/// Runs a `consent` command.
pub async fn run(cmd: ConsentCmd) -> anyhow::Result<()> {
    use pb::consent_service_client::ConsentServiceClient as C;
    match cmd {
        ConsentCmd::Grant {
            plan,
            to,
            sections,
            access,
            purpose,
            until,
            from,
            grantor,
            relationship,
            method,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let method = if method == "paper" {
                "paper_form".to_string()
            } else {
                method
            };
            let v = c
                .grant(pb::GrantRequest {
                    plan_id: plan,
                    grantee_agency: to,
                    sections,
                    access,
                    purpose,
                    valid_from: from.unwrap_or_default(),
                    valid_until: until,
                    grantor_name: grantor,
                    relationship,
                    method,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if conn.json {
                print_json(&view_json(&v))
            } else {
                println!("{}", v.consent_id)
            }
        }
        ConsentCmd::Revoke {
            consent,
            reason,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let v = c
                .revoke(pb::RevokeRequest {
                    consent_id: consent,
                    reason: reason.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if conn.json {
                print_json(&view_json(&v))
            } else {
                println!("revoked {}", v.consent_id)
            }
        }
        ConsentCmd::List { plan, conn } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = c
                .list(pb::ListConsentsRequest {
                    plan_id: plan,
                    subject_id: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if conn.json {
                print_json(&Json::from(
                    r.consents.iter().map(view_json).collect::<Vec<_>>(),
                ));
            } else if r.consents.is_empty() {
                println!("no consents: only the home agency holds this plan");
            } else {
                r.consents.iter().for_each(print_view);
            }
        }
        ConsentCmd::Get { consent, conn } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let v = c
                .get(pb::GetConsentRequest {
                    consent_id: consent,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if conn.json {
                print_json(&view_json(&v))
            } else {
                print_view(&v)
            }
        }
        ConsentCmd::Explain {
            plan,
            agency,
            section,
            action,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = c
                .explain(pb::ExplainRequest {
                    plan_id: plan,
                    agency,
                    section,
                    action,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if conn.json {
                print_json(&json!({"allowed": r.allowed, "reason": r.reason}));
            } else {
                println!("{}", r.reason);
            }
        }
        ConsentCmd::Export {
            plan,
            fhir: _,
            out,
            conn,
        } => {
            let mut c = C::new(connect(&conn).await?);
            let r = c
                .export_fhir(pb::ExportFhirRequest { plan_id: plan })
                .await
                .map_err(status_error)?
                .into_inner();
            let v: Json = serde_json::from_str(&r.bundle_json).context("the node sent bad JSON")?;
            let text = serde_json::to_string_pretty(&v)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, text + "\n")
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("{}", path.display());
                }
                None => println!("{text}"),
            }
        }
    }
    Ok(())
}

/// Runs `weft audit disclosures`.
pub async fn disclosures(plan: String, conn: JsonConn) -> anyhow::Result<()> {
    use pb::consent_service_client::ConsentServiceClient as C;
    let mut c = C::new(connect(&conn.conn).await?);
    let r = c
        .disclosures(pb::DisclosuresRequest { plan_id: plan })
        .await
        .map_err(status_error)?
        .into_inner();
    if conn.json {
        let rows: Vec<Json> = r
            .disclosures
            .iter()
            .map(|d| json!({"time": time(d.time_ms), "agency": d.agency, "user": d.user, "action": d.action,
                "sections": d.sections, "basis": d.basis}))
            .collect();
        print_json(&Json::from(rows));
    } else {
        for d in &r.disclosures {
            println!(
                "{}  {:<30} {:<14} {:<24} under {}",
                time(d.time_ms),
                format!("{}/{}", d.agency, d.user),
                d.action,
                d.sections.join(","),
                if d.basis.is_empty() { "-" } else { &d.basis }
            );
        }
    }
    Ok(())
}
