//! Client commands: each connects to a node over TLS, sends one request with the bearer
//! token, and prints the answer as text or, with `--json`, as JSON.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value as Json};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Status};
use weft_proto::v1 as pb;

/// How to reach a node.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Node address, e.g. https://127.0.0.1:7400
    #[arg(long, env = "WEFT_NODE", global = true, hide_env_values = true)]
    pub node: Option<String>,
    /// CA certificate (PEM) that signed the node's certificate.
    #[arg(long, env = "WEFT_CA", global = true, hide_env_values = true)]
    pub ca: Option<PathBuf>,
    /// Bearer token.
    #[arg(long, env = "WEFT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

/// Connection options plus `--json`.
#[derive(Args, Debug, Clone)]
pub struct JsonConn {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `weft status`
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: JsonConn,
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to a node that sends the bearer token.
pub type Chan = InterceptedService<Channel, Bearer>;

/// Connects to the node named by `conn`.
pub async fn connect(conn: &Conn) -> anyhow::Result<Chan> {
    let node = conn
        .node
        .as_deref()
        .context("no node address: set WEFT_NODE or pass --node")?;
    let ca_path = conn
        .ca
        .as_ref()
        .context("no CA certificate: set WEFT_CA or pass --ca")?;
    let ca =
        std::fs::read(ca_path).with_context(|| format!("cannot read {}", ca_path.display()))?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let channel = Channel::from_shared(node.to_string())
        .with_context(|| format!("`{node}` is not a node address"))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {node}"))?;
    let token = match &conn.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the token has characters that cannot be sent")?,
        ),
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(token)))
}

