//! The decision: may `agency` do `action` on `section` of a plan homed at `plan_home`, at
//! `now`?
//!
//! [`evaluate()`] is a pure function of its arguments. The rules, in order:
//!
//! 1. The plan's home agency is always allowed to read and write every section.
//! 2. Otherwise, default deny. Only provisions that name the agency as grantee and name the
//!    section (exactly) are considered, and only in consents whose `disclosing_agency` is the
//!    plan's home.
//! 3. Such a provision allows when its consent is valid ([`ConsentRecord::validate`]), its id
//!    is carried by one record only, it is not revoked, `valid_from <= now < valid_until`, and
//!    its access permits the action (`read_write` implies `read`).
//! 4. When several provisions allow, the one whose validity lasts longest wins, then the
//!    smallest consent id, then the wider access, then the purpose; so the reason does not
//!    depend on the order records arrived in.
//! 5. When none allows, the most informative reason wins, in this order (most first):
//!    * [`DenyReason::ReadOnly`]: a consent is in force but grants read only; the nearest
//!      thing to an allow, and the one a caseworker can act on (ask for `read_write`);
//!    * [`DenyReason::Revoked`]: the family withdrew consent; an explicit choice, and
//!      permanent, so it outranks a lapse in time;
//!    * [`DenyReason::Expired`]: the latest expiry wins;
//!    * [`DenyReason::NotYetValid`]: the earliest start wins;
//!    * [`DenyReason::InvalidRecord`], then [`DenyReason::ConflictingRecords`];
//!    * [`DenyReason::NoConsent`].
//!
//!    Within one provision the checks run in the order of rule 3 (invalid, conflicting,
//!    revoked, not yet valid, expired, read only), so a revoked consent that has also expired
//!    reports `Revoked`. Ties fall to the smallest consent id.
//!
//! A revocation takes effect as soon as it is in the [`ConsentSet`], whatever its
//! `revoked_at`: the family's decision is known, and node clocks differ. Any revocation naming
//! the consent id counts, whoever recorded it; checking that revocations come from the plan's
//! home is the node's job when it verifies their signatures.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AgencyId, ConsentId, Timestamp};
use crate::record::{ConsentRecord, Provision};
use crate::set::{ConsentEntry, ConsentSet};
use crate::vocab::{Access, Action, Purpose};

/// Why access is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowReason {
    /// The agency is the plan's home agency.
    HomeAgency,
    /// A provision of this consent is in force.
    Consent {
        /// The consent relied on.
        consent: ConsentId,
        /// Its provision's purpose.
        purpose: Purpose,
        /// Its provision's access.
        access: Access,
        /// When the provision ends.
        until: Timestamp,
    },
}

impl fmt::Display for AllowReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowReason::HomeAgency => f.write_str("the agency is the plan's home agency"),
            AllowReason::Consent {
                consent,
                purpose,
                access,
                until,
            } => write!(
                f,
                "consent {consent} grants {access} access for {purpose} until {until}"
            ),
        }
    }
}

/// Why access is denied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No consent from the plan's home agency names this agency and section.
    NoConsent,
    /// The consent that would apply has been revoked.
    Revoked {
        /// The revoked consent.
        consent: ConsentId,
    },
    /// The consent that would apply has expired.
    Expired {
        /// The expired consent.
        consent: ConsentId,
        /// When its provision ended.
        at: Timestamp,
    },
    /// The consent that would apply is not in force yet.
    NotYetValid {
        /// The future consent.
        consent: ConsentId,
        /// When its provision starts.
        from: Timestamp,
    },
    /// A consent in force grants `read` only, and `write` was asked.
    ReadOnly {
        /// The read-only consent.
        consent: ConsentId,
    },
    /// The consent that would apply fails validation and cannot be relied on.
    InvalidRecord {
        /// The invalid consent.
        consent: ConsentId,
    },
    /// Different records carry the id of the consent that would apply.
    ConflictingRecords {
        /// The ambiguous consent id.
        consent: ConsentId,
    },
}

impl DenyReason {
    /// Rank of the reason (higher is more informative), and a tie-break value within the rank.
    fn priority(&self) -> (u8, i128) {
        match self {
            DenyReason::NoConsent => (0, 0),
            DenyReason::ConflictingRecords { .. } => (1, 0),
            DenyReason::InvalidRecord { .. } => (2, 0),
            DenyReason::NotYetValid { from, .. } => (3, -i128::from(from.as_millis())),
            DenyReason::Expired { at, .. } => (4, i128::from(at.as_millis())),
            DenyReason::Revoked { .. } => (5, 0),
            DenyReason::ReadOnly { .. } => (6, 0),
        }
    }

