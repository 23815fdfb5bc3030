//! Full-text search over patients and documents, kept in sync from the WAL (DESIGN.md,
//! "Search").
//!
//! ```text
//! medflow.public.patients ─┐                               ┌─► EmbeddedIndex (tantivy, on disk)
//! medflow.public.documents ┴─► SearchIndexer (consumer) ───┤   or
//!                               Debezium envelope → IndexOp └─► OpenSearchIndex (bulk API)
//! ```
//!
//! The [`SearchIndex`] port takes idempotent operations carrying the row's version: an
//! operation older than (or as old as) what the index holds is ignored, so a repeated or late
//! event never overwrites newer data. Deletes leave a versioned tombstone for the same
//! reason. Only committed rows reach the index: it is fed from the WAL alone.

pub mod embedded;
pub mod indexer;
pub mod opensearch;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use uuid::Uuid;

/// What a search looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Patient,
    Document,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Patient => "patient",
            Kind::Document => "document",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "patient" => Some(Kind::Patient),
            "document" => Some(Kind::Document),
            _ => None,
        }
    }
}

/// A patient as the index holds it (no identifiers beyond the id: SNILS and policy numbers
/// are not searchable).
#[derive(Debug, Clone, PartialEq)]
pub struct PatientEntry {
    pub id: Uuid,
    pub version: i64,
    pub first_name: String,
    pub middle_name: Option<String>,
    pub last_name: String,
    pub birth_date: NaiveDate,
}

impl PatientEntry {
    /// "Last First Middle", as a Russian register lists people.
    pub fn full_name(&self) -> String {
        let mut name = format!("{} {}", self.last_name, self.first_name);
        if let Some(middle) = &self.middle_name {
            name.push(' ');
            name.push_str(middle);
        }
        name
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocumentEntry {
    pub id: Uuid,
    pub version: i64,
    pub patient_id: Uuid,
    pub author_id: Uuid,
    pub doc_type: String,
    pub status: String,
    pub title: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// One idempotent change to the index.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexOp {
    Patient(PatientEntry),
    Document(DocumentEntry),
    /// Removes the entry; `version` is the row's version at deletion (archived rows), or
    /// `i64::MAX` for a row that no longer exists.
    Delete {
        kind: Kind,
        id: Uuid,
        version: i64,
    },
}

impl IndexOp {
    pub fn kind(&self) -> Kind {
        match self {
            IndexOp::Patient(_) => Kind::Patient,
            IndexOp::Document(_) => Kind::Document,
            IndexOp::Delete { kind, .. } => *kind,
        }
    }

    pub fn id(&self) -> Uuid {
        match self {
            IndexOp::Patient(p) => p.id,
            IndexOp::Document(d) => d.id,
            IndexOp::Delete { id, .. } => *id,
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            IndexOp::Patient(p) => p.version,
            IndexOp::Document(d) => d.version,
            IndexOp::Delete { version, .. } => *version,
        }
    }

    /// The entry's key in the index: `patient:<id>` or `document:<id>`.
    pub fn key(&self) -> String {
        entry_key(self.kind(), self.id())
    }
}

pub fn entry_key(kind: Kind, id: Uuid) -> String {
    format!("{}:{id}", kind.as_str())
}

/// What the index did with an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Written,
    /// The index already held this version or a newer one.
    Stale,
}

/// Why the index could not take an operation or answer a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// Overloaded or unreachable: try again later.
    Transient(String),
    /// The index refuses this operation for good (a mapping conflict, a malformed value).
    Permanent(String),
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Transient(message) => write!(f, "search index unavailable: {message}"),
            IndexError::Permanent(message) => write!(f, "search index refused: {message}"),
        }
    }
}

impl std::error::Error for IndexError {}

/// A search request, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub text: String,
    pub kind: Kind,
    pub limit: usize,
    pub offset: usize,
    /// Documents of this patient only (also how a patient's own token is confined).
    pub patient_id: Option<Uuid>,
    pub author_id: Option<Uuid>,
    pub doc_type: Option<String>,
    /// Documents created in `[from, to)`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchHit {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub id: Uuid,
    pub score: f32,
    pub version: i64,
    /// Patients: the full name and birth date; documents: title, type, status, patient,
    /// author and creation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Field name → fragments with the matched words in `<em>…</em>` (text escaped).
    pub highlights: BTreeMap<String, Vec<String>>,
}

impl SearchHit {
    /// A hit without display fields or highlights yet.
    pub fn new(kind: Kind, id: Uuid, score: f32, version: i64) -> Self {
        Self {
            kind,
            id,
            score,
            version,
            full_name: None,
            birth_date: None,
            title: None,
            document_type: None,
            status: None,
            patient_id: None,
            author_id: None,
            created_at: None,
            highlights: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResults {
    /// Matches in total (the page is `hits`).
    pub total: u64,
    pub hits: Vec<SearchHit>,
}

/// The search index port; adapters: [`embedded::EmbeddedIndex`] and
/// [`opensearch::OpenSearchIndex`].
pub trait SearchIndex: Send + Sync + 'static {
    /// Which adapter this is (`embedded`, `opensearch`), for logs and the admin view.
    fn name(&self) -> &'static str;

    /// Applies `ops` in order; one result per operation. Written entries are searchable when
    /// this returns (embedded) or after the index's refresh interval (OpenSearch).
    fn apply<'a>(&'a self, ops: &'a [IndexOp]) -> BoxFuture<'a, Vec<Result<Applied, IndexError>>>;

    fn search<'a>(
        &'a self,
        query: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<SearchResults, IndexError>>;
}

/// Escapes `text` for HTML and wraps the character ranges in `marks` in `<em>…</em>`.
pub(crate) fn highlight(text: &str, marks: &[std::ops::Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len() + marks.len() * 9);
    let mut at = 0;
    let escape = |out: &mut String, part: &str| {
        for c in part.chars() {
            match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
    };
    for mark in marks {
        if mark.start < at || mark.end > text.len() {
            continue;
        }
        escape(&mut out, &text[at..mark.start]);
        out.push_str("<em>");
        escape(&mut out, &text[mark.clone()]);
        out.push_str("</em>");
        at = mark.end;
    }
    escape(&mut out, &text[at..]);
    out
}

/// Whether a name part matches a query word: a prefix, or within a small edit distance
/// (1 for words up to 6 letters, 2 above), case- and ё-insensitively.
pub(crate) fn name_matches(part: &str, word: &str) -> bool {
    let part = fold(part);
    let word = fold(word);
    if word.is_empty() {
        return false;
    }
    part.starts_with(&word) || strsim::levenshtein(&part, &word) <= name_distance(&word) as usize
}

pub(crate) fn name_distance(word: &str) -> u8 {
    match word.chars().count() {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2,
    }
}

/// Lower case, `ё` as `е`.
pub(crate) fn fold(text: &str) -> String {
    text.to_lowercase().replace('ё', "е")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlights_escape_and_mark() {
        assert_eq!(
            highlight("a <b> Иванов", std::slice::from_ref(&(6..18))),
            "a &lt;b&gt; <em>Иванов</em>"
        );
    }

    #[test]
    fn names_match_fuzzily_and_by_prefix() {
        assert!(name_matches("Иванова", "иванов"));
        assert!(name_matches("Иванова", "Ивонова"));
        assert!(name_matches("Артём", "артем"));
        assert!(!name_matches("Петров", "Иванов"));
    }
}
