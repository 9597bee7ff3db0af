//! Validation of records against what a written consent must contain.
//!
//! FERPA (34 CFR 99.30) and 42 CFR 2.31 require a written consent to name who consents, the
//! records to be disclosed, the recipients, the purpose, a date and (for Part 2) an expiry.
//! [`ConsentRecord::validate`] checks all of it and reports **every** problem at once, so a
//! caseworker can fix a form in one pass. Error text names fields and provision/section
//! numbers only, never values: a grantor's name or a reason never appears in an error.
//!
//! Some requirements hold by construction and need no check: the grantor's relationship and
//! each provision's purpose and access are enums and cannot be absent.
//!
//! Beyond the regulations, a consent must be recorded by its disclosing agency (the plan's
//! home): otherwise any agency could sign a consent granting itself someone else's plan.

use std::collections::BTreeSet;
use std::fmt;

use crate::record::{ConsentRecord, Revocation};

/// Longest accepted section name, in characters.
pub const MAX_SECTION_NAME_LEN: usize = 64;

/// One missing or invalid item of a record. Provision and section numbers are 1-based, as a
/// person reading the form would count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MissingItem {
    /// The subject (the child's id) is empty.
    Subject,
    /// The grantor's name is empty.
    GrantorName,
    /// The recording user is empty.
    RecordingUser,
    /// The consent was recorded by an agency other than the disclosing agency.
    RecorderNotDisclosingAgency,
    /// The date of consent (`recorded_at`) is not after the epoch.
    Date,
    /// There are no provisions, so no recipients.
    Recipients,
    /// The provision names no section.
    Sections {
        /// Provision number.
        provision: usize,
    },
    /// A section name is empty.
    SectionName {
        /// Provision number.
        provision: usize,
        /// Section number within the provision.
        section: usize,
    },
    /// A section name is longer than 64 characters or contains control characters.
    SectionNameInvalid {
        /// Provision number.
        provision: usize,
        /// Section number within the provision.
        section: usize,
    },
    /// A section name repeats an earlier one in the same provision.
    DuplicateSection {
        /// Provision number.
        provision: usize,
        /// Section number of the repeat.
        section: usize,
    },
    /// The provision has no expiry.
    Expiry {
        /// Provision number.
        provision: usize,
    },
    /// The provision's expiry is not after its start.
    ExpiryNotAfterStart {
        /// Provision number.
        provision: usize,
    },
    /// The provision grants to the disclosing agency itself.
    GranteeIsDisclosingAgency {
        /// Provision number.
        provision: usize,
    },
    /// The revoking user is empty.
    RevokingUser,
    /// The date of revocation (`revoked_at`) is not after the epoch.
    RevocationDate,
}

impl MissingItem {
    /// `true` for items that are absent, `false` for items that are present but wrong.
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            MissingItem::Subject
                | MissingItem::GrantorName
                | MissingItem::RecordingUser
                | MissingItem::Date
                | MissingItem::Recipients
                | MissingItem::Sections { .. }
                | MissingItem::SectionName { .. }
                | MissingItem::Expiry { .. }
                | MissingItem::RevokingUser
                | MissingItem::RevocationDate
        )
    }
}

impl fmt::Display for MissingItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingItem::Subject => f.write_str("subject"),
            MissingItem::GrantorName => f.write_str("grantor name"),
            MissingItem::RecordingUser => f.write_str("recording user"),
            MissingItem::RecorderNotDisclosingAgency => {
                f.write_str("recording agency is not the disclosing agency")
            }
            MissingItem::Date => f.write_str("date of consent"),
            MissingItem::Recipients => f.write_str("recipients (at least one provision)"),
            MissingItem::Sections { provision } => write!(f, "sections of provision {provision}"),
            MissingItem::SectionName { provision, section } => {
                write!(f, "name of section {section} in provision {provision}")
            }
            MissingItem::SectionNameInvalid { provision, section } => write!(
                f,
                "name of section {section} in provision {provision} is longer than \
                 {MAX_SECTION_NAME_LEN} characters or contains control characters"
            ),
            MissingItem::DuplicateSection { provision, section } => write!(
                f,
                "section {section} in provision {provision} repeats an earlier section"
            ),
            MissingItem::Expiry { provision } => write!(f, "expiry of provision {provision}"),
            MissingItem::ExpiryNotAfterStart { provision } => {
                write!(f, "expiry of provision {provision} is not after its start")
            }
            MissingItem::GranteeIsDisclosingAgency { provision } => {
                write!(
                    f,
                    "grantee of provision {provision} is the disclosing agency"
                )
            }
            MissingItem::RevokingUser => f.write_str("revoking user"),
            MissingItem::RevocationDate => f.write_str("date of revocation"),
        }
    }
}

