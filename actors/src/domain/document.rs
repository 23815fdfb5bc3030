//! The medical document: drafted and edited in versions, signed once, then sent to the
//! federal registry.
//!
//! ```text
//! draft ──edit (new content version)──▶ draft
//! draft ──sign──▶ signed ──sent──▶ sent ──accepted──▶ accepted
//!                                   ╰──rejected──▶ rejected ──sent (resubmit)──▶ sent
//! ```
//! A signed document is immutable: its content, author and signature never change again
//! (PostgreSQL refuses it too, by trigger); only its registry status moves on.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::appointment::wire_enum;
use super::{FieldError, ValidationErrors};

/// Clinical text is limited to 1 MiB (UTF-8 bytes).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_TITLE_CHARS: usize = 300;
const MAX_SIGNATURE_BYTES: usize = 64 * 1024;
const MAX_REASON_CHARS: usize = 2000;
const MAX_REGISTRY_ID_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentType {
    Consultation,
    Referral,
    DischargeSummary,
    SickLeave,
    Prescription,
}

wire_enum!(DocumentType {
    Consultation => "consultation",
    Referral => "referral",
    DischargeSummary => "discharge_summary",
    SickLeave => "sick_leave",
    Prescription => "prescription",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentStatus {
    Draft,
    Signed,
    Sent,
    Accepted,
    Rejected,
}

wire_enum!(DocumentStatus {
    Draft => "draft",
    Signed => "signed",
    Sent => "sent",
    Accepted => "accepted",
    Rejected => "rejected",
});

fn parse_title(raw: &str) -> Result<String, FieldError> {
    super::values::line(raw, MAX_TITLE_CHARS).map_err(|problem| match problem {
        super::values::LineProblem::Control => {
            FieldError::new("title", "must not contain control characters")
        }
        _ => FieldError::new("title", "must be 1–300 characters"),
    })
}

fn parse_body(raw: &str) -> Result<String, FieldError> {
    if raw.len() > MAX_BODY_BYTES {
        return Err(FieldError::new("body", "must be at most 1 MiB (UTF-8)"));
    }
    // Clinical text keeps its line breaks and tabs; only what PostgreSQL cannot store is out.
    if raw.contains('\0') {
        return Err(FieldError::new("body", super::NUL_REFUSED));
    }
    Ok(raw.to_owned())
}

/// A new draft as a client sent it.
#[derive(Debug, Clone)]
pub struct DocumentFields {
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub author_id: Uuid,
    pub doc_type: String,
    pub title: String,
    pub body: String,
}

/// A validated new draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDocument {
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub author_id: Uuid,
    pub doc_type: DocumentType,
    pub title: String,
    pub body: String,
}

impl NewDocument {
    pub fn parse(fields: DocumentFields) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let doc_type = errors.check(DocumentType::parse(&fields.doc_type).ok_or_else(|| {
            FieldError::new(
                "type",
                format!("must be one of {}", DocumentType::names().join(", ")),
            )
        }));
        let title = errors.check(parse_title(&fields.title));
        let body = errors.check(parse_body(&fields.body));
        match (doc_type, title, body) {
            (Some(doc_type), Some(title), Some(body)) => Ok(Self {
                patient_id: fields.patient_id,
                appointment_id: fields.appointment_id,
                author_id: fields.author_id,
                doc_type,
                title,
                body,
            }),
            _ => Err(errors),
        }
    }
}

/// An edit of a draft: the fields given replace the current ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftEdit {
    pub title: Option<String>,
    pub body: Option<String>,
}

impl DraftEdit {
    pub fn parse(title: Option<String>, body: Option<String>) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let title = errors.check_opt(title.as_deref().map(parse_title));
        let body = errors.check_opt(body.as_deref().map(parse_body));
        if title == Some(None) && body == Some(None) {
            errors.0.push(FieldError::new(
                "title",
                "give a new title, a new body or both",
            ));
        }
        match (title, body) {
            (Some(title), Some(body)) if errors.is_empty() => Ok(Self { title, body }),
            _ => Err(errors),
        }
    }
}

/// A detached signature as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInput {
    pub signer_id: Uuid,
    pub signature: Vec<u8>,
    pub certificate_thumbprint: String,
}