pub(crate) fn status_error(s: Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

macro_rules! call {
    ($e:expr) => {
        $e.await.map_err(status_error)?.into_inner()
    };
}

pub(crate) fn print_json(v: &Json) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn time(ms: i64) -> String {
    weft_consent::Timestamp::from_millis(ms).to_string()
}

/// `weft plan …`
#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Create a plan for a new child; prints the plan id.
    Create {
        /// The child's given name.
        #[arg(long)]
        given_name: String,
        /// The child's family name.
        #[arg(long)]
        family_name: String,
        /// Date of birth, YYYY-MM-DD.
        #[arg(long)]
        date_of_birth: Option<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// List the plans you may see.
    List {
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Show a plan's sections (all you may read, or those named with --section).
    Show {
        /// The plan id.
        plan: String,
        /// Only these sections (repeatable).
        #[arg(long = "section")]
        sections: Vec<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Set fields: SECTION.FIELD=VALUE … (lists: a;b;c or a JSON array). All or nothing.
    Set {
        /// The plan id.
        plan: String,
        /// Assignments, e.g. profile.grade=3 health.allergies="peanuts;dust"
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Who changed which section when.
    History {
        /// The plan id.
        plan: String,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Print change events of a plan as they happen (Ctrl-C to stop).
    Watch {
        /// The plan id.
        plan: String,
        #[command(flatten)]
        conn: JsonConn,
    },
}

/// `weft goal …`
#[derive(Subcommand, Debug)]
pub enum GoalCmd {
    /// Add a goal; prints its id.
    Add {
        /// The plan id.
        plan: String,
        /// academic | social_emotional | health | family | other
        #[arg(long)]
        domain: String,
        /// What the goal is.
        #[arg(long)]
        text: String,
        /// short | long
        #[arg(long)]
        horizon: String,
        /// Target date, YYYY-MM-DD.
        #[arg(long)]
        target_date: Option<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Change a goal's status, text or target date, and/or add a progress note.
    Update {
        /// The plan id.
        plan: String,
        /// The goal id.
        goal: String,
        /// open | in_progress | met | dropped
        #[arg(long)]
        status: Option<String>,
        /// New text.
        #[arg(long)]
        text: Option<String>,
        /// New target date.
        #[arg(long)]
        target_date: Option<String>,
        /// A progress note.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
}

/// `weft referral …`
#[derive(Subcommand, Debug)]
pub enum ReferralCmd {
    /// Refer the child to a service at an agency; prints the referral id.
    Add {
        /// The plan id.
        plan: String,
        /// The service, e.g. counseling.
        #[arg(long)]
        service: String,
        /// The provider agency id.
        #[arg(long = "to")]
        to: String,
        /// A note.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Move a referral on: proposed, sent, accepted, in_progress, completed, declined.
    Update {
        /// The plan id.
        plan: String,
        /// The referral id.
        referral: String,
        /// The new status.
        #[arg(long)]
        status: String,
        /// A note.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        conn: JsonConn,
    },
}

/// `weft audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List audit entries, oldest first.
    Log {
        /// Only entries about this plan.
        #[arg(long)]
        plan: Option<String>,
        /// Start after this entry index.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// The record of disclosures of a plan: who received or read what, when, and under which
    /// consent (FERPA 34 CFR 99.32), newest first.
    Disclosures {
        /// The plan.
        #[arg(long)]
        plan: String,
        #[command(flatten)]
        conn: JsonConn,
    },
    /// Check the audit hash chain; names the first bad entry. Exits 1 if broken.
    Verify {
        #[command(flatten)]
        conn: JsonConn,
    },
}

fn parse_assignment(a: &str) -> anyhow::Result<pb::FieldValue> {
    let Some((path, value)) = a.split_once('=') else {
        bail!("`{a}` is not SECTION.FIELD=VALUE");
    };
    let Some((section, field)) = path.rsplit_once('.') else {
        bail!("`{path}` is not SECTION.FIELD");
    };
    Ok(pb::FieldValue {
        section: section.into(),
        field: field.into(),
        value: value.into(),
    })
}

/// Runs a `plan` command.
pub async fn plan(cmd: PlanCmd) -> anyhow::Result<()> {
    use pb::plan_service_client::PlanServiceClient as C;
    match cmd {
        PlanCmd::Create {
            given_name,
            family_name,
            date_of_birth,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.create_plan(pb::CreatePlanRequest {
                given_name,
                family_name,
                date_of_birth: date_of_birth.unwrap_or_default(),
                fields: vec![],
            }));
            let p = r.plan.context("no plan in the answer")?;
            if conn.json {
                print_json(
                    &json!({"plan_id": p.plan_id, "subject_id": p.subject_id, "home_agency": p.home_agency}),
                );
            } else {
                println!("{}", p.plan_id);
            }
        }
        PlanCmd::List { conn } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let r = call!(c.list_plans(pb::ListPlansRequest {
                    page_size: 500,
                    page_token: token
                }));
                all.extend(r.plans);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            if conn.json {
                let rows: Vec<Json> = all
                    .iter()
                    .map(|s| {
                        let p = s.plan.clone().unwrap_or_default();
                        json!({"plan_id": p.plan_id, "name": s.display_name, "tier": s.tier,
                               "home_agency": p.home_agency, "created": time(p.created_at_ms)})
                    })
                    .collect();
                print_json(&Json::from(rows));
            } else {
                println!("{:<36}  {:<4}  {:<28}  HOME", "PLAN", "TIER", "NAME");
                for s in &all {
                    let p = s.plan.clone().unwrap_or_default();
                    let tier = if s.tier == 0 {
                        "-".to_string()
                    } else {
                        s.tier.to_string()
                    };
                    println!(
                        "{:<36}  {:<4}  {:<28}  {}",
                        p.plan_id, tier, s.display_name, p.home_agency
                    );
                }
                println!("{} plan(s)", all.len());
            }
        }
        PlanCmd::Show {
            plan,
            sections,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.get_plan(pb::GetPlanRequest {
                plan_id: plan,
                sections
            }));
            let p = r.plan.unwrap_or_default();
            if conn.json {
                let mut secs = serde_json::Map::new();
                for s in &r.sections {
                    let content: Json = serde_json::from_str(&s.content_json).unwrap_or(Json::Null);
                    secs.insert(s.name.clone(), json!({"content": content, "last_changed_by": s.last_changed_by,
                        "last_changed_at": if s.last_changed_at_ms > 0 { time(s.last_changed_at_ms) } else { String::new() },
                        "changes": s.changes}));
                }
                print_json(
                    &json!({"plan_id": p.plan_id, "subject_id": p.subject_id, "home_agency": p.home_agency,
                    "created": time(p.created_at_ms), "sections": secs, "withheld": r.withheld}),
                );
            } else {
                println!(
                    "plan {}  (home {}, created {})",
                    p.plan_id,
                    p.home_agency,
                    time(p.created_at_ms)
                );
                for s in &r.sections {
                    let content: Json = serde_json::from_str(&s.content_json).unwrap_or(Json::Null);
                    let empty = content.as_object().is_none_or(|o| o.is_empty());
                    if empty {
                        println!("\n[{}]  (empty)", s.name);
                        continue;
                    }
                    println!(
                        "\n[{}]  last changed by {} at {}",
                        s.name,
                        s.last_changed_by,
                        time(s.last_changed_at_ms)
                    );
                    print_fields(&content, 1);
                }
                if !r.withheld.is_empty() {
                    println!("\nwithheld (no consent or role): {}", r.withheld.join(", "));
                }
            }
        }
        PlanCmd::Set {
            plan,
            assignments,
            conn,
        } => {
            let fields = assignments
                .iter()
                .map(|a| parse_assignment(a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.set_fields(pb::SetFieldsRequest {
                plan_id: plan,
                fields
            }));
            if conn.json {
                print_json(&json!({"sections": r.sections, "feed_seq": r.feed_seq}));
            } else {
                println!("updated {}", r.sections.join(", "));
            }
        }
        PlanCmd::History { plan, conn } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.plan_history(pb::PlanHistoryRequest { plan_id: plan }));
            if conn.json {
                let rows: Vec<Json> = r.entries.iter().map(|e| json!({"time": time(e.time_ms), "section": e.section,
                    "agency": e.agency, "user": e.user, "summary": e.summary, "change": e.change_hash})).collect();
                print_json(&Json::from(rows));
            } else {
                for e in &r.entries {
                    println!(
                        "{}  {:<18} {}/{}  {}",
                        time(e.time_ms),
                        e.section,
                        e.agency,
                        e.user,
                        e.summary
                    );
                }
            }
        }
        PlanCmd::Watch { plan, conn } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let mut stream = call!(c.watch_plan(pb::WatchPlanRequest { plan_id: plan }));
            while let Some(ev) = stream.message().await.map_err(status_error)? {
                if conn.json {
                    println!(
                        "{}",
                        json!({"time": time(ev.time_ms), "section": ev.section, "agency": ev.agency,
                        "user": ev.user, "summary": ev.summary, "feed_seq": ev.feed_seq})
                    );
                } else {
                    println!(
                        "{}  {:<18} {}/{}  {}",
                        time(ev.time_ms),
                        ev.section,
                        ev.agency,
                        ev.user,
                        ev.summary
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_fields(v: &Json, depth: usize) {
    let pad = "  ".repeat(depth);
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            match v {
                Json::Number(n) if k == "at_ms" => {
                    println!("{pad}at: {}", time(n.as_i64().unwrap_or(0)))
                }
                Json::Array(items) if items.is_empty() => println!("{pad}{k}: (none)"),
                Json::Object(_) => {
                    println!("{pad}{k}:");
                    print_fields(v, depth + 1);
                }
                Json::Array(items) if items.iter().any(|i| i.is_object()) => {
                    println!("{pad}{k}:");
                    for i in items {
                        println!("{pad}  -");
                        print_fields(i, depth + 2);
                    }
                }
                Json::Array(items) => println!(
                    "{pad}{k}: {}",
                    items
                        .iter()
                        .map(|i| i.as_str().map(String::from).unwrap_or(i.to_string()))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                Json::String(s) => println!("{pad}{k}: {s}"),
                other => println!("{pad}{k}: {other}"),
            }
        }
    }
}

/// Runs a `goal` command.
pub async fn goal(cmd: GoalCmd) -> anyhow::Result<()> {
    use pb::goal_service_client::GoalServiceClient as C;
    let (r, json_out) = match cmd {
        GoalCmd::Add {
            plan,
            domain,
            text,
            horizon,
            target_date,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.add_goal(pb::AddGoalRequest {
                plan_id: plan,
                domain,
                text,
                horizon,
                target_date: target_date.unwrap_or_default()
            }));
            (r, conn.json)
        }
        GoalCmd::Update {
            plan,
            goal,
            status,
            text,
            target_date,
            note,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.update_goal(pb::UpdateGoalRequest {
                plan_id: plan,
                goal_id: goal,
                status: status.unwrap_or_default(),
                text: text.unwrap_or_default(),
                target_date: target_date.unwrap_or_default(),
                note: note.unwrap_or_default(),
            }));
            (r, conn.json)
        }
    };
    if json_out {
        print_json(&serde_json::from_str(&r.goal_json).unwrap_or(Json::Null));
    } else {
        println!("{}", r.goal_id);
    }
    Ok(())
}

/// Runs a `referral` command.
pub async fn referral(cmd: ReferralCmd) -> anyhow::Result<()> {
    use pb::referral_service_client::ReferralServiceClient as C;
    let (r, json_out) = match cmd {
        ReferralCmd::Add {
            plan,
            service,
            to,
            note,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.add_referral(pb::AddReferralRequest {
                plan_id: plan,
                service,
                provider_agency: to,
                note: note.unwrap_or_default()
            }));
            (r, conn.json)
        }
        ReferralCmd::Update {
            plan,
            referral,
            status,
            note,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.update_referral(pb::UpdateReferralRequest {
                plan_id: plan,
                referral_id: referral,
                status,
                note: note.unwrap_or_default()
            }));
            (r, conn.json)
        }
    };
    if json_out {
        print_json(&serde_json::from_str(&r.referral_json).unwrap_or(Json::Null));
    } else {
        println!("{}", r.referral_id);
    }
    Ok(())
}

/// Runs an `audit` command.
pub async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    use pb::admin_service_client::AdminServiceClient as C;
    match cmd {
        AuditCmd::Log {
            plan,
            after,
            limit,
            conn,
        } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.audit_log(pb::AuditLogRequest {
                plan_id: plan.unwrap_or_default(),
                after_index: after,
                limit
            }));
            if conn.json {
                let rows: Vec<Json> = r
                    .entries
                    .iter()
                    .map(|e| {
                        json!({"index": e.index, "time": time(e.time_ms),
                    "agency": e.agency, "user": e.user, "action": e.action, "outcome": e.outcome,
                    "plan_id": e.plan_id, "sections": e.sections, "detail": e.detail, "basis": e.basis,
                    "prev_hash": e.prev_hash, "hash": e.hash})
                    })
                    .collect();
                print_json(&Json::from(rows));
            } else {
                for e in &r.entries {
                    println!(
                        "{:>6}  {}  {}/{}  {:<12} {:<6}  {}  {}  {}",
                        e.index,
                        time(e.time_ms),
                        e.agency,
                        e.user,
                        e.action,
                        e.outcome,
                        if e.plan_id.is_empty() {
                            "-"
                        } else {
                            &e.plan_id
                        },
                        e.sections.join(","),
                        e.detail
                    );
                }
            }
        }
        AuditCmd::Disclosures { plan, conn } => super::consent::disclosures(plan, conn).await?,
        AuditCmd::Verify { conn } => {
            let mut c = C::new(connect(&conn.conn).await?);
            let r = call!(c.verify_audit(pb::VerifyAuditRequest {}));
            if conn.json {
                print_json(
                    &json!({"ok": r.ok, "entries": r.entries, "first_bad_index": r.first_bad_index, "problem": r.problem}),
                );
            } else if r.ok {
                println!("audit chain ok: {} entries", r.entries);
            } else {
                println!(
                    "audit chain BROKEN at entry {}: {}",
                    r.first_bad_index, r.problem
                );
            }
            if !r.ok {
                bail!("the audit chain does not verify");
            }
        }
    }
    Ok(())
}

/// Runs `weft status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    use pb::admin_service_client::AdminServiceClient as C;
    let mut c = C::new(connect(&args.conn.conn).await?);
    let r = call!(c.status(pb::StatusRequest {}));
    let expires = if r.certificate_expires_ms > 0 {
        time(r.certificate_expires_ms)
    } else {
        "unknown".into()
    };
    if args.conn.json {
        print_json(
            &json!({"agency": r.agency, "version": r.version, "plans": r.plans, "feed_seq": r.feed_seq,
            "audit_entries": r.audit_entries, "store_bytes": r.store_bytes, "uptime_seconds": r.uptime_seconds,
            "certificate_expires": expires,
            "last_backup": if r.last_backup_ms > 0 { time(r.last_backup_ms) } else { String::new() },
            "peers": r.peers.iter().map(|p| json!({"agency": p.agency, "connected": p.connected, "behind": p.behind,
                "last_error": p.last_error})).collect::<Vec<_>>(),
            "warnings": r.warnings}),
        );
    } else {
        println!("agency         {}", r.agency);
        println!("version        {}", r.version);
        println!("certificate    expires {expires}");
        println!("plans          {}", r.plans);
        println!("feed sequence  {}", r.feed_seq);
        println!("audit entries  {}", r.audit_entries);
        println!("store bytes    {}", r.store_bytes);
        println!("uptime         {}s", r.uptime_seconds);
        println!(
            "last backup    {}",
            if r.last_backup_ms > 0 {
                time(r.last_backup_ms)
            } else {
                "never".into()
            }
        );
        for p in &r.peers {
            println!(
                "peer           {} {} (behind {})",
                p.agency,
                if p.connected { "connected" } else { "down" },
                p.behind
            );
        }
        if r.warnings.is_empty() {
            println!("warnings       none");
        }
        for w in &r.warnings {
            println!("WARNING        {w}");
        }
    }
    Ok(())
}