/// Writes "`noun` is missing: a, b; and is invalid: c" (either half may be absent).
fn describe(f: &mut fmt::Formatter<'_>, noun: &str, items: &[MissingItem]) -> fmt::Result {
    let join = |absent: bool| {
        items
            .iter()
            .filter(|item| item.is_absent() == absent)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (missing, invalid) = (join(true), join(false));
    match (missing.is_empty(), invalid.is_empty()) {
        (false, true) => write!(f, "{noun} is missing: {missing}"),
        (true, false) => write!(f, "{noun} is invalid: {invalid}"),
        (false, false) => write!(f, "{noun} is missing: {missing}; and is invalid: {invalid}"),
        (true, true) => write!(f, "{noun} is invalid"),
    }
}

/// Everything wrong with a [`ConsentRecord`], reported at once.
///
/// ```
/// # use weft_consent::{ConsentInvalid, MissingItem};
/// let err = ConsentInvalid {
///     missing: vec![MissingItem::GrantorName, MissingItem::Expiry { provision: 1 }],
/// };
/// assert_eq!(err.to_string(), "consent is missing: grantor name, expiry of provision 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConsentInvalid {
    /// Every missing or invalid item, in form order.
    pub missing: Vec<MissingItem>,
}

impl fmt::Display for ConsentInvalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(f, "consent", &self.missing)
    }
}

/// Everything wrong with a [`Revocation`], reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RevocationInvalid {
    /// Every missing or invalid item.
    pub missing: Vec<MissingItem>,
}

impl fmt::Display for RevocationInvalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(f, "revocation", &self.missing)
    }
}

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

impl ConsentRecord {
    /// Checks that the record holds everything a written consent must hold; see the
    /// [module docs](crate::validate). Returns every problem at once.
    pub fn validate(&self) -> Result<(), ConsentInvalid> {
        let mut missing = Vec::new();
        if blank(&self.subject) {
            missing.push(MissingItem::Subject);
        }
        if blank(&self.grantor.name) {
            missing.push(MissingItem::GrantorName);
        }
        if blank(&self.recorded_by.user) {
            missing.push(MissingItem::RecordingUser);
        }
        if self.recorded_by.agency != self.disclosing_agency {
            missing.push(MissingItem::RecorderNotDisclosingAgency);
        }
        if self.recorded_at.as_millis() <= 0 {
            missing.push(MissingItem::Date);
        }
        if self.provisions.is_empty() {
            missing.push(MissingItem::Recipients);
        }
        for (index, provision) in self.provisions.iter().enumerate() {
            let number = index + 1;
            if provision.grantee == self.disclosing_agency {
                missing.push(MissingItem::GranteeIsDisclosingAgency { provision: number });
            }
            if provision.sections.is_empty() {
                missing.push(MissingItem::Sections { provision: number });
            }
            let mut seen = BTreeSet::new();
            for (section_index, name) in provision.sections.iter().enumerate() {
                let section = section_index + 1;
                if name.is_empty() {
                    missing.push(MissingItem::SectionName {
                        provision: number,
                        section,
                    });
                } else if name.chars().count() > MAX_SECTION_NAME_LEN
                    || name.chars().any(char::is_control)
                {
                    missing.push(MissingItem::SectionNameInvalid {
                        provision: number,
                        section,
                    });
                } else if !seen.insert(name.as_str()) {
                    missing.push(MissingItem::DuplicateSection {
                        provision: number,
                        section,
                    });
                }
            }
            match provision.valid_until {
                None => missing.push(MissingItem::Expiry { provision: number }),
                Some(until) if until <= provision.valid_from => {
                    missing.push(MissingItem::ExpiryNotAfterStart { provision: number });
                }
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConsentInvalid { missing })
        }
    }
}

