//! The gate: the one place that decides whether a caller may read or write a section.
//!
//! It checks the caller's role, a guardian's binding to the plan's subject, and then asks the
//! pure consent engine (`weft_consent::evaluate`). An allow becomes a [`Permit`], which the
//! store's section reads and writes require, so a path that skips the check does not compile:
//! permits can only be made here.
//!
//! *Architecture invariant:* `Permit` has no public constructor; `StoreHandle::read_section`
//! and `StoreHandle::write_sections` take one.

use std::marker::PhantomData;

use weft_consent::{evaluate, Action, AllowReason, ConsentSet, Decision};

use crate::model::{AgencyId, Caller, PlanRecord, Right, Role, SectionKey, SectionName, Timestamp};

/// Marker for read permits.
#[derive(Debug)]
pub enum ReadAccess {}
/// Marker for write permits.
#[derive(Debug)]
pub enum WriteAccess {}

/// Proof that the gate allowed an action on one section.
#[derive(Debug)]
pub struct Permit<A> {
    key: SectionKey,
    reason: AllowReason,
    _access: PhantomData<A>,
}

/// Permission to read one section.
pub type ReadPermit = Permit<ReadAccess>;
/// Permission to write one section.
pub type WritePermit = Permit<WriteAccess>;

impl<A> Permit<A> {
    /// The section this permit is for.
    pub fn key(&self) -> &SectionKey {
        &self.key
    }

    /// Why it was allowed.
    pub fn reason(&self) -> &AllowReason {
        &self.reason
    }
}

/// Why the gate said no: a stable code for the audit log and a message for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// A short code (`role`, `guardian_binding`, `consent`).
    pub code: &'static str,
    /// A message naming the rule; never student data.
    pub message: String,
}

impl From<Denial> for crate::error::Error {
    fn from(d: Denial) -> Self {
        crate::error::Error::PermissionDenied(d.message)
    }
}

/// Checks a role's right, without a section (listing, creating, auditing).
pub fn require(caller: &Caller, right: Right) -> Result<(), Denial> {
    if caller.role.allows(right) {
        Ok(())
    } else {
        Err(Denial {
            code: "role",
            message: format!("role `{}` may not {}", caller.role, describe(right)),
        })
    }
}

/// Whether a caller may see that a plan exists at all (a guardian only their children's).
pub fn may_see_plan(caller: &Caller, plan: &PlanRecord) -> bool {
    caller.role != Role::Guardian || caller.subjects.contains(&plan.subject)
}

fn describe(right: Right) -> String {
    match right {
        Right::CreatePlan => "create plans".into(),
        Right::ReadPlan => "read plans".into(),
        Right::WritePlan => "change plans".into(),
        Right::WriteGoals => "add goals or progress notes".into(),
        Right::EditGoals => "change goals".into(),
        Right::AddUser(role) => format!("add {role} users"),
        Right::ListUsers => "list users".into(),
        Right::ReadAudit => "read the audit log".into(),
        Right::ReadStatus => "read node status".into(),
        Right::Backup => "take backups".into(),
    }
}

fn check(
    caller: &Caller,
    plan: &PlanRecord,
    section: &SectionName,
    right: Right,
    action: Action,
    consents: &ConsentSet,
    now: Timestamp,
) -> Result<AllowReason, Denial> {
    require(caller, right)?;
    if !may_see_plan(caller, plan) {
        return Err(Denial {
            code: "guardian_binding",
            message: "this guardian is not bound to the plan's subject".into(),
        });
    }
    match evaluate(
        consents,
        &caller.agency,
        &plan.home,
        section.as_str(),
        action,
        now,
    ) {
        Decision::Allow(reason) => Ok(reason),
        Decision::Deny(reason) => Err(Denial {
            code: "consent",
            message: format!(
                "agency {} may not {action:?} section {section}: {reason}",
                caller.agency
            )
            .to_lowercase(),
        }),
    }
}

/// Asks whether `caller` may read `section` of `plan` now.
pub fn read(
    caller: &Caller,
    plan: &PlanRecord,
    section: &SectionName,
    consents: &ConsentSet,
    now: Timestamp,
) -> Result<ReadPermit, Denial> {
    let reason = check(
        caller,
        plan,
        section,
        Right::ReadPlan,
        Action::Read,
        consents,
        now,
    )?;
    Ok(Permit {
        key: key(plan, section),
        reason,
        _access: PhantomData,
    })
}