/// Runs `weft user add` against a node.
pub async fn user_add(args: super::UserAddArgs) -> anyhow::Result<()> {
    use pb::user_service_client::UserServiceClient as C;
    let mut c = C::new(connect(&args.conn.conn).await?);
    let r = call!(c.add_user(pb::AddUserRequest {
        name: args.name,
        role: args.role,
        plan_ids: args.plans,
        agency: args.agency.unwrap_or_default(),
    }));
    let u = r.user.unwrap_or_default();
    if args.conn.json {
        print_json(&json!({"name": u.name, "role": u.role, "agency": u.agency, "token": r.token}));
    } else {
        println!("added {} as {} at {}", u.name, u.role, u.agency);
        println!("token (shown once): {}", r.token);
    }
    Ok(())
}

/// Runs `weft guardian invite`.
pub async fn guardian_invite(args: super::GuardianInviteArgs) -> anyhow::Result<()> {
    use pb::user_service_client::UserServiceClient as C;
    let mut c = C::new(connect(&args.conn.conn).await?);
    let r = call!(c.invite_guardian(pb::InviteGuardianRequest {
        plan_id: args.plan,
        name: args.name,
        relationship: args.relationship,
    }));
    if args.conn.json {
        print_json(&json!({"link": r.link, "expires": time(r.expires_at_ms)}));
    } else {
        println!("invitation link (single use, shown once): {}", r.link);
        println!("valid until {}", time(r.expires_at_ms));
    }
    Ok(())
}

