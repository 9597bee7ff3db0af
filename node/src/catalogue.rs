//! The section catalogue: every section of a plan, its fields and their types, in one table.
//!
//! Edits are validated against this table before anything touches a document, so an unknown
//! section or field, a wrong type, or an oversized value is an error that changes nothing.
//!
//! ```
//! use weft_node::catalogue::{spec_for, FieldType};
//! let profile = spec_for("profile").unwrap();
//! assert!(matches!(profile.field("tier").unwrap().ty, FieldType::Integer { min: 1, max: 4 }));
//! ```

use serde_json::Value as Json;

use crate::error::Error;

/// Prefix of the per-agency case-notes sections, `notes/<agency>`.
pub const NOTES_PREFIX: &str = "notes/";

/// Largest saved section document accepted from an edit, in bytes.
pub const MAX_SECTION_BYTES: usize = 1 << 20;

/// Most goals in one plan, and most referrals.
pub const MAX_ITEMS: usize = 500;

/// Most progress notes on one goal, and history steps on one referral.
pub const MAX_NOTES: usize = 1000;

/// A field's type, with its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// A single line of text of at most `max` characters.
    Text {
        /// Most characters.
        max: usize,
    },
    /// Free text of at most `max` characters (notes).
    LongText {
        /// Most characters.
        max: usize,
    },
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A whole number in `min..=max`.
    Integer {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// `true` or `false`.
    Bool,
    /// One of the listed values.
    Enum(&'static [&'static str]),
    /// A list of at most `max_items` texts of at most `max_len` characters each.
    TextList {
        /// Most items.
        max_items: usize,
        /// Most characters per item.
        max_len: usize,
    },
}

/// A typed, validated field value, ready to be written into a document.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// Text, dates and enum values.
    Text(String),
    /// Integers.
    Integer(i64),
    /// Booleans.
    Bool(bool),
    /// Text lists.
    List(Vec<String>),
}

/// One field of a section.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field's name.
    pub name: &'static str,
    /// Its type and limits.
    pub ty: FieldType,
}

/// A keyed collection inside a section (goals, referrals): a map from item id to item.
#[derive(Debug)]
pub struct CollectionSpec {
    /// The key under the document root, e.g. `goals`.
    pub name: &'static str,
    /// The item's fields.
    pub fields: &'static [FieldSpec],
}

/// One section of the catalogue.
#[derive(Debug)]
pub struct SectionSpec {
    /// The section's name (for `notes/<agency>`, `notes/`).
    pub name: &'static str,
    /// What the section is for, shown in help texts.
    pub about: &'static str,
    /// Its plain fields, set with `SetFields`.
    pub fields: &'static [FieldSpec],
    /// Its keyed collection, if any, changed only through its own operations.
    pub collection: Option<&'static CollectionSpec>,
}

impl SectionSpec {
    /// The plain field called `name`, or an error naming the section's fields.
    pub fn field(&self, name: &str) -> Result<&'static FieldSpec, Error> {
        self.fields.iter().find(|f| f.name == name).ok_or_else(|| {
            let known: Vec<_> = self.fields.iter().map(|f| f.name).collect();
            let hint = match self.collection {
                Some(c) if c.name == name => {
                    format!(" (`{name}` is changed with its own commands, not set as a field)")
                }
                _ => String::new(),
            };
            Error::invalid(format!(
                "section `{}` has no field `{name}`{hint}; its fields are: {}",
                self.name,
                known.join(", ")
            ))
        })
    }
}

const NOTES: FieldSpec = FieldSpec {
    name: "notes",
    ty: FieldType::LongText { max: 8000 },
};
const fn text(name: &'static str, max: usize) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Text { max },
    }
}
const fn list(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::TextList {
            max_items: 50,
            max_len: 200,
        },
    }
}
const fn one_of(name: &'static str, values: &'static [&'static str]) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Enum(values),
    }
}
const fn date(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Date,
    }
}
const fn flag(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Bool,
    }
}
const fn int(name: &'static str, min: i64, max: i64) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Integer { min, max },
    }
}

