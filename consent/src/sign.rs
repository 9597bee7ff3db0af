//! Canonical encoding and Ed25519 signatures of consent records and revocations.
//!
//! The canonical encoding of a record is a domain-separation tag followed by its compact JSON
//! (fields in declaration order, no whitespace):
//!
//! * consents: `weft-consent-v1\n` + JSON ([`canonical_bytes`]);
//! * revocations: `weft-revocation-v1\n` + JSON ([`canonical_revocation_bytes`]).
//!
//! The signature covers those exact bytes, tag included, so bytes signed as a revocation can
//! never be accepted as a consent or the other way round.
//!
//! [`SignedConsent::verify`] accepts a record only if, in this order: the signature verifies
//! (strict Ed25519, no malleable signatures) over the stored bytes; the tag is right; the JSON
//! decodes; re-encoding the decoded record gives back exactly the same bytes (so there is one
//! byte string per record, and no unknown fields, whitespace or reordering slips through); the
//! record validates; and the envelope's signer is the agency that recorded it.
//!
//! Envelopes have a JSON form (bytes as lowercase hex) and a compact binary form for storage
//! ([`SignedConsent::to_bytes`]).

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::AgencyId;
use crate::record::{ConsentRecord, Revocation};
use crate::validate::{ConsentInvalid, RevocationInvalid};

/// Domain-separation tag that starts every canonical consent encoding.
pub const CONSENT_TAG: &[u8] = b"weft-consent-v1\n";
/// Domain-separation tag that starts every canonical revocation encoding.
pub const REVOCATION_TAG: &[u8] = b"weft-revocation-v1\n";

const CONSENT_ENVELOPE_MAGIC: &[u8; 4] = b"WSC1";
const REVOCATION_ENVELOPE_MAGIC: &[u8; 4] = b"WSR1";

/// Which kind of record an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A [`ConsentRecord`].
    Consent,
    /// A [`Revocation`].
    Revocation,
}

impl RecordKind {
    fn tag(self) -> &'static [u8] {
        match self {
            RecordKind::Consent => CONSENT_TAG,
            RecordKind::Revocation => REVOCATION_TAG,
        }
    }

    fn magic(self) -> &'static [u8; 4] {
        match self {
            RecordKind::Consent => CONSENT_ENVELOPE_MAGIC,
            RecordKind::Revocation => REVOCATION_ENVELOPE_MAGIC,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Consent => "consent",
            RecordKind::Revocation => "revocation",
        })
    }
}