    /// The consent the reason names, if any.
    pub fn consent(&self) -> Option<&ConsentId> {
        match self {
            DenyReason::NoConsent => None,
            DenyReason::Revoked { consent }
            | DenyReason::Expired { consent, .. }
            | DenyReason::NotYetValid { consent, .. }
            | DenyReason::ReadOnly { consent }
            | DenyReason::InvalidRecord { consent }
            | DenyReason::ConflictingRecords { consent } => Some(consent),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoConsent => f.write_str(
                "no consent from the plan's home agency grants this section to the agency",
            ),
            DenyReason::Revoked { consent } => write!(f, "consent {consent} has been revoked"),
            DenyReason::Expired { consent, at } => write!(f, "consent {consent} expired at {at}"),
            DenyReason::NotYetValid { consent, from } => {
                write!(f, "consent {consent} is not in force before {from}")
            }
            DenyReason::ReadOnly { consent } => {
                write!(f, "consent {consent} grants read access only, not write")
            }
            DenyReason::InvalidRecord { consent } => write!(
                f,
                "consent {consent} is incomplete or invalid and cannot be relied on"
            ),
            DenyReason::ConflictingRecords { consent } => write!(
                f,
                "different records carry consent id {consent}, so none can be relied on"
            ),
        }
    }
}

/// The outcome of [`evaluate()`]. `Display` gives a full reason, e.g.
/// `denied: consent c1 expired at 2025-09-01T00:00:00.000Z`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The action is allowed.
    Allow(AllowReason),
    /// The action is denied.
    Deny(DenyReason),
}

impl Decision {
    /// Whether the action is allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The consent relied on or named by the reason, if any.
    pub fn consent(&self) -> Option<&ConsentId> {
        match self {
            Decision::Allow(AllowReason::Consent { consent, .. }) => Some(consent),
            Decision::Allow(AllowReason::HomeAgency) => None,
            Decision::Deny(reason) => reason.consent(),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(reason) => write!(f, "allowed: {reason}"),
            Decision::Deny(reason) => write!(f, "denied: {reason}"),
        }
    }
}

/// Assesses one provision that names the agency and section.
fn assess(
    entry: &ConsentEntry<'_>,
    records: &ConsentSet,
    provision: &Provision,
    action: Action,
    now: Timestamp,
) -> Result<AllowReason, DenyReason> {
    let consent = entry.record.id.clone();
    if !entry.valid {
        return Err(DenyReason::InvalidRecord { consent });
    }
    if entry.conflicting {
        return Err(DenyReason::ConflictingRecords { consent });
    }
    if records.is_revoked(&entry.record.id).is_some() {
        return Err(DenyReason::Revoked { consent });
    }
    // A valid record always has an expiry; treat a missing one as invalid all the same.
    let Some(until) = provision.valid_until else {
        return Err(DenyReason::InvalidRecord { consent });
    };
    if now < provision.valid_from {
        return Err(DenyReason::NotYetValid {
            consent,
            from: provision.valid_from,
        });
    }
    if until <= now {
        return Err(DenyReason::Expired { consent, at: until });
    }
    if !provision.access.permits(action) {
        return Err(DenyReason::ReadOnly { consent });
    }
    Ok(AllowReason::Consent {
        consent,
        purpose: provision.purpose,
        access: provision.access,
        until,
    })
}

/// The provisions of consents from `plan_home` that name `agency` and `section`.
fn matching<'a>(
    records: &'a ConsentSet,
    agency: &'a AgencyId,
    plan_home: &'a AgencyId,
    section: &'a str,
) -> impl Iterator<Item = (ConsentEntry<'a>, &'a Provision)> + 'a {
    records
        .entries()
        .filter(move |entry| &entry.record.disclosing_agency == plan_home)
        .flat_map(move |entry| {
            let record: &'a ConsentRecord = entry.record;
            record
                .provisions
                .iter()
                .filter(move |p| &p.grantee == agency && p.covers(section))
                .map(move |p| {
                    (
                        ConsentEntry {
                            record,
                            valid: entry.valid,
                            conflicting: entry.conflicting,
                        },
                        p,
                    )
                })
        })
}