/// Goal domains.
pub const GOAL_DOMAINS: &[&str] = &["academic", "social_emotional", "health", "family", "other"];
/// Goal horizons.
pub const GOAL_HORIZONS: &[&str] = &["short", "long"];
/// Goal statuses.
pub const GOAL_STATUSES: &[&str] = &["open", "in_progress", "met", "dropped"];
/// Referral statuses, in the order a closed-loop referral moves through them.
pub const REFERRAL_STATUSES: &[&str] = &[
    "proposed",
    "sent",
    "accepted",
    "in_progress",
    "completed",
    "declined",
];

/// Whether a referral may move from `from` to `to`: forward along proposed → sent →
/// accepted → in_progress → completed, or to declined from any open status. Completed and
/// declined referrals are closed.
pub fn referral_step_allowed(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("proposed", "sent")
            | ("sent", "accepted")
            | ("accepted", "in_progress")
            | ("accepted", "completed")
            | ("in_progress", "completed")
            | ("proposed" | "sent" | "accepted" | "in_progress", "declined")
    )
}

/// The fields of one goal (progress notes are a list beside them).
pub static GOALS: CollectionSpec = CollectionSpec {
    name: "goals",
    fields: &[
        one_of("domain", GOAL_DOMAINS),
        FieldSpec {
            name: "text",
            ty: FieldType::Text { max: 1000 },
        },
        one_of("horizon", GOAL_HORIZONS),
        one_of("status", GOAL_STATUSES),
        date("target_date"),
    ],
};

/// The fields of one referral (its status history is a list beside them).
pub static REFERRALS: CollectionSpec = CollectionSpec {
    name: "referrals",
    fields: &[
        text("service", 200),
        text("provider_agency", 253),
        one_of("status", REFERRAL_STATUSES),
    ],
};

/// The catalogue. `notes/` stands for every `notes/<agency>` section.
pub static CATALOGUE: &[SectionSpec] = &[
    SectionSpec {
        name: "profile",
        about: "who the child is: names, birth date, school, language, guardians, need tier",
        fields: &[
            text("given_name", 100),
            text("family_name", 100),
            text("preferred_name", 100),
            date("date_of_birth"),
            one_of(
                "grade",
                &[
                    "pre_k", "k", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
                    "ungraded",
                ],
            ),
            text("school", 200),
            text("home_language", 64),
            FieldSpec {
                name: "guardians",
                ty: FieldType::TextList {
                    max_items: 10,
                    max_len: 200,
                },
            },
            int("tier", 1, 4),
            NOTES,
        ],
        collection: None,
    },
    SectionSpec {
        name: "strengths",
        about: "what the child is good at and cares about",
        fields: &[list("strengths"), list("interests"), NOTES],
        collection: None,
    },
    SectionSpec {
        name: "goals",
        about: "goals the family and agencies set, with progress notes",
        fields: &[NOTES],
        collection: Some(&GOALS),
    },
    SectionSpec {
        name: "academic",
        about: "attendance, levels, IEP and 504 plans, supports",
        fields: &[
            int("attendance_rate", 0, 100),
            text("reading_level", 64),
            text("math_level", 64),
            flag("iep"),
            flag("plan_504"),
            list("supports"),
            NOTES,
        ],
        collection: None,
    },
    SectionSpec {
        name: "health",
        about: "conditions, allergies, medications, primary care",
        fields: &[
            list("conditions"),
            list("allergies"),
            list("medications"),
            text("primary_care_provider", 200),
            one_of("insurance", &["public", "private", "none", "unknown"]),
            NOTES,
        ],
        collection: None,
    },
    SectionSpec {
        name: "behavioral_health",
        about: "concerns, screenings, counselor, crisis plan",
        fields: &[
            list("concerns"),
            list("screenings"),
            text("counselor", 200),
            FieldSpec {
                name: "crisis_plan",
                ty: FieldType::LongText { max: 4000 },
            },
            NOTES,
        ],
        collection: None,
    },
    SectionSpec {
        name: "nutrition",
        about: "food security, meal program, dietary needs",
        fields: &[
            one_of("food_security", &["secure", "low", "very_low", "unknown"]),
            one_of("meal_program", &["none", "free", "reduced", "paid"]),
            list("dietary_needs"),
            NOTES,
        ],
        collection: None,
    },
    SectionSpec {
        name: "family",
        about: "household, housing, contact, family needs",
        fields: &[
            int("household_size", 1, 30),
            one_of(
                "housing",
                &["stable", "doubled_up", "shelter", "unsheltered", "unknown"],
            ),
            text("primary_contact", 200),
            text("contact_phone", 32),
            list("needs"),
            NOTES,
        ],
        collection: None,
    },
    SectionSpec {
        name: "services",
        about: "referrals to services, each with its status history",
        fields: &[NOTES],
        collection: Some(&REFERRALS),
    },
    SectionSpec {
        name: NOTES_PREFIX,
        about: "an agency's own case notes (`notes/<agency>`)",
        fields: &[FieldSpec {
            name: "notes",
            ty: FieldType::LongText { max: 20000 },
        }],
        collection: None,
    },
];