/// Why a record could not be signed, or a signed record was rejected. Messages never contain
/// record values (decode errors report only a category and a position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature does not verify over the record bytes with the given key.
    #[error("{kind} signature does not verify")]
    BadSignature {
        /// Record kind.
        kind: RecordKind,
    },
    /// The bytes do not start with the kind's domain tag.
    #[error("bytes are not a weft {kind} record (wrong domain tag)")]
    WrongDomain {
        /// The kind that was expected.
        kind: RecordKind,
    },
    /// The JSON after the tag does not decode into a record.
    #[error("{kind} record does not decode ({category} error at line {line}, column {column})")]
    Decode {
        /// Record kind.
        kind: RecordKind,
        /// `syntax`, `data`, `eof` or `io`.
        category: &'static str,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("{kind} encoding is not canonical")]
    NotCanonical {
        /// Record kind.
        kind: RecordKind,
    },
    /// The consent fails validation.
    #[error(transparent)]
    InvalidConsent(#[from] ConsentInvalid),
    /// The revocation fails validation.
    #[error(transparent)]
    InvalidRevocation(#[from] RevocationInvalid),
    /// The signer is not the agency that recorded the record.
    #[error("{kind} is signed by {signer} but was recorded by {recorder}")]
    SignerMismatch {
        /// Record kind.
        kind: RecordKind,
        /// The envelope's signer.
        signer: AgencyId,
        /// The record's recording agency.
        recorder: AgencyId,
    },
    /// The binary or JSON envelope is malformed.
    #[error("signed {kind} envelope is malformed: {reason}")]
    MalformedEnvelope {
        /// Record kind.
        kind: RecordKind,
        /// What is wrong, in a few words.
        reason: &'static str,
    },
}

fn encode<T: Serialize>(tag: &[u8], value: &T) -> Vec<u8> {
    let mut bytes = tag.to_vec();
    // Serializing these records cannot fail: they hold only strings, integers, enums, options
    // and sequences (no maps with non-string keys, no failing custom serializers), and writing
    // to a Vec performs no IO.
    serde_json::to_writer(&mut bytes, value).expect("consent records always serialize");
    bytes
}

/// The canonical, signed encoding of a consent: [`CONSENT_TAG`] then compact JSON.
pub fn canonical_bytes(record: &ConsentRecord) -> Vec<u8> {
    encode(CONSENT_TAG, record)
}

/// The canonical, signed encoding of a revocation: [`REVOCATION_TAG`] then compact JSON.
pub fn canonical_revocation_bytes(revocation: &Revocation) -> Vec<u8> {
    encode(REVOCATION_TAG, revocation)
}

/// Checks the signature, tag, decoding and canonical form; returns the decoded record.
fn open<T: Serialize + DeserializeOwned>(
    kind: RecordKind,
    record_bytes: &[u8],
    signature: &[u8; 64],
    key: &VerifyingKey,
) -> Result<T, SignatureError> {
    let signature = Signature::from_bytes(signature);
    key.verify_strict(record_bytes, &signature)
        .map_err(|_| SignatureError::BadSignature { kind })?;
    decode(kind, record_bytes)
}

/// Decodes signed record bytes (domain tag, JSON, canonical form) without the signature.
fn decode<T: Serialize + DeserializeOwned>(
    kind: RecordKind,
    record_bytes: &[u8],
) -> Result<T, SignatureError> {
    let json = record_bytes
        .strip_prefix(kind.tag())
        .ok_or(SignatureError::WrongDomain { kind })?;
    let record: T = serde_json::from_slice(json).map_err(|e| SignatureError::Decode {
        kind,
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    })?;
    if encode(kind.tag(), &record) != record_bytes {
        return Err(SignatureError::NotCanonical { kind });
    }
    Ok(record)
}

fn check_signer(
    kind: RecordKind,
    signer: &AgencyId,
    recorder: &AgencyId,
) -> Result<(), SignatureError> {
    if signer == recorder {
        Ok(())
    } else {
        Err(SignatureError::SignerMismatch {
            kind,
            signer: signer.clone(),
            recorder: recorder.clone(),
        })
    }
}

/// Binary envelope: magic, signer length (1 byte), signer, signature (64 bytes), record length
/// (8 bytes, big-endian), record bytes.
fn envelope_to_bytes(
    kind: RecordKind,
    record_bytes: &[u8],
    signer: &AgencyId,
    signature: &[u8; 64],
) -> Vec<u8> {
    let signer = signer.as_str().as_bytes();
    let mut out = Vec::with_capacity(4 + 1 + signer.len() + 64 + 8 + record_bytes.len());
    out.extend_from_slice(kind.magic());
    // An AgencyId is at most 253 bytes, so its length fits in one byte.
    out.push(u8::try_from(signer.len()).expect("agency ids are at most 253 bytes"));
    out.extend_from_slice(signer);
    out.extend_from_slice(signature);
    out.extend_from_slice(&(record_bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(record_bytes);
    out
}

/// Reads what [`envelope_to_bytes`] wrote: (record bytes, signer, signature).
fn envelope_from_bytes(
    kind: RecordKind,
    bytes: &[u8],
) -> Result<(Vec<u8>, AgencyId, [u8; 64]), SignatureError> {
    let malformed = |reason| SignatureError::MalformedEnvelope { kind, reason };
    let rest = bytes
        .strip_prefix(kind.magic().as_slice())
        .ok_or(malformed("wrong magic bytes"))?;
    let (&signer_len, rest) = rest.split_first().ok_or(malformed("truncated"))?;
    let (signer, rest) = rest
        .split_at_checked(usize::from(signer_len))
        .ok_or(malformed("truncated signer"))?;
    let signer = std::str::from_utf8(signer)
        .ok()
        .and_then(|s| AgencyId::parse(s).ok())
        .ok_or(malformed("signer is not a valid agency id"))?;
    let (signature, rest) = rest
        .split_first_chunk::<64>()
        .ok_or(malformed("truncated signature"))?;
    let (len, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(malformed("truncated record length"))?;
    let len = u64::from_be_bytes(*len);
    if u64::try_from(rest.len()).ok() != Some(len) {
        return Err(malformed("record length does not match"));
    }
    Ok((rest.to_vec(), signer, *signature))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A consent record as signed by the agency that recorded it.
///
/// `record_bytes` are kept exactly as signed; the record is only trusted after
/// [`SignedConsent::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedConsent {
    /// The canonical encoding ([`canonical_bytes`]) that was signed.
    #[serde(with = "hex_vec")]
    pub record_bytes: Vec<u8>,
    /// The agency that signed (must be the record's `recorded_by.agency`).
    pub signer: AgencyId,
    /// Ed25519 signature over `record_bytes`.
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

/// A revocation as signed by the agency that recorded it. See [`SignedConsent`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRevocation {
    /// The canonical encoding ([`canonical_revocation_bytes`]) that was signed.
    #[serde(with = "hex_vec")]
    pub record_bytes: Vec<u8>,
    /// The agency that signed (must be the revocation's `revoked_by.agency`).
    pub signer: AgencyId,
    /// Ed25519 signature over `record_bytes`.
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
}

/// Validates `record`, checks that `signer` recorded it, and signs its canonical encoding.
pub fn sign_consent(
    record: &ConsentRecord,
    signer: &AgencyId,
    key: &SigningKey,
) -> Result<SignedConsent, SignatureError> {
    record.validate()?;
    check_signer(RecordKind::Consent, signer, &record.recorded_by.agency)?;
    let record_bytes = canonical_bytes(record);
    let signature = key.sign(&record_bytes).to_bytes();
    Ok(SignedConsent {
        record_bytes,
        signer: signer.clone(),
        signature,
    })
}

/// Validates `revocation`, checks that `signer` recorded it, and signs its canonical encoding.
pub fn sign_revocation(
    revocation: &Revocation,
    signer: &AgencyId,
    key: &SigningKey,
) -> Result<SignedRevocation, SignatureError> {
    revocation.validate()?;
    check_signer(
        RecordKind::Revocation,
        signer,
        &revocation.revoked_by.agency,
    )?;
    let record_bytes = canonical_revocation_bytes(revocation);
    let signature = key.sign(&record_bytes).to_bytes();
    Ok(SignedRevocation {
        record_bytes,
        signer: signer.clone(),
        signature,
    })
}

impl SignedConsent {
    /// Verifies the envelope with the signer's key and returns the record; see the
    /// [module docs](crate::sign) for every check made.
    pub fn verify(&self, key: &VerifyingKey) -> Result<ConsentRecord, SignatureError> {
        let kind = RecordKind::Consent;
        let record: ConsentRecord = open(kind, &self.record_bytes, &self.signature, key)?;
        record.validate()?;
        check_signer(kind, &self.signer, &record.recorded_by.agency)?;
        Ok(record)
    }

    /// The record WITHOUT checking the signature: only for routing records a node signed and
    /// stored itself (every receiver verifies them). Never base a decision on it.
    pub fn unverified_record(&self) -> Result<ConsentRecord, SignatureError> {
        decode(RecordKind::Consent, &self.record_bytes)
    }

    /// SHA-256 of the signed bytes: a stable reference to this exact record (for audit).
    pub fn digest(&self) -> [u8; 32] {
        digest(&self.record_bytes)
    }

    /// Compact binary form for storage; read back with [`SignedConsent::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        envelope_to_bytes(
            RecordKind::Consent,
            &self.record_bytes,
            &self.signer,
            &self.signature,
        )
    }

    /// Reads the binary form. Checks the framing only: call [`SignedConsent::verify`] before
    /// trusting the record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let (record_bytes, signer, signature) = envelope_from_bytes(RecordKind::Consent, bytes)?;
        Ok(SignedConsent {
            record_bytes,
            signer,
            signature,
        })
    }
}

impl SignedRevocation {
    /// Verifies the envelope with the signer's key and returns the revocation; see the
    /// [module docs](crate::sign) for every check made.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Revocation, SignatureError> {
        let kind = RecordKind::Revocation;
        let revocation: Revocation = open(kind, &self.record_bytes, &self.signature, key)?;
        revocation.validate()?;
        check_signer(kind, &self.signer, &revocation.revoked_by.agency)?;
        Ok(revocation)
    }

    /// The revocation WITHOUT checking the signature: see
    /// [`SignedConsent::unverified_record`].
    pub fn unverified_record(&self) -> Result<Revocation, SignatureError> {
        decode(RecordKind::Revocation, &self.record_bytes)
    }

    /// SHA-256 of the signed bytes: a stable reference to this exact revocation.
    pub fn digest(&self) -> [u8; 32] {
        digest(&self.record_bytes)
    }

    /// Compact binary form for storage; read back with [`SignedRevocation::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        envelope_to_bytes(
            RecordKind::Revocation,
            &self.record_bytes,
            &self.signer,
            &self.signature,
        )
    }

    /// Reads the binary form. Checks the framing only: call [`SignedRevocation::verify`]
    /// before trusting the revocation.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let (record_bytes, signer, signature) = envelope_from_bytes(RecordKind::Revocation, bytes)?;
        Ok(SignedRevocation {
            record_bytes,
            signer,
            signature,
        })
    }
}

