//! Identifiers and time: [`Timestamp`], [`AgencyId`], [`ConsentId`] and [`RevocationId`].
//!
//! Every identifier is validated when it is made, by `parse`, `FromStr` or serde (serde goes
//! through `parse`), so a value of one of these types is always well formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// The crate never reads a clock: callers pass "now" in, so every decision is reproducible.
/// `Display` shows an RFC 3339 UTC time such as `2025-09-01T00:00:00.000Z`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Makes a timestamp from Unix milliseconds.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// The Unix milliseconds of this timestamp.
    pub const fn as_millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let secs_of_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            secs_of_day / 3600,
            (secs_of_day / 60) % 60,
            secs_of_day % 60
        )
    }
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days`; exact for every `i64` millisecond timestamp.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Why a string is not a valid [`AgencyId`]. The messages never echo the whole input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgencyIdError {
    /// The string is empty.
    #[error("agency id is empty")]
    Empty,
    /// The string is longer than 253 characters.
    #[error("agency id is {len} characters long; the limit is 253")]
    TooLong {
        /// Length of the rejected input, in bytes.
        len: usize,
    },
    /// A character other than a lowercase letter, digit, `-` or `.`.
    #[error(
        "agency id contains {found:?} at position {position}; \
         only lowercase letters, digits, '-' and '.' are allowed"
    )]
    InvalidCharacter {
        /// Zero-based character position.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// A label (the text between dots) is empty: a leading, trailing or doubled `.`.
    #[error("agency id has an empty label (a leading, trailing or doubled '.')")]
    EmptyLabel,
    /// A label is longer than 63 characters.
    #[error("label {label} of the agency id is longer than 63 characters")]
    LabelTooLong {
        /// One-based label number.
        label: usize,
    },
    /// A label starts or ends with `-`.
    #[error("label {label} of the agency id starts or ends with '-'")]
    HyphenAtLabelEdge {
        /// One-based label number.
        label: usize,
    },
}

/// The identity of an agency (one node of the federation): a DNS-like name such as
/// `lincoln-high.example.org`.
///
/// Lowercase ASCII letters, digits, `-` and `.`; 1 to 253 characters; dot-separated labels of
/// 1 to 63 characters that neither start nor end with `-`.
///
/// ```
/// use weft_consent::AgencyId;
/// let school: AgencyId = "lincoln-high.example.org".parse().unwrap();
/// assert_eq!(school.as_str(), "lincoln-high.example.org");
/// assert!(AgencyId::parse("Lincoln-High").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgencyId(String);

impl AgencyId {
    /// Longest accepted agency id, in characters.
    pub const MAX_LEN: usize = 253;
    /// Longest accepted label, in characters.
    pub const MAX_LABEL_LEN: usize = 63;