/// The catalogue entry for a section name; unknown names are an error listing the known ones.
pub fn spec_for(name: &str) -> Result<&'static SectionSpec, Error> {
    if let Some(agency) = name.strip_prefix(NOTES_PREFIX) {
        weft_consent::AgencyId::parse(agency).map_err(|_| {
            Error::invalid(format!(
                "unknown section `{name}`: notes sections are `notes/<agency id>`"
            ))
        })?;
        return Ok(CATALOGUE
            .iter()
            .find(|s| s.name == NOTES_PREFIX)
            .expect("in table"));
    }
    CATALOGUE
        .iter()
        .find(|s| s.name == name && s.name != NOTES_PREFIX)
        .ok_or_else(|| {
            Error::invalid(format!(
                "unknown section `{}`; sections are: {}",
                shorten(name),
                section_names().join(", ")
            ))
        })
}

/// The names of the fixed sections, plus `notes/<agency>`.
pub fn section_names() -> Vec<&'static str> {
    CATALOGUE
        .iter()
        .map(|s| {
            if s.name == NOTES_PREFIX {
                "notes/<agency>"
            } else {
                s.name
            }
        })
        .collect()
}

/// The fixed sections every plan starts with (an agency's notes section appears when used).
pub fn fixed_sections() -> impl Iterator<Item = &'static SectionSpec> {
    CATALOGUE.iter().filter(|s| s.name != NOTES_PREFIX)
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

