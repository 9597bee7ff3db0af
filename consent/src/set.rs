//! [`ConsentSet`]: the consents and revocations known for one plan, in a form where the order
//! they arrived in cannot matter.
//!
//! Records are kept sorted by id and by their canonical encoding, so two sets built from the
//! same records in any order are equal and iterate identically. Two *different* records that
//! carry the same consent id are both kept and the id is marked conflicting; a conflicting id
//! never allows anything (see [`crate::evaluate()`]). A revocation is kept even when the consent
//! it names is not (yet) known, so it blocks that consent whenever it arrives.

use std::collections::BTreeMap;

use crate::ids::{ConsentId, RevocationId, Timestamp};
use crate::record::{ConsentRecord, Revocation};
use crate::sign::{canonical_bytes, canonical_revocation_bytes};

/// What [`ConsentSet::add_consent`] or [`ConsentSet::add_revocation`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddOutcome {
    /// The record was not known before.
    New,
    /// An identical record was already present; nothing changed.
    Duplicate,
    /// A different consent with the same id was already present. Both are kept and the id now
    /// never allows anything. (Never returned for revocations.)
    ConflictingId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredConsent {
    record: ConsentRecord,
    /// Result of [`ConsentRecord::validate`], computed once on insertion.
    valid: bool,
}

/// Sort key of a revocation: earliest first, then by id, then by encoding.
type RevocationKey = (Timestamp, RevocationId, Vec<u8>);

/// The consents and revocations for one plan (callers select the records of the plan's subject;
/// see [`ConsentSet::for_subject`]).
///
/// ```
/// use weft_consent::{ConsentSet, ConsentId};
/// let set = ConsentSet::new();
/// assert!(set.is_empty());
/// assert!(set.is_revoked(&ConsentId::parse("c1").unwrap()).is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentSet {
    consents: BTreeMap<ConsentId, BTreeMap<Vec<u8>, StoredConsent>>,
    revocations: BTreeMap<ConsentId, BTreeMap<RevocationKey, Revocation>>,
}

impl ConsentSet {
    /// An empty set: every non-home agency is denied everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a consent record. Invalid records are kept (so they can be listed and explained)
    /// but never allow anything.
    pub fn add_consent(&mut self, record: ConsentRecord) -> AddOutcome {
        let key = canonical_bytes(&record);
        let valid = record.validate().is_ok();
        let same_id = self.consents.entry(record.id.clone()).or_default();
        if same_id.contains_key(&key) {
            return AddOutcome::Duplicate;
        }
        let outcome = if same_id.is_empty() {
            AddOutcome::New
        } else {
            AddOutcome::ConflictingId
        };
        same_id.insert(key, StoredConsent { record, valid });
        outcome
    }

    /// Adds a revocation. It takes effect at once, whatever its `revoked_at` and whether or
    /// not the consent it names is known.
    pub fn add_revocation(&mut self, revocation: Revocation) -> AddOutcome {
        let key = (
            revocation.revoked_at,
            revocation.id.clone(),
            canonical_revocation_bytes(&revocation),
        );
        let same_consent = self
            .revocations
            .entry(revocation.consent.clone())
            .or_default();
        if same_consent.contains_key(&key) {
            return AddOutcome::Duplicate;
        }
        same_consent.insert(key, revocation);
        AddOutcome::New
    }

