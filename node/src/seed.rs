//! Sample plans for demos, benchmarks and load tests: realistic sections (a profile, goals
//! with progress notes, referrals with their status history, family needs), about 1 KB
//! each once saved, edited by the home agency and by a partner agency.
//!
//! Everything goes through the same validated section edits as the client API
//! ([`SectionDoc::apply`]), so a seeded section is indistinguishable from a typed one.
//! Names and notes are invented and deterministic in the sample number.

use std::sync::Arc;

use crate::audit::{AuditAction, AuditDraft, Outcome};
use crate::catalogue::{spec_for, FieldSpec, FieldValue, GOALS, REFERRALS};
use crate::error::{Error, Result};
use crate::model::{
    AgencyId, Caller, PlanId, PlanRecord, Role, SectionKey, SectionName, SubjectId, Timestamp,
};
use crate::section::{Edit, SectionDoc};
use crate::service::{GrantInput, NodeService};
use crate::storage::{CommitBatch, SectionWrite};

const GIVEN: &[&str] = &[
    "Maya", "Liam", "Sofia", "Noah", "Aaliyah", "Mateo", "Chloe", "Elijah", "Amara", "Diego",
];
const FAMILY: &[&str] = &[
    "Example", "Sample", "Rivera", "Okafor", "Nguyen", "Kowalski", "Haddad", "Silva",
];
const GOAL_TEXTS: &[&str] = &[
    "Read for twenty minutes every evening with a family member and log the book titles",
    "Attend school at least 95% of days this term; the family will call the office before any absence",
    "Use the calm-down plan when frustrated in class and tell a trusted adult afterwards",
    "Eat breakfast at school every day and try one new vegetable each week",
    "Complete and hand in math homework four days out of five",
];
const NOTES: &[&str] = &[
    "Met with the family after school. Good week overall; mornings remain the hard part.",
    "Teacher reports steady progress in reading groups; keep the same book level for now.",
    "Clinic visit done, follow-up booked. Family asked for help with transport on Tuesdays.",
    "Counsellor check-in: uses the breathing card without prompting about half the time.",
];

fn pick<'a>(list: &[&'a str], i: u64, salt: u64) -> &'a str {
    list[((i.wrapping_mul(2654435761).wrapping_add(salt)) % list.len() as u64) as usize]
}

fn field(
    spec: &'static FieldSpec,
    section: &str,
    value: &str,
) -> Result<(&'static FieldSpec, FieldValue)> {
    Ok((spec, spec.parse(section, value)?))
}

fn set(section: &str, values: &[(&str, String)]) -> Result<Edit> {
    let spec = spec_for(section)?;
    let mut out = Vec::new();
    for (name, value) in values {
        out.push(field(spec.field(name)?, section, value)?);
    }
    Ok(Edit::Set(out))
}

