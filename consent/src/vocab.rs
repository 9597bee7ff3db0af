//! The closed vocabularies of consent: [`Action`], [`Access`], [`Purpose`], [`Relationship`]
//! and [`CollectionMethod`].
//!
//! Each enum has one spelling, in snake_case, used by serde, [`FromStr`] and `as_str()` alike
//! (`read_write`, `care_coordination`, `e_signature`, ...). [`CollectionMethod`] also accepts
//! `paper` and `esignature` when parsed from text (for people typing at a CLI); serde accepts
//! only the canonical names, so a signed record has exactly one encoding.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A text value that is not one of an enum's accepted names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of: {}", accepted.join(", "))]
pub struct ParseEnumError {
    /// What was being parsed, e.g. `"access"`.
    pub kind: &'static str,
    /// The rejected input (cut to 64 characters).
    pub value: String,
    /// The accepted names.
    pub accepted: &'static [&'static str],
}

macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
        aliases { $( $alias:literal => $avariant:ident, )* }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The accepted names, in declaration order (aliases not included).
            pub const NAMES: &'static [&'static str] = &[ $( $text, )+ ];

            /// The canonical snake_case name, as used by serde.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    $( $alias => Ok($name::$avariant), )*
                    _ => Err(ParseEnumError {
                        kind: $kind,
                        value: s.chars().take(64).collect(),
                        accepted: $name::NAMES,
                    }),
                }
            }
        }
    };
}

vocabulary! {
    /// What an agency wants to do with a section.
    Action, "action" {
        /// Hold or read the section.
        Read => "read",
        /// Change the section.
        Write => "write",
    }
    aliases {}
}

vocabulary! {
    /// What a provision grants. `ReadWrite` implies `Read`.
    Access, "access" {
        /// The grantee may hold and read the section.
        Read => "read",
        /// The grantee may hold, read and change the section.
        ReadWrite => "read_write",
    }
    aliases {}
}

impl Access {
    /// Whether this access allows `action`: `Read` permits reading, `ReadWrite` permits both.
    pub const fn permits(self, action: Action) -> bool {
        match (self, action) {
            (_, Action::Read) | (Access::ReadWrite, Action::Write) => true,
            (Access::Read, Action::Write) => false,
        }
    }
}

vocabulary! {
    /// Why the family allows the disclosure (FERPA 34 CFR 99.30(b)(2), 42 CFR 2.31(a)(4)).
    Purpose, "purpose" {
        /// Coordinating the child's care across agencies.
        CareCoordination => "care_coordination",
        /// Referring the child to a service.
        Referral => "referral",
        /// Evaluating the child's needs or eligibility.
        Evaluation => "evaluation",
    }
    aliases {}
}

vocabulary! {
    /// How the grantor relates to the child.
    Relationship, "relationship" {
        /// A parent.
        Parent => "parent",
        /// A legal guardian.
        Guardian => "guardian",
        /// A foster parent.
        FosterParent => "foster_parent",
        /// The student, 18 or older or otherwise holding their own rights.
        EligibleStudent => "eligible_student",
        /// Another person with authority to consent (recorded as such).
        Other => "other",
    }
    aliases {}
}

vocabulary! {
    /// How the consent was collected.
    CollectionMethod, "collection method" {
        /// A signed paper form.
        PaperForm => "paper_form",
        /// An electronic signature.
        ESignature => "e_signature",
        /// Spoken consent, recorded in front of a witness.
        VerbalWithWitness => "verbal_with_witness",
    }
    aliases {
        "paper" => PaperForm,
        "esignature" => ESignature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T>(all: &[T])
    where
        T: Copy + fmt::Display + FromStr<Err = ParseEnumError> + Serialize + PartialEq + fmt::Debug,
        T: for<'de> Deserialize<'de>,
    {
        for &v in all {
            let text = v.to_string();
            assert_eq!(text.parse::<T>(), Ok(v));
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{text}\""), "serde name equals as_str");
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
        }
    }

    #[test]
    fn names_round_trip_through_text_and_serde() {
        round_trips(Action::ALL);
        round_trips(Access::ALL);
        round_trips(Purpose::ALL);
        round_trips(Relationship::ALL);
        round_trips(CollectionMethod::ALL);
    }

    #[test]
    fn snake_case_names_are_exact() {
        assert_eq!(Access::ReadWrite.as_str(), "read_write");
        assert_eq!(Purpose::CareCoordination.as_str(), "care_coordination");
        assert_eq!(Relationship::EligibleStudent.as_str(), "eligible_student");
        assert_eq!(Relationship::FosterParent.as_str(), "foster_parent");
        assert_eq!(CollectionMethod::PaperForm.as_str(), "paper_form");
        assert_eq!(CollectionMethod::ESignature.as_str(), "e_signature");
        assert_eq!(
            CollectionMethod::VerbalWithWitness.as_str(),
            "verbal_with_witness"
        );
    }

    #[test]
    fn collection_method_aliases_parse_but_do_not_deserialize() {
        assert_eq!("paper".parse(), Ok(CollectionMethod::PaperForm));
        assert_eq!("esignature".parse(), Ok(CollectionMethod::ESignature));
        assert!(serde_json::from_str::<CollectionMethod>("\"paper\"").is_err());
    }

    #[test]
    fn unknown_names_list_the_accepted_values() {
        let err = "ReadWrite".parse::<Access>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown access \"ReadWrite\"; expected one of: read, read_write"
        );
        let err = "email".parse::<CollectionMethod>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown collection method \"email\"; \
             expected one of: paper_form, e_signature, verbal_with_witness"
        );
        assert!("Care_Coordination".parse::<Purpose>().is_err());
        assert!("".parse::<Relationship>().is_err());
    }

    #[test]
    fn read_write_implies_read() {
        assert!(Access::Read.permits(Action::Read));
        assert!(!Access::Read.permits(Action::Write));
        assert!(Access::ReadWrite.permits(Action::Read));
        assert!(Access::ReadWrite.permits(Action::Write));
    }
}