    /// Every consent record, ordered by id (then by encoding for conflicting ids).
    pub fn consents(&self) -> impl Iterator<Item = &ConsentRecord> + '_ {
        self.consents
            .values()
            .flat_map(|same_id| same_id.values().map(|stored| &stored.record))
    }

    /// Every revocation, ordered by the consent it names, then earliest first.
    pub fn revocations(&self) -> impl Iterator<Item = &Revocation> + '_ {
        self.revocations
            .values()
            .flat_map(|same_consent| same_consent.values())
    }

    /// The consent with this id, if exactly one record carries it.
    pub fn consent(&self, id: &ConsentId) -> Option<&ConsentRecord> {
        match self.consents.get(id) {
            Some(same_id) if same_id.len() == 1 => same_id.values().next().map(|s| &s.record),
            _ => None,
        }
    }

    /// Whether two or more different records carry this consent id.
    pub fn is_conflicting(&self, id: &ConsentId) -> bool {
        self.consents
            .get(id)
            .is_some_and(|same_id| same_id.len() > 1)
    }

    /// The revocation that ends this consent, if any: the earliest by `revoked_at`, then by
    /// revocation id, when there are several.
    pub fn is_revoked(&self, id: &ConsentId) -> Option<&Revocation> {
        self.revocations
            .get(id)
            .and_then(|same_consent| same_consent.values().next())
    }

    /// Number of consent records held.
    pub fn len(&self) -> usize {
        self.consents.values().map(BTreeMap::len).sum()
    }

    /// Whether no consent record is held (revocations alone never allow anything).
    pub fn is_empty(&self) -> bool {
        self.consents.is_empty()
    }

    /// A set holding the consents about `subject` and every revocation (revocations name a
    /// consent id, not a subject).
    pub fn for_subject(&self, subject: &str) -> ConsentSet {
        let consents = self
            .consents
            .iter()
            .filter_map(|(id, same_id)| {
                let kept: BTreeMap<_, _> = same_id
                    .iter()
                    .filter(|(_, stored)| stored.record.subject == subject)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (!kept.is_empty()).then(|| (id.clone(), kept))
            })
            .collect();
        ConsentSet {
            consents,
            revocations: self.revocations.clone(),
        }
    }

    /// Every consent record with what evaluation needs to know about it: whether its id is
    /// conflicting and whether it validated.
    pub(crate) fn entries(&self) -> impl Iterator<Item = ConsentEntry<'_>> + '_ {
        self.consents.values().flat_map(|same_id| {
            let conflicting = same_id.len() > 1;
            same_id.values().map(move |stored| ConsentEntry {
                record: &stored.record,
                valid: stored.valid,
                conflicting,
            })
        })
    }
}

/// A consent record as seen by evaluation.
pub(crate) struct ConsentEntry<'a> {
    pub(crate) record: &'a ConsentRecord,
    pub(crate) valid: bool,
    pub(crate) conflicting: bool,
}

impl Extend<ConsentRecord> for ConsentSet {
    fn extend<I: IntoIterator<Item = ConsentRecord>>(&mut self, iter: I) {
        for record in iter {
            self.add_consent(record);
        }
    }
}

impl Extend<Revocation> for ConsentSet {
    fn extend<I: IntoIterator<Item = Revocation>>(&mut self, iter: I) {
        for revocation in iter {
            self.add_revocation(revocation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{consent, revocation};

    #[test]
    fn insertion_order_does_not_matter() {
        let mut a = ConsentSet::new();
        a.add_consent(consent("c1"));
        a.add_revocation(revocation("r1", "c2"));
        a.add_consent(consent("c2"));
        let mut b = ConsentSet::new();
        b.add_consent(consent("c2"));
        b.add_consent(consent("c1"));
        b.add_revocation(revocation("r1", "c2"));
        assert_eq!(a, b);
        let ids: Vec<_> = a.consents().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2"]);
    }

    #[test]
    fn duplicates_and_conflicts_are_reported() {
        let mut set = ConsentSet::new();
        assert_eq!(set.add_consent(consent("c1")), AddOutcome::New);
        assert_eq!(set.add_consent(consent("c1")), AddOutcome::Duplicate);
        assert_eq!(set.consent(&consent("c1").id), Some(&consent("c1")));
        let mut other = consent("c1");
        other.grantor.name = "Someone Else".into();
        assert_eq!(set.add_consent(other), AddOutcome::ConflictingId);
        assert_eq!(set.len(), 2);
        assert!(set.is_conflicting(&consent("c1").id));
        assert_eq!(set.consent(&consent("c1").id), None);
    }

    #[test]
    fn revocation_before_consent_still_counts() {
        let mut set = ConsentSet::new();
        assert_eq!(set.add_revocation(revocation("r1", "c1")), AddOutcome::New);
        assert_eq!(
            set.add_revocation(revocation("r1", "c1")),
            AddOutcome::Duplicate
        );
        set.add_consent(consent("c1"));
        assert_eq!(
            set.is_revoked(&consent("c1").id).map(|r| r.id.as_str()),
            Some("r1")
        );
    }

    #[test]
    fn earliest_revocation_is_reported() {
        let mut set = ConsentSet::new();
        let mut late = revocation("r0", "c1");
        late.revoked_at = Timestamp(9000);
        set.add_revocation(late);
        set.add_revocation(revocation("r9", "c1"));
        assert_eq!(
            set.is_revoked(&consent("c1").id).map(|r| r.id.as_str()),
            Some("r9")
        );
        assert_eq!(set.revocations().count(), 2);
    }

    #[test]
    fn for_subject_keeps_only_that_subject() {
        let mut set = ConsentSet::new();
        set.add_consent(consent("c1"));
        let mut other = consent("c2");
        other.subject = "another-subject".into();
        set.add_consent(other);
        set.add_revocation(revocation("r1", "c2"));
        let mine = set.for_subject(&consent("c1").subject);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine.revocations().count(), 1);
    }
}