/// Decides whether `agency` may do `action` on `section` of a plan whose home agency is
/// `plan_home`, at `now`, under the consents and revocations in `records`. See the
/// [module docs](mod@crate::evaluate) for the rules.
///
/// `records` should hold the consents of the plan's subject (see [`ConsentSet::for_subject`]).
pub fn evaluate(
    records: &ConsentSet,
    agency: &AgencyId,
    plan_home: &AgencyId,
    section: &str,
    action: Action,
    now: Timestamp,
) -> Decision {
    if agency == plan_home {
        return Decision::Allow(AllowReason::HomeAgency);
    }
    let mut best_allow: Option<AllowReason> = None;
    let mut best_deny = DenyReason::NoConsent;
    for (entry, provision) in matching(records, agency, plan_home, section) {
        match assess(&entry, records, provision, action, now) {
            Ok(allow) => {
                if best_allow
                    .as_ref()
                    .is_none_or(|current| allow_key(&allow) > allow_key(current))
                {
                    best_allow = Some(allow);
                }
            }
            Err(deny) => {
                if deny_key(&deny) > deny_key(&best_deny) {
                    best_deny = deny;
                }
            }
        }
    }
    match best_allow {
        Some(allow) => Decision::Allow(allow),
        None => Decision::Deny(best_deny),
    }
}

type AllowKey<'a> = (Timestamp, Reverse<&'a ConsentId>, Access, Reverse<Purpose>);

/// Ordering of allow reasons: longest validity, then smallest id, then wider access, then the
/// purpose declared first.
fn allow_key(reason: &AllowReason) -> Option<AllowKey<'_>> {
    match reason {
        AllowReason::HomeAgency => None,
        AllowReason::Consent {
            consent,
            purpose,
            access,
            until,
        } => Some((*until, Reverse(consent), *access, Reverse(*purpose))),
    }
}

/// Ordering of deny reasons: rank, then the rank's tie-break, then smallest id.
fn deny_key(reason: &DenyReason) -> (u8, i128, Reverse<Option<&ConsentId>>) {
    let (rank, tie) = reason.priority();
    (rank, tie, Reverse(reason.consent()))
}

/// What each agency other than `plan_home` may hold at `now`: one entry per (agency, section),
/// with the widest access in force and the consent [`evaluate()`] relies on for it. Sorted by
/// agency, then section. The home agency holds everything and is not listed.
///
/// For every entry, `evaluate(records, agency, plan_home, section, Action::Read, now)` allows,
/// and `Action::Write` allows exactly when the access is `ReadWrite`.
pub fn active_grants(
    records: &ConsentSet,
    plan_home: &AgencyId,
    now: Timestamp,
) -> Vec<(AgencyId, String, Access, ConsentId)> {
    let candidates: BTreeSet<(&AgencyId, &str)> = records
        .entries()
        .filter(|entry| &entry.record.disclosing_agency == plan_home)
        .flat_map(|entry| entry.record.provisions.iter())
        .filter(|p| &p.grantee != plan_home)
        .flat_map(|p| p.sections.iter().map(move |s| (&p.grantee, s.as_str())))
        .collect();
    let mut grants = Vec::new();
    for (agency, section) in candidates {
        for (action, access) in [
            (Action::Write, Access::ReadWrite),
            (Action::Read, Access::Read),
        ] {
            if let Decision::Allow(AllowReason::Consent { consent, .. }) =
                evaluate(records, agency, plan_home, section, action, now)
            {
                grants.push((agency.clone(), section.to_owned(), access, consent));
                break;
            }
        }
    }
    grants
}