/// Serde for `Vec<u8>` as a lowercase hex string.
mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// Serde for `[u8; 64]` as a lowercase hex string.
mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 64];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{agency, consent, revocation, CLINIC, HOME};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn consent_round_trips() {
        let record = consent("c1");
        let signed = sign_consent(&record, &agency(HOME), &key(1)).unwrap();
        assert!(signed.record_bytes.starts_with(CONSENT_TAG));
        assert_eq!(signed.record_bytes, canonical_bytes(&record));
        assert_eq!(signed.verify(&key(1).verifying_key()), Ok(record.clone()));

        let stored = SignedConsent::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(stored, signed);
        let json = serde_json::to_string(&signed).unwrap();
        let from_json: SignedConsent = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json, signed);
        assert_eq!(from_json.verify(&key(1).verifying_key()), Ok(record));
        assert_eq!(signed.digest(), from_json.digest());
    }

    #[test]
    fn revocation_round_trips() {
        let rev = revocation("r1", "c1");
        let signed = sign_revocation(&rev, &agency(HOME), &key(1)).unwrap();
        assert!(signed.record_bytes.starts_with(REVOCATION_TAG));
        assert_eq!(signed.verify(&key(1).verifying_key()), Ok(rev.clone()));
        let stored = SignedRevocation::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(stored.verify(&key(1).verifying_key()), Ok(rev));
        let json = serde_json::to_string(&signed).unwrap();
        assert_eq!(
            serde_json::from_str::<SignedRevocation>(&json).unwrap(),
            signed
        );
    }

    #[test]
    fn canonical_encoding_is_compact_json_in_field_order() {
        let bytes = canonical_bytes(&consent("c1"));
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with(
            "weft-consent-v1\n{\"id\":\"c1\",\"subject\":\"6f1c2a9e-0d4b-4c55-9a43-0a3c1d6e2b7f\",\
             \"grantor\":{\"name\":\"A. Guardian\",\"relationship\":\"guardian\"},\
             \"disclosing_agency\":\"school.example\""
        ));
        assert!(text.contains("\"collection_method\":\"e_signature\""));
        let json = &text[CONSENT_TAG.len()..];
        assert!(!json.contains('\n') && !json.contains(": ") && !json.contains(", "));
    }

    #[test]
    fn any_flipped_byte_fails() {
        let signed = sign_consent(&consent("c1"), &agency(HOME), &key(1)).unwrap();
        let vk = key(1).verifying_key();
        for i in 0..signed.record_bytes.len() {
            let mut bad = signed.clone();
            bad.record_bytes[i] ^= 0x01;
            assert!(bad.verify(&vk).is_err(), "record byte {i}");
        }
        for i in 0..64 {
            let mut bad = signed.clone();
            bad.signature[i] ^= 0x80;
            assert_eq!(
                bad.verify(&vk),
                Err(SignatureError::BadSignature {
                    kind: RecordKind::Consent
                }),
                "signature byte {i}"
            );
        }
    }

    #[test]
    fn wrong_key_fails() {
        let signed = sign_consent(&consent("c1"), &agency(HOME), &key(1)).unwrap();
        let err = signed.verify(&key(2).verifying_key()).unwrap_err();
        assert_eq!(err.to_string(), "consent signature does not verify");
    }

    #[test]
    fn non_canonical_bytes_fail_even_when_signed() {
        let record = consent("c1");
        let pretty = serde_json::to_vec_pretty(&record).unwrap();
        let mut unknown_field = serde_json::to_value(&record).unwrap();
        unknown_field["extra"] = serde_json::json!(1);
        let reordered = {
            let canonical = serde_json::to_string(&record).unwrap();
            // Move "id" after "subject".
            let without_id = canonical.replacen("\"id\":\"c1\",", "", 1);
            let body = without_id.strip_suffix('}').unwrap();
            format!("{body},\"id\":\"c1\"}}").into_bytes()
        };
        let escaped = serde_json::to_string(&record)
            .unwrap()
            .replacen("\"c1\"", "\"\\u00631\"", 1)
            .into_bytes();

        let cases = [
            (pretty, "pretty"),
            (reordered, "reordered"),
            (escaped, "escaped"),
        ];
        for (json, what) in cases {
            let mut record_bytes = CONSENT_TAG.to_vec();
            record_bytes.extend_from_slice(&json);
            let signature = key(1).sign(&record_bytes).to_bytes();
            let signed = SignedConsent {
                record_bytes,
                signer: agency(HOME),
                signature,
            };
            let err = signed.verify(&key(1).verifying_key()).unwrap_err();
            assert_eq!(
                err,
                SignatureError::NotCanonical {
                    kind: RecordKind::Consent
                },
                "{what}"
            );
            assert_eq!(err.to_string(), "consent encoding is not canonical");
        }

        let mut record_bytes = CONSENT_TAG.to_vec();
        record_bytes.extend_from_slice(&serde_json::to_vec(&unknown_field).unwrap());
        let signature = key(1).sign(&record_bytes).to_bytes();
        let signed = SignedConsent {
            record_bytes,
            signer: agency(HOME),
            signature,
        };
        assert!(matches!(
            signed.verify(&key(1).verifying_key()),
            Err(SignatureError::Decode { .. })
        ));
    }

    #[test]
    fn decode_errors_do_not_echo_values() {
        let mut value = serde_json::to_value(consent("c1")).unwrap();
        value["recorded_at"] = serde_json::json!("Zelda Quux");
        let mut record_bytes = CONSENT_TAG.to_vec();
        record_bytes.extend_from_slice(&serde_json::to_vec(&value).unwrap());
        let signed = SignedConsent {
            signature: key(1).sign(&record_bytes).to_bytes(),
            record_bytes,
            signer: agency(HOME),
        };
        let text = signed
            .verify(&key(1).verifying_key())
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("consent record does not decode (data error"),
            "{text}"
        );
        assert!(!text.contains("Zelda"), "{text}");
    }

    #[test]
    fn a_revocation_signature_does_not_verify_as_a_consent() {
        let rev = sign_revocation(&revocation("r1", "c1"), &agency(HOME), &key(1)).unwrap();
        let as_consent = SignedConsent {
            record_bytes: rev.record_bytes.clone(),
            signer: rev.signer.clone(),
            signature: rev.signature,
        };
        assert_eq!(
            as_consent.verify(&key(1).verifying_key()),
            Err(SignatureError::WrongDomain {
                kind: RecordKind::Consent
            })
        );
        let con = sign_consent(&consent("c1"), &agency(HOME), &key(1)).unwrap();
        let as_revocation = SignedRevocation {
            record_bytes: con.record_bytes,
            signer: con.signer,
            signature: con.signature,
        };
        assert!(as_revocation.verify(&key(1).verifying_key()).is_err());
        // The binary envelopes are not interchangeable either.
        assert!(SignedConsent::from_bytes(&rev.to_bytes()).is_err());
    }

    #[test]
    fn signing_checks_the_record_and_the_signer() {
        let mut invalid = consent("c1");
        invalid.grantor.name = String::new();
        assert!(matches!(
            sign_consent(&invalid, &agency(HOME), &key(1)),
            Err(SignatureError::InvalidConsent(_))
        ));
        let err = sign_consent(&consent("c1"), &agency(CLINIC), &key(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "consent is signed by clinic.example but was recorded by school.example"
        );
        let mut bad_rev = revocation("r1", "c1");
        bad_rev.revoked_at = crate::Timestamp(0);
        assert!(matches!(
            sign_revocation(&bad_rev, &agency(HOME), &key(1)),
            Err(SignatureError::InvalidRevocation(_))
        ));
    }

    #[test]
    fn verify_rejects_a_relabelled_signer() {
        let mut signed = sign_consent(&consent("c1"), &agency(HOME), &key(1)).unwrap();
        signed.signer = agency(CLINIC);
        assert!(matches!(
            signed.verify(&key(1).verifying_key()),
            Err(SignatureError::SignerMismatch { .. })
        ));
    }

    #[test]
    fn verify_rejects_a_signed_invalid_record() {
        let mut invalid = consent("c1");
        invalid.provisions[0].valid_until = None;
        let record_bytes = canonical_bytes(&invalid);
        let signed = SignedConsent {
            signature: key(1).sign(&record_bytes).to_bytes(),
            record_bytes,
            signer: agency(HOME),
        };
        let err = signed.verify(&key(1).verifying_key()).unwrap_err();
        assert_eq!(err.to_string(), "consent is missing: expiry of provision 1");
    }

    #[test]
    fn malformed_envelopes_are_rejected() {
        let signed = sign_consent(&consent("c1"), &agency(HOME), &key(1)).unwrap();
        let bytes = signed.to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                SignedConsent::from_bytes(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SignedConsent::from_bytes(&longer).is_err());
        let mut bad_signer = bytes.clone();
        bad_signer[5] = b'A';
        assert_eq!(
            SignedConsent::from_bytes(&bad_signer),
            Err(SignatureError::MalformedEnvelope {
                kind: RecordKind::Consent,
                reason: "signer is not a valid agency id"
            })
        );
        assert!(serde_json::from_str::<SignedConsent>(
            r#"{"record_bytes":"zz","signer":"school.example","signature":"00"}"#
        )
        .is_err());
    }
}