/// Runs `weft user list`.
pub async fn user_list(conn: JsonConn) -> anyhow::Result<()> {
    use pb::user_service_client::UserServiceClient as C;
    let mut c = C::new(connect(&conn.conn).await?);
    let r = call!(c.list_users(pb::ListUsersRequest {}));
    if conn.json {
        let rows: Vec<Json> = r
            .users
            .iter()
            .map(|u| {
                json!({"name": u.name, "role": u.role, "agency": u.agency, "subjects": u.subject_ids,
            "created": time(u.created_at_ms)})
            })
            .collect();
        print_json(&Json::from(rows));
    } else {
        for u in &r.users {
            println!(
                "{:<24} {:<12} {:<20} {}",
                u.name,
                u.role,
                u.agency,
                time(u.created_at_ms)
            );
        }
    }
    Ok(())
}

/// Runs `weft user whoami`.
pub async fn whoami(conn: JsonConn) -> anyhow::Result<()> {
    use pb::user_service_client::UserServiceClient as C;
    let mut c = C::new(connect(&conn.conn).await?);
    let u = call!(c.who_am_i(pb::WhoAmIRequest {}));
    if conn.json {
        print_json(
            &json!({"name": u.name, "role": u.role, "agency": u.agency, "subjects": u.subject_ids}),
        );
    } else {
        println!("{} ({}) at {}", u.name, u.role, u.agency);
    }
    Ok(())
}