impl SignatureInput {
    /// Checks the shape of the submission (the cryptographic check is the verifier's).
    pub fn parse(
        signer_id: Uuid,
        signature_base64: &str,
        certificate_thumbprint: &str,
    ) -> Result<Self, ValidationErrors> {
        use base64::Engine;
        let mut errors = ValidationErrors::default();
        let signature = errors.check(
            base64::engine::general_purpose::STANDARD
                .decode(signature_base64.trim())
                .ok()
                .filter(|bytes| !bytes.is_empty() && bytes.len() <= MAX_SIGNATURE_BYTES)
                .ok_or_else(|| FieldError::new("signature", "must be base64 of 1 byte to 64 KiB")),
        );
        let thumbprint = certificate_thumbprint.trim().to_ascii_lowercase();
        let thumbprint = errors.check(
            (matches!(thumbprint.len(), 40 | 64)
                && thumbprint.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(thumbprint)
            .ok_or_else(|| {
                FieldError::new(
                    "certificateThumbprint",
                    "must be 40 or 64 hexadecimal characters",
                )
            }),
        );
        match (signature, thumbprint) {
            (Some(signature), Some(certificate_thumbprint)) => Ok(Self {
                signer_id,
                signature,
                certificate_thumbprint,
            }),
            _ => Err(errors),
        }
    }
}

/// Verifies a detached signature over a document's canonical content.
///
/// The seam for a qualified electronic signature (УКЭП, GOST R 34.10-2012 with
/// GOST R 34.11-2012 "Streebog" digests, CAdES-BES containers): an implementation parses the
/// CMS container in `signature`, checks that it signs `canonical_content` (recomputing the
/// Streebog digest — the SHA-256 `checksum` we store is our own integrity fingerprint, not the
/// signed digest), validates the certificate chain up to an accredited CA and its revocation
/// status, and checks that the certificate's thumbprint equals `certificate_thumbprint`.
/// Such a verifier typically calls a CryptoPro or OpenSSL-gost service; it is injected
/// where the store is built, so nothing else changes.
pub trait SignatureVerifier: Send + Sync + std::fmt::Debug {
    /// Returns `Err(reason)` when the signature must be refused.
    fn verify(&self, canonical_content: &[u8], signature: &SignatureInput) -> Result<(), String>;
}

/// The default verifier: the signature is present and well-formed (non-empty, within size,
/// a DER structure when it looks like one), the thumbprint well-formed. It does not prove
/// who signed.
#[derive(Debug, Clone, Copy, Default)]
pub struct WellFormedSignature;

impl SignatureVerifier for WellFormedSignature {
    fn verify(&self, _canonical_content: &[u8], signature: &SignatureInput) -> Result<(), String> {
        let bytes = &signature.signature;
        if bytes.is_empty() {
            return Err("the signature is empty".into());
        }
        // A CMS/PKCS#7 container is a DER SEQUENCE (0x30) whose length must match.
        if bytes[0] == 0x30 && bytes.len() >= 2 {
            let declared = match bytes[1] {
                len @ 0..=0x7f => Some(usize::from(len) + 2),
                0x81 if bytes.len() >= 3 => Some(usize::from(bytes[2]) + 3),
                0x82 if bytes.len() >= 4 => {
                    Some(usize::from(u16::from_be_bytes([bytes[2], bytes[3]])) + 4)
                }
                0x83 if bytes.len() >= 5 => Some(
                    ((usize::from(bytes[2]) << 16)
                        | (usize::from(bytes[3]) << 8)
                        | usize::from(bytes[4]))
                        + 5,
                ),
                _ => None,
            };
            if declared != Some(bytes.len()) {
                return Err("the signature is a malformed DER structure".into());
            }
        }
        Ok(())
    }
}

/// What signing recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRecord {
    pub signer_id: Uuid,
    pub signed_at: DateTime<Utc>,
    pub signature: Vec<u8>,
    pub certificate_thumbprint: String,
    pub checksum: [u8; 32],
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub author_id: Uuid,
    pub doc_type: DocumentType,
    pub title: String,
    pub body: Arc<str>,
    pub content_version: i32,
    pub status: DocumentStatus,
    pub signature: Option<SignatureRecord>,
    pub registry_id: Option<String>,
    pub registry_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Document {
    /// Returns the canonical serialisation that signing covers: a JSON object with exactly
    /// these keys, sorted, no insignificant whitespace, UTF-8 (RFC 8785 for these value
    /// types): `appointmentId` (UUID or null), `authorId`, `body`, `contentVersion`, `id`,
    /// `patientId`, `title`, `type`.
    pub fn canonical_content(&self) -> Vec<u8> {
        // serde_json's map is ordered by key (no `preserve_order`), and `to_vec` is compact.
        let value = json!({
            "appointmentId": self.appointment_id,
            "authorId": self.author_id,
            "body": &*self.body,
            "contentVersion": self.content_version,
            "id": self.id,
            "patientId": self.patient_id,
            "title": self.title,
            "type": self.doc_type.as_str(),
        });
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// SHA-256 of [`Document::canonical_content`].
    pub fn checksum(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_content()).into()
    }
}

/// What the registry said about a signed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOutcome {
    Sent,
    Accepted { registry_id: String },
    Rejected { reason: String },
}