/// Asks whether `caller` may write `section` of `plan` now, using `right` (`WritePlan` for
/// any field, `WriteGoals` for goal operations).
pub fn write(
    caller: &Caller,
    plan: &PlanRecord,
    section: &SectionName,
    right: Right,
    consents: &ConsentSet,
    now: Timestamp,
) -> Result<WritePermit, Denial> {
    let reason = check(caller, plan, section, right, Action::Write, consents, now)?;
    Ok(Permit {
        key: key(plan, section),
        reason,
        _access: PhantomData,
    })
}

fn consent_denial(
    agency: &AgencyId,
    section: &SectionName,
    action: Action,
    reason: impl std::fmt::Display,
) -> Denial {
    Denial {
        code: "consent",
        message: format!("agency {agency} may not {action:?} section {section}: {reason}")
            .to_lowercase(),
    }
}

fn star_denial() -> Denial {
    Denial {
        code: "star",
        message: "sections travel only between a plan's home agency and its grantees".into(),
    }
}

/// The star rule shared by sends and receives: between a plan's home and a grantee only.
/// At the home, the peer needs `home_action` on the section; at a grantee (the peer is the
/// home), this node must still be allowed to hold the section.
fn peer_decision(
    me: &AgencyId,
    peer: &AgencyId,
    plan: &PlanRecord,
    section: &SectionName,
    consents: &ConsentSet,
    now: Timestamp,
    home_action: Action,
) -> Result<AllowReason, Denial> {
    let (agency, action) = if plan.home == *me {
        (peer, home_action)
    } else if plan.home == *peer {
        (me, Action::Read)
    } else {
        return Err(star_denial());
    };
    match evaluate(consents, agency, &plan.home, section.as_str(), action, now) {
        Decision::Allow(r) => Ok(r),
        Decision::Deny(r) => Err(consent_denial(agency, section, action, r)),
    }
}

/// May this node (`me`) send `section` of `plan` to `peer`? The home sends to a grantee
/// whose consent allows reading; a grantee sends its copy only back to the home, and only
/// while it may hold it. Never grantee to grantee.
pub fn peer_send(
    me: &AgencyId,
    peer: &AgencyId,
    plan: &PlanRecord,
    section: &SectionName,
    consents: &ConsentSet,
    now: Timestamp,
) -> Result<ReadPermit, Denial> {
    let reason = peer_decision(me, peer, plan, section, consents, now, Action::Read)?;
    Ok(Permit {
        key: key(plan, section),
        reason,
        _access: PhantomData,
    })
}

/// May changes to `section` of `plan` received from `peer` be stored here? At the home,
/// only under a consent giving the peer `read_write`; at a grantee, only from the home and
/// only while this node may hold the section. Never from a third agency.
pub fn peer_receive(
    me: &AgencyId,
    peer: &AgencyId,
    plan: &PlanRecord,
    section: &SectionName,
    consents: &ConsentSet,
    now: Timestamp,
) -> Result<WritePermit, Denial> {
    let reason = peer_decision(me, peer, plan, section, consents, now, Action::Write)?;
    Ok(Permit {
        key: key(plan, section),
        reason,
        _access: PhantomData,
    })
}

/// May this node keep holding `section` of a plan homed elsewhere? (The purge decision.)
pub fn may_hold(
    me: &AgencyId,
    plan: &PlanRecord,
    section: &SectionName,
    consents: &ConsentSet,
    now: Timestamp,
) -> Result<ReadPermit, Denial> {
    match evaluate(
        consents,
        me,
        &plan.home,
        section.as_str(),
        Action::Read,
        now,
    ) {
        Decision::Allow(reason) => Ok(Permit {
            key: key(plan, section),
            reason,
            _access: PhantomData,
        }),
        Decision::Deny(r) => Err(consent_denial(me, section, Action::Read, r)),
    }
}

/// A write permit implies a read permit for the same section (`read_write` implies read).
pub fn downgrade(permit: &WritePermit) -> ReadPermit {
    Permit {
        key: permit.key.clone(),
        reason: permit.reason.clone(),
        _access: PhantomData,
    }
}