/// Runs `weft peers`.
pub async fn peers(conn: JsonConn) -> anyhow::Result<()> {
    use pb::admin_service_client::AdminServiceClient as C;
    let mut c = C::new(connect(&conn.conn).await?);
    let r = call!(c.peers(pb::PeersRequest {}));
    let last = |ms: i64| {
        if ms > 0 {
            time(ms)
        } else {
            "never".to_string()
        }
    };
    if conn.json {
        let rows: Vec<Json> = r
            .peers
            .iter()
            .map(|p| {
                json!({"agency": p.agency, "endpoint": p.endpoint, "connected": p.connected,
                    "last_sync": last(p.last_sync_ms), "behind": p.behind, "last_error": p.last_error,
                    "sections_sent": p.sections_sent, "sections_received": p.sections_received,
                    "rejected": p.rejected, "purges": p.purges,
                    "bytes_sent": p.bytes_sent, "bytes_received": p.bytes_received})
            })
            .collect();
        print_json(&Json::from(rows));
    } else if r.peers.is_empty() {
        println!("no peers configured");
    } else {
        println!(
            "{:<18} {:<10} {:<26} {:>7} {:>6} {:>6}  LAST ERROR",
            "PEER", "STATE", "LAST SYNC", "BEHIND", "SENT", "RECV"
        );
        for p in &r.peers {
            println!(
                "{:<18} {:<10} {:<26} {:>7} {:>6} {:>6}  {}",
                p.agency,
                if p.connected { "connected" } else { "down" },
                last(p.last_sync_ms),
                p.behind,
                p.sections_sent,
                p.sections_received,
                if p.last_error.is_empty() {
                    "-"
                } else {
                    &p.last_error
                }
            );
        }
    }
    Ok(())
}

/// Runs `weft backup`: streams the node's backup into `out` (via a `.partial` file).
pub async fn backup(out: &std::path::Path, conn: JsonConn) -> anyhow::Result<()> {
    use pb::admin_service_client::AdminServiceClient as C;
    use tokio::io::AsyncWriteExt;
    let mut c = C::new(connect(&conn.conn).await?);
    let mut stream = call!(c.backup(pb::BackupRequest {}));
    let partial = out.with_extension("partial");
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts
        .open(&partial)
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        bytes += chunk.data.len() as u64;
        file.write_all(&chunk.data).await?;
    }
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, out).await?;
    if conn.json {
        print_json(&json!({"file": out.display().to_string(), "bytes": bytes}));
    } else {
        println!("backup written to {} ({bytes} bytes)", out.display());
    }
    Ok(())
}