/// The sections of sample plan `i`, each an Automerge document: `profile`, `goals`,
/// `services` and `family`, written by a coordinator of `home` and (goals progress, a
/// referral step) a caseworker of `partner`, starting at `at`.
pub fn sample_plan(
    i: u64,
    home: &AgencyId,
    partner: &AgencyId,
    at: Timestamp,
) -> Result<Vec<(SectionName, SectionDoc)>> {
    let coordinator = Caller {
        agency: home.clone(),
        user: "coordinator".into(),
        role: Role::Coordinator,
        subjects: vec![],
    };
    let caseworker = Caller {
        agency: partner.clone(),
        user: "caseworker".into(),
        role: Role::Caseworker,
        subjects: vec![],
    };
    let tick = |n: u64| Timestamp::from_millis(at.as_millis() + n as i64 * 60_000);
    let mut out = Vec::new();

    let mut profile = SectionDoc::new();
    let spec = spec_for("profile")?;
    profile.apply(
        spec,
        &coordinator,
        &set(
            "profile",
            &[
                ("given_name", pick(GIVEN, i, 1).to_string()),
                ("family_name", pick(FAMILY, i, 2).to_string()),
                (
                    "date_of_birth",
                    format!("2016-{:02}-{:02}", 1 + i % 12, 1 + i % 28),
                ),
                (
                    "grade",
                    ["k", "1", "2", "3", "4", "5"][(i % 6) as usize].to_string(),
                ),
                ("school", "Lincoln Elementary".to_string()),
                (
                    "home_language",
                    ["English", "Spanish", "Vietnamese"][(i % 3) as usize].to_string(),
                ),
                (
                    "guardians",
                    format!("{} {} (mother)", pick(GIVEN, i, 3), pick(FAMILY, i, 2)),
                ),
                ("tier", (1 + i % 4).to_string()),
            ],
        )?,
        tick(0),
    )?;
    profile.apply(
        spec,
        &coordinator,
        &set(
            "profile",
            &[(
                "notes",
                format!("{} {}", pick(NOTES, i, 4), pick(NOTES, i, 5)),
            )],
        )?,
        tick(1),
    )?;
    out.push((SectionName::parse("profile")?, profile));

    let mut goals = SectionDoc::new();
    let spec = spec_for("goals")?;
    for g in 0..2u64 {
        let id = format!("g-{i:x}-{g}");
        goals.apply(
            spec,
            &coordinator,
            &Edit::AddGoal {
                id: id.clone(),
                fields: vec![
                    field(
                        &GOALS.fields[0],
                        "goals",
                        ["academic", "social_emotional", "health"][(g % 3) as usize],
                    )?,
                    field(&GOALS.fields[1], "goals", pick(GOAL_TEXTS, i, 5 + g))?,
                    field(&GOALS.fields[2], "goals", "short")?,
                    field(&GOALS.fields[3], "goals", "open")?,
                ],
            },
            tick(2 + g),
        )?;
        goals.apply(
            spec,
            &caseworker,
            &Edit::UpdateGoal {
                id,
                fields: vec![],
                note: Some(pick(NOTES, i, 7 + g).to_string()),
            },
            tick(4 + g),
        )?;
    }
    out.push((SectionName::parse("goals")?, goals));

    let mut services = SectionDoc::new();
    let spec = spec_for("services")?;
    let id = format!("r-{i:x}");
    services.apply(
        spec,
        &coordinator,
        &Edit::AddReferral {
            id: id.clone(),
            fields: vec![
                field(
                    &REFERRALS.fields[0],
                    "services",
                    "after-school tutoring, twice a week",
                )?,
                field(&REFERRALS.fields[1], "services", partner.as_str())?,
                field(&REFERRALS.fields[2], "services", "proposed")?,
            ],
            note: Some("Family agreed at the plan meeting; the school will share the reading goals with the tutor.".into()),
        },
        tick(6),
    )?;
    services.apply(
        spec,
        &coordinator,
        &Edit::UpdateReferral {
            id: id.clone(),
            status: "sent".into(),
            note: None,
        },
        tick(7),
    )?;
    services.apply(
        spec,
        &caseworker,
        &Edit::UpdateReferral {
            id,
            status: "accepted".into(),
            note: Some("First session booked for Monday.".into()),
        },
        tick(8),
    )?;
    out.push((SectionName::parse("services")?, services));

    let mut family = SectionDoc::new();
    family.apply(
        spec_for("family")?,
        &coordinator,
        &set(
            "family",
            &[
                ("household_size", (2 + i % 5).to_string()),
                (
                    "housing",
                    ["stable", "doubled_up", "stable", "shelter"][(i % 4) as usize].to_string(),
                ),
                (
                    "primary_contact",
                    format!("{} {}", pick(GIVEN, i, 3), pick(FAMILY, i, 2)),
                ),
                ("contact_phone", format!("555-01{:02}", i % 100)),
                ("needs", "transport;food".to_string()),
                (
                    "notes",
                    format!("{} {}", pick(NOTES, i, 9), pick(NOTES, i, 10)),
                ),
            ],
        )?,
        tick(9),
    )?;
    out.push((SectionName::parse("family")?, family));
    Ok(out)
}

/// What [`seed`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Seeded {
    /// Plans created.
    pub plans: u64,
    /// Sections written.
    pub sections: u64,
    /// Bytes of the saved sections.
    pub bytes: u64,
    /// Consents recorded.
    pub consents: u64,
}

/// Plans written per transaction.
const BATCH: usize = 250;