    /// Checks `s` against the agency id rules.
    pub fn parse(s: &str) -> Result<AgencyId, AgencyIdError> {
        if s.is_empty() {
            return Err(AgencyIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(AgencyIdError::TooLong { len: s.len() });
        }
        if let Some((position, found)) = s.chars().enumerate().find(|(_, c)| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')
        }) {
            return Err(AgencyIdError::InvalidCharacter { position, found });
        }
        for (index, label) in s.split('.').enumerate() {
            let label_number = index + 1;
            if label.is_empty() {
                return Err(AgencyIdError::EmptyLabel);
            }
            if label.len() > Self::MAX_LABEL_LEN {
                return Err(AgencyIdError::LabelTooLong {
                    label: label_number,
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(AgencyIdError::HyphenAtLabelEdge {
                    label: label_number,
                });
            }
        }
        Ok(AgencyId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AgencyId {
    type Err = AgencyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgencyId::parse(s)
    }
}

impl TryFrom<String> for AgencyId {
    type Error = AgencyIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        AgencyId::parse(&s)
    }
}

impl From<AgencyId> for String {
    fn from(id: AgencyId) -> String {
        id.0
    }
}

impl AsRef<str> for AgencyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a valid [`ConsentId`] or [`RevocationId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} is empty")]
    Empty {
        /// `"consent id"` or `"revocation id"`.
        kind: &'static str,
    },
    /// The string is longer than 64 characters.
    #[error("{kind} is {len} characters long; the limit is 64")]
    TooLong {
        /// `"consent id"` or `"revocation id"`.
        kind: &'static str,
        /// Length of the rejected input, in bytes.
        len: usize,
    },
    /// A character other than an ASCII letter, digit, `-` or `_`.
    #[error(
        "{kind} contains {found:?} at position {position}; \
         only ASCII letters, digits, '-' and '_' are allowed"
    )]
    InvalidCharacter {
        /// `"consent id"` or `"revocation id"`.
        kind: &'static str,
        /// Zero-based character position.
        position: usize,
        /// The offending character.
        found: char,
    },
}

fn parse_opaque_id(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > 64 {
        return Err(IdError::TooLong { kind, len: s.len() });
    }
    if let Some((position, found)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::InvalidCharacter {
            kind,
            position,
            found,
        });
    }
    Ok(())
}

macro_rules! opaque_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted id, in characters.
            pub const MAX_LEN: usize = 64;

            /// Checks `s`: 1 to 64 characters of `[A-Za-z0-9_-]`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                parse_opaque_id($kind, s)?;
                Ok($name(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

opaque_id!(
    /// The caller-chosen, opaque id of a [`ConsentRecord`](crate::ConsentRecord): 1 to 64
    /// characters of `[A-Za-z0-9_-]`. One id names exactly one record.
    ConsentId,
    "consent id"
);

opaque_id!(
    /// The caller-chosen, opaque id of a [`Revocation`](crate::Revocation): 1 to 64 characters
    /// of `[A-Za-z0-9_-]`.
    RevocationId,
    "revocation id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_id_accepts_dns_like_names() {
        for ok in [
            "a",
            "lincoln-high.example.org",
            "clinic-2.example",
            "x1.y2.z3",
            "0",
            &"a".repeat(63),
            &format!(
                "{}.{}.{}.{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61)
            ),
        ] {
            let id = AgencyId::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
            assert_eq!(ok.parse::<AgencyId>().as_ref(), Ok(&id));
        }
    }

    #[test]
    fn agency_id_rejects_bad_names() {
        use AgencyIdError::*;
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62)
        );
        assert_eq!(long.len(), 254);
        let cases: Vec<(&str, AgencyIdError)> = vec![
            ("", Empty),
            (&long, TooLong { len: 254 }),
            (
                "School",
                InvalidCharacter {
                    position: 0,
                    found: 'S',
                },
            ),
            (
                "a_b",
                InvalidCharacter {
                    position: 1,
                    found: '_',
                },
            ),
            (
                "a b",
                InvalidCharacter {
                    position: 1,
                    found: ' ',
                },
            ),
            (
                "café",
                InvalidCharacter {
                    position: 3,
                    found: 'é',
                },
            ),
            (".a", EmptyLabel),
            ("a.", EmptyLabel),
            ("a..b", EmptyLabel),
            (".", EmptyLabel),
            ("-a", HyphenAtLabelEdge { label: 1 }),
            ("a-", HyphenAtLabelEdge { label: 1 }),
            ("a.-b", HyphenAtLabelEdge { label: 2 }),
            ("-", HyphenAtLabelEdge { label: 1 }),
        ];
        for (input, expected) in cases {
            assert_eq!(AgencyId::parse(input), Err(expected), "{input:?}");
        }
        let label = "a".repeat(64);
        assert_eq!(
            AgencyId::parse(&format!("x.{label}")),
            Err(LabelTooLong { label: 2 })
        );
    }

    #[test]
    fn agency_id_serde_goes_through_parse() {
        let id: AgencyId = serde_json::from_str("\"clinic.example\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"clinic.example\"");
        assert!(serde_json::from_str::<AgencyId>("\"Clinic\"").is_err());
        assert!(serde_json::from_str::<AgencyId>("\"\"").is_err());
    }

    #[test]
    fn opaque_ids_are_checked() {
        assert!(ConsentId::parse("c-1_A").is_ok());
        assert_eq!(
            ConsentId::parse(""),
            Err(IdError::Empty { kind: "consent id" })
        );
        assert!(ConsentId::parse(&"a".repeat(64)).is_ok());
        assert!(matches!(
            RevocationId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            RevocationId::parse("r/1"),
            Err(IdError::InvalidCharacter {
                position: 1,
                found: '/',
                ..
            })
        ));
        assert!(serde_json::from_str::<ConsentId>("\"a b\"").is_err());
        assert_eq!(
            ConsentId::parse("x").unwrap().to_string(),
            "x".parse::<ConsentId>().unwrap().as_str()
        );
    }

    #[test]
    fn timestamp_displays_as_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::from_millis(1_756_684_800_123).to_string(),
            "2025-09-01T00:00:00.123Z"
        );
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert!(Timestamp(1) < Timestamp(2));
        assert_eq!(Timestamp::from_millis(7).as_millis(), 7);
        // Extremes do not panic.
        let _ = Timestamp(i64::MIN).to_string();
        let _ = Timestamp(i64::MAX).to_string();
    }
}