impl Revocation {
    /// Checks that the revocation names who recorded it and when. Returns every problem at
    /// once. (The consent id is always well formed by its type.)
    pub fn validate(&self) -> Result<(), RevocationInvalid> {
        let mut missing = Vec::new();
        if blank(&self.revoked_by.user) {
            missing.push(MissingItem::RevokingUser);
        }
        if self.revoked_at.as_millis() <= 0 {
            missing.push(MissingItem::RevocationDate);
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(RevocationInvalid { missing })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{agency, consent, revocation};
    use crate::{Access, ConsentId, Purpose, Timestamp};

    #[test]
    fn a_complete_consent_is_valid() {
        assert_eq!(consent("c1").validate(), Ok(()));
    }

    fn only_problem(record: &ConsentRecord) -> MissingItem {
        let err = record.validate().expect_err("record should be invalid");
        assert_eq!(err.missing.len(), 1, "{err}");
        err.missing[0]
    }

    #[test]
    fn each_missing_item_is_named() {
        let base = consent("c1");

        let mut r = base.clone();
        r.subject = String::new();
        assert_eq!(only_problem(&r), MissingItem::Subject);

        let mut r = base.clone();
        r.grantor.name = "  ".into();
        assert_eq!(only_problem(&r), MissingItem::GrantorName);

        let mut r = base.clone();
        r.recorded_by.user = String::new();
        assert_eq!(only_problem(&r), MissingItem::RecordingUser);

        let mut r = base.clone();
        r.recorded_by.agency = agency("clinic.example");
        assert_eq!(only_problem(&r), MissingItem::RecorderNotDisclosingAgency);

        let mut r = base.clone();
        r.recorded_at = Timestamp(0);
        assert_eq!(only_problem(&r), MissingItem::Date);

        let mut r = base.clone();
        r.provisions.clear();
        assert_eq!(only_problem(&r), MissingItem::Recipients);

        let mut r = base.clone();
        r.provisions[0].sections.clear();
        assert_eq!(only_problem(&r), MissingItem::Sections { provision: 1 });

        let mut r = base.clone();
        r.provisions[0].sections.push(String::new());
        assert_eq!(
            only_problem(&r),
            MissingItem::SectionName {
                provision: 1,
                section: 3
            }
        );

        let mut r = base.clone();
        r.provisions[0].sections.push("x".repeat(65));
        assert_eq!(
            only_problem(&r),
            MissingItem::SectionNameInvalid {
                provision: 1,
                section: 3
            }
        );

        let mut r = base.clone();
        r.provisions[0].sections.push("bad\nname".into());
        assert_eq!(
            only_problem(&r),
            MissingItem::SectionNameInvalid {
                provision: 1,
                section: 3
            }
        );

        let mut r = base.clone();
        r.provisions[0].sections.push("x".repeat(64));
        assert_eq!(
            r.validate(),
            Ok(()),
            "64 characters is the limit, inclusive"
        );

        let mut r = base.clone();
        let first = r.provisions[0].sections[0].clone();
        r.provisions[0].sections.push(first);
        assert_eq!(
            only_problem(&r),
            MissingItem::DuplicateSection {
                provision: 1,
                section: 3
            }
        );

        let mut r = base.clone();
        r.provisions[0].valid_until = None;
        assert_eq!(only_problem(&r), MissingItem::Expiry { provision: 1 });

        let mut r = base.clone();
        r.provisions[0].valid_until = Some(r.provisions[0].valid_from);
        assert_eq!(
            only_problem(&r),
            MissingItem::ExpiryNotAfterStart { provision: 1 }
        );

        let mut r = base.clone();
        r.provisions[0].grantee = r.disclosing_agency.clone();
        assert_eq!(
            only_problem(&r),
            MissingItem::GranteeIsDisclosingAgency { provision: 1 }
        );
    }

    #[test]
    fn all_problems_are_named_at_once() {
        let mut r = consent("c1");
        r.grantor.name = String::new();
        r.recorded_at = Timestamp(-5);
        let mut second = r.provisions[0].clone();
        second.sections.clear();
        second.valid_until = None;
        second.grantee = r.disclosing_agency.clone();
        second.access = Access::Read;
        second.purpose = Purpose::Evaluation;
        r.provisions.push(second);
        r.provisions[0].valid_until = None;

        let err = r.validate().unwrap_err();
        assert_eq!(
            err.missing,
            vec![
                MissingItem::GrantorName,
                MissingItem::Date,
                MissingItem::Expiry { provision: 1 },
                MissingItem::GranteeIsDisclosingAgency { provision: 2 },
                MissingItem::Sections { provision: 2 },
                MissingItem::Expiry { provision: 2 },
            ]
        );
        assert_eq!(
            err.to_string(),
            "consent is missing: grantor name, date of consent, expiry of provision 1, \
             sections of provision 2, expiry of provision 2; \
             and is invalid: grantee of provision 2 is the disclosing agency"
        );
    }

    #[test]
    fn error_text_never_echoes_values() {
        let mut r = consent("c1");
        r.grantor.name = "Zelda Quux".into();
        r.subject = String::new();
        r.provisions[0]
            .sections
            .push("secret-section-name".repeat(5));
        let text = r.validate().unwrap_err().to_string();
        assert!(!text.contains("Zelda"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(
            text,
            "consent is missing: subject; and is invalid: name of section 3 in provision 1 \
             is longer than 64 characters or contains control characters"
        );
    }

    #[test]
    fn only_invalid_items_read_as_invalid() {
        let mut r = consent("c1");
        r.provisions[0].grantee = r.disclosing_agency.clone();
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "consent is invalid: grantee of provision 1 is the disclosing agency"
        );
    }

    #[test]
    fn revocation_validation_names_every_item() {
        let ok = revocation("r1", "c1");
        assert_eq!(ok.validate(), Ok(()));
        let mut r = ok.clone();
        r.revoked_by.user = String::new();
        r.revoked_at = Timestamp(0);
        r.reason = Some("private reason".into());
        let err = r.validate().unwrap_err();
        assert_eq!(
            err.missing,
            vec![MissingItem::RevokingUser, MissingItem::RevocationDate]
        );
        assert_eq!(
            err.to_string(),
            "revocation is missing: revoking user, date of revocation"
        );
        assert_eq!(ok.consent, ConsentId::parse("c1").unwrap());
    }
}