/// Which of `n` agencies sample plan `i` is consented to when each plan picks between
/// `min` and `max` of them (deterministic, spread evenly).
pub fn consent_pick(i: u64, n: usize, min: usize, max: usize) -> Vec<usize> {
    if n == 0 {
        return vec![];
    }
    let (min, max) = (min.clamp(1, n), max.clamp(1, n));
    let span = max.saturating_sub(min) + 1;
    let k = min + (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as usize % span;
    let first = (i.wrapping_mul(2654435761) >> 7) as usize % n;
    (0..k.min(n))
        .map(|j| (first + j * 7919) % n)
        .fold(Vec::new(), |mut v, a| {
            if !v.contains(&a) {
                v.push(a);
            }
            v
        })
}

/// How [`seed`] consents its plans (every consent covers all four sections).
#[derive(Clone, Debug)]
pub struct SeedConsents {
    /// The agencies plans are consented to.
    pub grantees: Vec<AgencyId>,
    /// `read` or `read_write`.
    pub access: String,
    /// The consents' last day (YYYY-MM-DD).
    pub until: String,
    /// Consent each plan to between min and max of `grantees` ([`consent_pick`]) instead of
    /// to all of them.
    pub pick: Option<(usize, usize)>,
    /// When not empty, add only the plans consented to one of these agencies, with only
    /// their consents to these. Plans keep their numbers, so each has the content and the
    /// picks it has in the whole set: a benchmark compares the same deliveries to these
    /// agencies with and without the rest of the set beside them.
    pub only_for: Vec<AgencyId>,
}

impl SeedConsents {
    /// Every plan consented to every one of `grantees`.
    pub fn to_all(grantees: Vec<AgencyId>, access: &str, until: &str) -> Self {
        Self {
            grantees,
            access: access.into(),
            until: until.into(),
            pick: None,
            only_for: vec![],
        }
    }

    /// The agencies sample plan `i` is consented to.
    pub fn for_plan(&self, i: u64) -> Vec<&AgencyId> {
        let chosen: Vec<&AgencyId> = match self.pick {
            None => self.grantees.iter().collect(),
            Some((min, max)) => consent_pick(i, self.grantees.len(), min, max)
                .into_iter()
                .map(|a| &self.grantees[a])
                .collect(),
        };
        if self.only_for.is_empty() {
            return chosen;
        }
        chosen
            .into_iter()
            .filter(|a| self.only_for.contains(a))
            .collect()
    }

    /// Whether sample plan `i` is added.
    fn adds(&self, i: u64) -> bool {
        self.only_for.is_empty() || !self.for_plan(i).is_empty()
    }
}

/// Adds the sample plans numbered `0..plans` to the node behind `svc` (its store must not
/// be served by another process), consented as `consents` says (with
/// [`SeedConsents::only_for`], only some of them are added). Plans are written `BATCH` to a
/// transaction with one audit entry each batch (`seed`); consents go through
/// [`NodeService::grant`] as a coordinator named `seed`, so they are validated, signed and
/// audited like any other.
pub async fn seed(svc: &Arc<NodeService>, plans: u64, consents: &SeedConsents) -> Result<Seeded> {
    let home = svc.agency().clone();
    let partner = consents
        .grantees
        .first()
        .cloned()
        .unwrap_or_else(|| AgencyId::parse("partner.test").expect("a valid agency id"));
    let caller = Caller {
        agency: home.clone(),
        user: "seed".into(),
        role: Role::Coordinator,
        subjects: vec![],
    };
    let now = crate::model::now();
    let mut out = Seeded::default();
    let numbers: Vec<u64> = (0..plans).filter(|i| consents.adds(*i)).collect();
    for numbers in numbers.chunks(BATCH) {
        // Build the documents on the blocking pool (two halves, one per core).
        let (first, second) = numbers.split_at(numbers.len() / 2);
        let build = |numbers: Vec<u64>| {
            let (home, partner) = (home.clone(), partner.clone());
            tokio::task::spawn_blocking(move || {
                numbers
                    .into_iter()
                    .map(|i| {
                        let sections = sample_plan(i, &home, &partner, now)?;
                        Ok(sections
                            .into_iter()
                            .map(|(name, mut doc)| (name, doc.save(), doc.heads()))
                            .collect::<Vec<_>>())
                    })
                    .collect::<Result<Vec<_>>>()
            })
        };
        let (a, b) = tokio::join!(build(first.to_vec()), build(second.to_vec()));
        let docs = [a, b]
            .into_iter()
            .map(|r| r.map_err(|e| Error::internal(format!("seed task failed: {e}")))?)
            .collect::<Result<Vec<_>>>()?;
        let mut batch = CommitBatch::audit_only(AuditDraft {
            time: now,
            agency: home.to_string(),
            user: caller.user.clone(),
            action: AuditAction::CreatePlan,
            outcome: Outcome::Ok,
            plan: None,
            sections: vec![],
            detail: format!("seed: {} sample plans", numbers.len()),
            basis: "home agency".into(),
        });
        for sections in docs.into_iter().flatten() {
            let plan = PlanRecord {
                id: PlanId::random(),
                subject: SubjectId::random(),
                home: home.clone(),
                created_at: now,
            };
            for (section, bytes, heads) in sections {
                out.sections += 1;
                out.bytes += bytes.len() as u64;
                batch.changes.push(SectionWrite {
                    key: SectionKey {
                        plan: plan.id,
                        section,
                    },
                    bytes,
                    heads,
                });
            }
            batch.new_plans.push(plan);
        }
        let ids: Vec<PlanId> = batch.new_plans.iter().map(|p| p.id).collect();
        svc.store().commit(batch).await?;
        out.plans += ids.len() as u64;
        let wanted: Vec<(PlanId, &AgencyId)> = ids
            .iter()
            .zip(numbers)
            .flat_map(|(id, i)| consents.for_plan(*i).into_iter().map(move |g| (*id, g)))
            .collect();
        for chunk in wanted.chunks(64) {
            let grants = chunk.iter().map(|(id, grantee)| {
                svc.grant(
                    &caller,
                    GrantInput {
                        plan: Some(*id),
                        grantee: grantee.to_string(),
                        sections: vec![
                            "profile".into(),
                            "goals".into(),
                            "services".into(),
                            "family".into(),
                        ],
                        access: consents.access.clone(),
                        purpose: "care_coordination".into(),
                        valid_from: None,
                        valid_until: consents.until.clone(),
                        grantor_name: "Sample Guardian".into(),
                        relationship: "parent".into(),
                        method: "paper".into(),
                    },
                )
            });
            for r in futures::future::join_all(grants).await {
                r?;
                out.consents += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sections_are_about_a_kilobyte_and_load() {
        let home = AgencyId::parse("school.test").unwrap();
        let partner = AgencyId::parse("clinic.test").unwrap();
        let plan = sample_plan(
            7,
            &home,
            &partner,
            Timestamp::from_millis(1_700_000_000_000),
        )
        .unwrap();
        assert_eq!(plan.len(), 4);
        let plan: Vec<(SectionName, Vec<u8>)> = plan
            .into_iter()
            .map(|(name, mut doc)| (name, doc.save()))
            .collect();
        let sizes: Vec<usize> = plan.iter().map(|(_, b)| b.len()).collect();
        eprintln!("sample section sizes: {sizes:?}");
        let total: usize = sizes.iter().sum();
        assert!(
            (2_000..8_000).contains(&total),
            "{total} bytes for four sections"
        );
        for (name, bytes) in &plan {
            let doc = SectionDoc::load(Some(bytes), &[]).unwrap();
            assert!(!doc.render().to_string().is_empty(), "{name}");
        }
        let goals = SectionDoc::load(Some(&plan[1].1), &[])
            .unwrap()
            .render()
            .to_string();
        assert!(goals.contains("progress"), "{goals}");
    }

    #[test]
    fn a_subset_for_some_agencies_keeps_their_plans_and_picks_and_nothing_else() {
        let grantees: Vec<AgencyId> = (0..40)
            .map(|i| AgencyId::parse(&format!("agency{i:02}.test")).unwrap())
            .collect();
        let whole = SeedConsents {
            pick: Some((1, 5)),
            ..SeedConsents::to_all(grantees.clone(), "read", "2099-12-31")
        };
        let subset = SeedConsents {
            only_for: grantees[..4].to_vec(),
            ..whole.clone()
        };
        let (mut added, mut kept) = (0, 0);
        for i in 0..2_000 {
            let all = whole.for_plan(i);
            assert!((1..=5).contains(&all.len()), "plan {i}: {all:?}");
            let wanted: Vec<&AgencyId> = all
                .into_iter()
                .filter(|a| grantees[..4].contains(a))
                .collect();
            assert_eq!(subset.for_plan(i), wanted, "plan {i}");
            assert_eq!(subset.adds(i), !wanted.is_empty(), "plan {i}");
            assert!(whole.adds(i));
            added += usize::from(subset.adds(i));
            kept += wanted.len();
        }
        // 1-5 of 40 each, neighbours in the list (3 on average): about 6 plans in 40 name
        // one of the first four.
        assert!((200..500).contains(&added), "{added} of 2,000 plans added");
        assert!(kept >= added);
    }
}