impl FieldSpec {
    /// Parses and checks text input (from the CLI or the API) for this field.
    pub fn parse(&self, section: &str, input: &str) -> Result<FieldValue, Error> {
        let name = self.name;
        let bad = |what: String| Error::invalid(format!("{section}.{name}: {what}"));
        match self.ty {
            FieldType::Text { max } | FieldType::LongText { max } => {
                let n = input.chars().count();
                if n > max {
                    return Err(bad(format!("{n} characters is over the limit of {max}")));
                }
                if matches!(self.ty, FieldType::Text { .. }) && input.contains(['\n', '\r']) {
                    return Err(bad("must be a single line".into()));
                }
                Ok(FieldValue::Text(input.to_string()))
            }
            FieldType::Date => parse_date(input)
                .map(FieldValue::Text)
                .map_err(|_| bad("expected a date as YYYY-MM-DD".into())),
            FieldType::Integer { min, max } => match input.trim().parse::<i64>() {
                Ok(v) if (min..=max).contains(&v) => Ok(FieldValue::Integer(v)),
                Ok(_) => Err(bad(format!("must be between {min} and {max}"))),
                Err(_) => Err(bad(format!(
                    "expected a whole number between {min} and {max}"
                ))),
            },
            FieldType::Bool => match input.trim() {
                "true" | "yes" => Ok(FieldValue::Bool(true)),
                "false" | "no" => Ok(FieldValue::Bool(false)),
                _ => Err(bad("expected true or false".into())),
            },
            FieldType::Enum(values) => {
                if values.contains(&input) {
                    Ok(FieldValue::Text(input.to_string()))
                } else {
                    Err(bad(format!("expected one of {}", values.join(", "))))
                }
            }
            FieldType::TextList { max_items, max_len } => {
                let items: Vec<String> = if input.trim_start().starts_with('[') {
                    serde_json::from_str(input)
                        .map_err(|_| bad("expected a JSON array of strings".into()))?
                } else if input.trim().is_empty() {
                    Vec::new()
                } else {
                    input.split(';').map(|s| s.trim().to_string()).collect()
                };
                if items.len() > max_items {
                    return Err(bad(format!(
                        "{} items is over the limit of {max_items}",
                        items.len()
                    )));
                }
                if let Some(i) = items.iter().position(|s| s.chars().count() > max_len) {
                    return Err(bad(format!(
                        "item {} is over the limit of {max_len} characters",
                        i + 1
                    )));
                }
                Ok(FieldValue::List(items))
            }
        }
    }
}

/// Checks a `YYYY-MM-DD` date and returns it normalised.
pub fn parse_date(input: &str) -> Result<String, Error> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(input.trim(), format)
        .map(|d| d.format(format).expect("formattable"))
        .map_err(|_| Error::invalid("expected a date as YYYY-MM-DD"))
}

impl FieldValue {
    /// The value as JSON, for rendering.
    pub fn to_json(&self) -> Json {
        match self {
            FieldValue::Text(s) => Json::from(s.as_str()),
            FieldValue::Integer(i) => Json::from(*i),
            FieldValue::Bool(b) => Json::from(*b),
            FieldValue::List(items) => Json::from(items.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_has_notes_and_unique_field_names() {
        for s in CATALOGUE {
            assert!(s.fields.iter().any(|f| f.name == "notes"), "{}", s.name);
            let mut names: Vec<_> = s.fields.iter().map(|f| f.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), s.fields.len(), "{}", s.name);
        }
    }

    #[test]
    fn notes_sections_need_an_agency() {
        assert!(spec_for("notes/clinic.test").is_ok());
        assert!(spec_for("notes/").is_err());
        assert!(spec_for("notes/NOT AN AGENCY").is_err());
    }

    #[test]
    fn fields_parse_by_type() {
        let p = spec_for("profile").unwrap();
        assert_eq!(
            p.field("tier").unwrap().parse("profile", "3").unwrap(),
            FieldValue::Integer(3)
        );
        let e = p
            .field("tier")
            .unwrap()
            .parse("profile", "7")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("profile.tier") && e.contains("between 1 and 4"),
            "{e}"
        );
        assert!(p
            .field("date_of_birth")
            .unwrap()
            .parse("profile", "2015-02-30")
            .is_err());
        assert_eq!(
            p.field("guardians")
                .unwrap()
                .parse("profile", "A B; C D")
                .unwrap(),
            FieldValue::List(vec!["A B".into(), "C D".into()])
        );
        assert_eq!(
            p.field("guardians")
                .unwrap()
                .parse("profile", r#"["A; B"]"#)
                .unwrap(),
            FieldValue::List(vec!["A; B".into()])
        );
        let long = "x".repeat(101);
        let e = p
            .field("given_name")
            .unwrap()
            .parse("profile", &long)
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the limit of 100"), "{e}");
        assert!(p.field("grade").unwrap().parse("profile", "13").is_err());
        let e = p.field("goals").unwrap_err().to_string();
        assert!(e.contains("has no field `goals`"), "{e}");
        let e = spec_for("goals")
            .unwrap()
            .field("goals")
            .unwrap_err()
            .to_string();
        assert!(e.contains("own commands"), "{e}");
    }
}