impl RegistryOutcome {
    pub fn parse(
        outcome: &str,
        registry_id: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Self, ValidationErrors> {
        let error =
            |field: &str, message: &str| ValidationErrors(vec![FieldError::new(field, message)]);
        // The text the outcome needs: a one-line text of at most `max` characters.
        let required = |value: Option<&str>, max: usize, field: &str| {
            value
                .and_then(|value| super::values::line(value, max).ok())
                .ok_or_else(|| {
                    error(
                        field,
                        &format!("is required: 1–{max} characters, no control characters"),
                    )
                })
        };
        match outcome {
            "sent" => Ok(Self::Sent),
            "accepted" => Ok(Self::Accepted {
                registry_id: required(registry_id, MAX_REGISTRY_ID_CHARS, "registryId")?,
            }),
            "rejected" => Ok(Self::Rejected {
                reason: required(reason, MAX_REASON_CHARS, "reason")?,
            }),
            _ => Err(error("outcome", "must be sent, accepted or rejected")),
        }
    }

    pub fn next_status(&self, current: DocumentStatus) -> Option<DocumentStatus> {
        use DocumentStatus::*;
        match (self, current) {
            (Self::Sent, Signed | Rejected) => Some(Sent),
            (Self::Accepted { .. }, Sent) => Some(Accepted),
            (Self::Rejected { .. }, Sent) => Some(Rejected),
            _ => None,
        }
    }
}

/// A business event about a document (the outbox payload).
#[derive(Debug, Clone)]
pub enum DocumentEvent {
    Created,
    Edited { fields: Vec<&'static str> },
    Signed,
    RegistrySent,
    RegistryAccepted,
    RegistryRejected,
}

impl DocumentEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Created => "DocumentCreated",
            Self::Edited { .. } | Self::RegistrySent => "DocumentUpdated",
            Self::Signed => "DocumentSigned",
            Self::RegistryAccepted => "DocumentRegistryAccepted",
            Self::RegistryRejected => "DocumentRegistryRejected",
        }
    }

    pub fn audit_action(&self) -> &'static str {
        match self {
            Self::Created => "document.create",
            Self::Edited { .. } => "document.update",
            Self::Signed => "document.sign",
            Self::RegistrySent | Self::RegistryAccepted | Self::RegistryRejected => {
                "document.registry"
            }
        }
    }

    /// Payloads carry ids and statuses, never clinical text: consumers read the document
    /// through `contentUri`.
    pub fn payload(&self, document: &Document) -> Value {
        let content_uri = format!("/api/v1/documents/{}", document.id);
        let mut payload = json!({
            "id": document.id,
            "patientId": document.patient_id,
            "type": document.doc_type.as_str(),
            "status": document.status.as_str(),
            "contentVersion": document.content_version,
            "contentUri": content_uri,
        });
        match self {
            Self::Created => {
                payload["createdAt"] = json!(document.created_at);
                payload["authorId"] = json!(document.author_id);
                payload["appointmentId"] = json!(document.appointment_id);
            }
            Self::Edited { fields } => payload["updatedFields"] = json!(fields),
            Self::RegistrySent => payload["updatedFields"] = json!(["status"]),
            Self::Signed => {
                if let Some(signature) = &document.signature {
                    payload["signerId"] = json!(signature.signer_id);
                    payload["signedAt"] = json!(signature.signed_at);
                    payload["checksum"] = json!(hex::encode(signature.checksum));
                }
            }
            Self::RegistryAccepted => payload["registryId"] = json!(document.registry_id),
            Self::RegistryRejected => payload["reason"] = json!(document.registry_reason),
        }
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_outcomes_follow_the_lifecycle() {
        use DocumentStatus::*;
        let sent = RegistryOutcome::Sent;
        let accepted = RegistryOutcome::parse("accepted", Some("R-1"), None).unwrap();
        let rejected = RegistryOutcome::parse("rejected", None, Some("bad")).unwrap();
        assert_eq!(sent.next_status(Signed), Some(Sent));
        assert_eq!(sent.next_status(Rejected), Some(Sent), "resubmission");
        assert_eq!(sent.next_status(Draft), None);
        assert_eq!(sent.next_status(Accepted), None);
        assert_eq!(accepted.next_status(Sent), Some(Accepted));
        assert_eq!(accepted.next_status(Signed), None);
        assert_eq!(rejected.next_status(Sent), Some(Rejected));
        assert_eq!(rejected.next_status(Accepted), None);
        assert!(RegistryOutcome::parse("accepted", None, None).is_err());
    }

    #[test]
    fn well_formed_signatures_pass_and_broken_der_does_not() {
        let input = |bytes: Vec<u8>| SignatureInput {
            signer_id: Uuid::nil(),
            signature: bytes,
            certificate_thumbprint: "a".repeat(40),
        };
        let verifier = WellFormedSignature;
        assert!(
            verifier
                .verify(b"", &input(vec![0x30, 0x02, 0x05, 0x00]))
                .is_ok()
        );
        assert!(
            verifier
                .verify(b"", &input(vec![0x30, 0x05, 0x05, 0x00]))
                .is_err()
        );
        assert!(
            verifier
                .verify(b"", &input(b"raw signature bytes".to_vec()))
                .is_ok()
        );
    }
}