/// The earliest time after `now` at which a provision of a usable consent from `plan_home`
/// starts or ends, i.e. when [`active_grants`] may next change without new records. A node
/// can schedule its expiry purge for then. `None` if no such time exists.
pub fn next_transition(
    records: &ConsentSet,
    plan_home: &AgencyId,
    now: Timestamp,
) -> Option<Timestamp> {
    records
        .entries()
        .filter(|entry| {
            &entry.record.disclosing_agency == plan_home
                && entry.valid
                && !entry.conflicting
                && records.is_revoked(&entry.record.id).is_none()
        })
        .flat_map(|entry| entry.record.provisions.iter())
        .flat_map(|p| [Some(p.valid_from), p.valid_until])
        .flatten()
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{agency, consent, revocation, CLINIC, HOME};

    fn set_of(consents: Vec<ConsentRecord>) -> ConsentSet {
        let mut set = ConsentSet::new();
        set.extend(consents);
        set
    }

    fn decide(set: &ConsentSet, section: &str, action: Action, now: i64) -> Decision {
        evaluate(
            set,
            &agency(CLINIC),
            &agency(HOME),
            section,
            action,
            Timestamp(now),
        )
    }

    #[test]
    fn home_agency_is_always_allowed() {
        let set = ConsentSet::new();
        for action in [Action::Read, Action::Write] {
            let d = evaluate(
                &set,
                &agency(HOME),
                &agency(HOME),
                "anything",
                action,
                Timestamp(0),
            );
            assert_eq!(d, Decision::Allow(AllowReason::HomeAgency));
            assert_eq!(
                d.to_string(),
                "allowed: the agency is the plan's home agency"
            );
        }
    }

    #[test]
    fn decisions_serialize_for_audit() {
        let d = Decision::Deny(DenyReason::Expired {
            consent: consent("c1").id,
            at: Timestamp(5),
        });
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, r#"{"deny":{"expired":{"consent":"c1","at":5}}}"#);
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), d);
        let home = serde_json::to_string(&Decision::Allow(AllowReason::HomeAgency)).unwrap();
        assert_eq!(home, r#"{"allow":"home_agency"}"#);
    }

    #[test]
    fn default_deny() {
        let d = decide(&ConsentSet::new(), "health", Action::Read, 2000);
        assert_eq!(d, Decision::Deny(DenyReason::NoConsent));
        assert!(!d.is_allow());
        assert_eq!(
            d.to_string(),
            "denied: no consent from the plan's home agency grants this section to the agency"
        );
    }

    #[test]
    fn a_consent_in_force_allows_reading_its_sections_only() {
        let set = set_of(vec![consent("c1")]);
        let d = decide(&set, "health", Action::Read, 2000);
        assert_eq!(
            d,
            Decision::Allow(AllowReason::Consent {
                consent: consent("c1").id,
                purpose: Purpose::CareCoordination,
                access: Access::Read,
                until: Timestamp(10_000),
            })
        );
        assert_eq!(
            d.to_string(),
            "allowed: consent c1 grants read access for care_coordination \
             until 1970-01-01T00:00:10.000Z"
        );
        assert_eq!(
            decide(&set, "academic", Action::Read, 2000),
            Decision::Deny(DenyReason::NoConsent)
        );
        let other = evaluate(
            &set,
            &agency("nutrition.example"),
            &agency(HOME),
            "health",
            Action::Read,
            Timestamp(2000),
        );
        assert_eq!(other, Decision::Deny(DenyReason::NoConsent));
    }

    #[test]
    fn read_only_consent_denies_write_and_read_write_allows_both() {
        let set = set_of(vec![consent("c1")]);
        let d = decide(&set, "health", Action::Write, 2000);
        assert_eq!(
            d,
            Decision::Deny(DenyReason::ReadOnly {
                consent: consent("c1").id
            })
        );
        assert_eq!(
            d.to_string(),
            "denied: consent c1 grants read access only, not write"
        );
        let mut rw = consent("c1");
        rw.provisions[0].access = Access::ReadWrite;
        let set = set_of(vec![rw]);
        assert!(decide(&set, "health", Action::Write, 2000).is_allow());
        assert!(decide(&set, "health", Action::Read, 2000).is_allow());
    }

    #[test]
    fn validity_window_is_enforced() {
        let set = set_of(vec![consent("c1")]);
        assert_eq!(
            decide(&set, "health", Action::Read, 999),
            Decision::Deny(DenyReason::NotYetValid {
                consent: consent("c1").id,
                from: Timestamp(1000)
            })
        );
        assert!(decide(&set, "health", Action::Read, 1000).is_allow());
        assert!(decide(&set, "health", Action::Read, 9999).is_allow());
        let expired = decide(&set, "health", Action::Read, 10_000);
        assert_eq!(
            expired,
            Decision::Deny(DenyReason::Expired {
                consent: consent("c1").id,
                at: Timestamp(10_000)
            })
        );
        assert_eq!(
            expired.to_string(),
            "denied: consent c1 expired at 1970-01-01T00:00:10.000Z"
        );
    }

    #[test]
    fn revocation_beats_grant_in_any_order() {
        let mut first = ConsentSet::new();
        first.add_revocation(revocation("r1", "c1"));
        first.add_consent(consent("c1"));
        let mut second = ConsentSet::new();
        second.add_consent(consent("c1"));
        second.add_revocation(revocation("r1", "c1"));
        for set in [first, second] {
            // Even before the revocation's own time: it counts as soon as it is known.
            let d = decide(&set, "health", Action::Read, 2000);
            assert_eq!(
                d,
                Decision::Deny(DenyReason::Revoked {
                    consent: consent("c1").id
                })
            );
            assert_eq!(d.to_string(), "denied: consent c1 has been revoked");
        }
    }

    #[test]
    fn only_consents_from_the_plan_home_count() {
        let mut foreign = consent("c1");
        foreign.disclosing_agency = agency("other-school.example");
        foreign.recorded_by.agency = agency("other-school.example");
        let set = set_of(vec![foreign]);
        assert_eq!(
            decide(&set, "health", Action::Read, 2000),
            Decision::Deny(DenyReason::NoConsent)
        );
    }

    #[test]
    fn invalid_and_conflicting_records_never_allow() {
        let mut invalid = consent("c1");
        invalid.grantor.name = String::new();
        let set = set_of(vec![invalid.clone()]);
        let d = decide(&set, "health", Action::Read, 2000);
        assert_eq!(
            d,
            Decision::Deny(DenyReason::InvalidRecord {
                consent: invalid.id.clone()
            })
        );
        assert!(d.to_string().contains("incomplete or invalid"));

        let mut twin = consent("c1");
        twin.provisions[0].access = Access::ReadWrite;
        let set = set_of(vec![consent("c1"), twin]);
        let d = decide(&set, "health", Action::Read, 2000);
        assert_eq!(
            d,
            Decision::Deny(DenyReason::ConflictingRecords {
                consent: consent("c1").id
            })
        );
    }

    #[test]
    fn several_allowing_consents_pick_the_longest_then_smallest_id() {
        let mut short = consent("a-short");
        short.provisions[0].valid_until = Some(Timestamp(5000));
        let long = consent("z-long");
        let mut same_long = consent("m-long");
        same_long.provisions[0].purpose = Purpose::Referral;
        let set = set_of(vec![short, long, same_long]);
        assert_eq!(
            decide(&set, "health", Action::Read, 2000).consent(),
            Some(&ConsentId::parse("m-long").unwrap())
        );
    }

    #[test]
    fn deny_reasons_follow_the_documented_priority() {
        let mut expired = consent("c-expired");
        expired.provisions[0].valid_until = Some(Timestamp(1500));
        let mut future = consent("c-future");
        future.provisions[0].valid_from = Timestamp(5000);
        let revoked = consent("c-revoked");
        let read_only = consent("c-read");

        let mut set = set_of(vec![expired.clone(), future.clone()]);
        let expired_reason = DenyReason::Expired {
            consent: expired.id.clone(),
            at: Timestamp(1500),
        };
        assert_eq!(
            decide(&set, "health", Action::Read, 2000),
            Decision::Deny(expired_reason)
        );
        set.add_consent(revoked.clone());
        set.add_revocation(revocation("r1", "c-revoked"));
        assert_eq!(
            decide(&set, "health", Action::Read, 2000),
            Decision::Deny(DenyReason::Revoked {
                consent: revoked.id.clone()
            })
        );
        set.add_consent(read_only.clone());
        assert_eq!(
            decide(&set, "health", Action::Write, 2000),
            Decision::Deny(DenyReason::ReadOnly {
                consent: read_only.id.clone()
            })
        );
        assert!(decide(&set, "health", Action::Read, 2000).is_allow());
    }

    #[test]
    fn active_grants_lists_what_each_agency_may_hold() {
        let mut rw = consent("c2");
        rw.provisions[0].access = Access::ReadWrite;
        rw.provisions[0].sections = vec!["goals".into()];
        rw.provisions[0].valid_until = Some(Timestamp(3000));
        let mut nutrition = consent("c3");
        nutrition.provisions[0].grantee = agency("nutrition.example");
        nutrition.provisions[0].sections = vec!["nutrition".into()];
        let mut set = set_of(vec![consent("c1"), rw, nutrition]);
        set.add_revocation(revocation("r1", "c3"));

        let grants = active_grants(&set, &agency(HOME), Timestamp(2000));
        assert_eq!(
            grants,
            vec![
                (
                    agency(CLINIC),
                    "goals".to_owned(),
                    Access::ReadWrite,
                    consent("c2").id
                ),
                (
                    agency(CLINIC),
                    "health".to_owned(),
                    Access::Read,
                    consent("c1").id
                ),
            ]
        );
        let later = active_grants(&set, &agency(HOME), Timestamp(3000));
        assert_eq!(later.len(), 2);
        assert_eq!(later[0].2, Access::Read);
        assert!(active_grants(&set, &agency(HOME), Timestamp(10_000)).is_empty());
    }

    #[test]
    fn next_transition_finds_the_next_start_or_end() {
        let set = set_of(vec![consent("c1")]);
        let home = agency(HOME);
        assert_eq!(
            next_transition(&set, &home, Timestamp(0)),
            Some(Timestamp(1000))
        );
        assert_eq!(
            next_transition(&set, &home, Timestamp(1000)),
            Some(Timestamp(10_000))
        );
        assert_eq!(next_transition(&set, &home, Timestamp(10_000)), None);
    }
}