fn key(plan: &PlanRecord, section: &SectionName) -> SectionKey {
    SectionKey {
        plan: plan.id,
        section: section.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgencyId, PlanId, SubjectId};

    fn plan() -> PlanRecord {
        PlanRecord {
            id: PlanId::random(),
            subject: SubjectId::random(),
            home: AgencyId::parse("school.test").unwrap(),
            created_at: Timestamp::from_millis(0),
        }
    }

    fn caller(agency: &str, role: Role, subjects: Vec<SubjectId>) -> Caller {
        Caller {
            agency: AgencyId::parse(agency).unwrap(),
            user: "u".into(),
            role,
            subjects,
        }
    }

    #[test]
    fn home_agency_staff_may_read_and_write() {
        let p = plan();
        let goals = SectionName::parse("goals").unwrap();
        let c = caller("school.test", Role::Caseworker, vec![]);
        let none = ConsentSet::new();
        assert!(read(&c, &p, &goals, &none, Timestamp::from_millis(1)).is_ok());
        assert!(write(
            &c,
            &p,
            &goals,
            Right::WritePlan,
            &none,
            Timestamp::from_millis(1)
        )
        .is_ok());
    }

    #[test]
    fn other_agencies_are_denied_without_consent() {
        let p = plan();
        let goals = SectionName::parse("goals").unwrap();
        let c = caller("clinic.test", Role::Caseworker, vec![]);
        let d = read(
            &c,
            &p,
            &goals,
            &ConsentSet::new(),
            Timestamp::from_millis(1),
        )
        .unwrap_err();
        assert_eq!(d.code, "consent");
    }

    #[test]
    fn guardians_see_only_their_children() {
        let p = plan();
        let goals = SectionName::parse("goals").unwrap();
        let theirs = caller("school.test", Role::Guardian, vec![p.subject]);
        let other = caller("school.test", Role::Guardian, vec![SubjectId::random()]);
        let none = ConsentSet::new();
        assert!(read(&theirs, &p, &goals, &none, Timestamp::from_millis(1)).is_ok());
        assert_eq!(
            read(&other, &p, &goals, &none, Timestamp::from_millis(1))
                .unwrap_err()
                .code,
            "guardian_binding"
        );
        assert_eq!(
            write(
                &theirs,
                &p,
                &goals,
                Right::WritePlan,
                &none,
                Timestamp::from_millis(1)
            )
            .unwrap_err()
            .code,
            "role"
        );
        assert!(write(
            &theirs,
            &p,
            &goals,
            Right::WriteGoals,
            &none,
            Timestamp::from_millis(1)
        )
        .is_ok());
    }

    #[test]
    fn admins_and_auditors_never_read_plans() {
        let p = plan();
        let profile = SectionName::parse("profile").unwrap();
        for role in [Role::Admin, Role::Auditor] {
            let c = caller("school.test", role, vec![]);
            assert!(read(
                &c,
                &p,
                &profile,
                &ConsentSet::new(),
                Timestamp::from_millis(1)
            )
            .is_err());
        }
    }

    #[test]
    fn sections_travel_only_between_home_and_grantee() {
        let p = plan();
        let goals = SectionName::parse("goals").unwrap();
        let (school, clinic, nutrition) = (
            AgencyId::parse("school.test").unwrap(),
            AgencyId::parse("clinic.test").unwrap(),
            AgencyId::parse("nutrition.test").unwrap(),
        );
        let none = ConsentSet::new();
        let t = Timestamp::from_millis(1);
        // Grantee to grantee: never, whatever the consents.
        assert_eq!(
            peer_send(&clinic, &nutrition, &p, &goals, &none, t)
                .unwrap_err()
                .code,
            "star"
        );
        assert_eq!(
            peer_receive(&clinic, &nutrition, &p, &goals, &none, t)
                .unwrap_err()
                .code,
            "star"
        );
        // Home and grantee without consent: refused both ways.
        assert_eq!(
            peer_send(&school, &clinic, &p, &goals, &none, t)
                .unwrap_err()
                .code,
            "consent"
        );
        assert_eq!(
            peer_receive(&school, &clinic, &p, &goals, &none, t)
                .unwrap_err()
                .code,
            "consent"
        );
        assert_eq!(
            peer_receive(&clinic, &school, &p, &goals, &none, t)
                .unwrap_err()
                .code,
            "consent"
        );
        assert_eq!(
            may_hold(&clinic, &p, &goals, &none, t).unwrap_err().code,
            "consent"
        );
    }
}
