//! The embedded search index: tantivy, on disk under `search.data_dir`, for a single
//! machine (chosen when no OpenSearch URL is configured).
//!
//! - Titles and clinical text are analysed with the Russian Snowball stemmer (so «болях»
//!   finds «боли»); names are lower-cased and `ё`-folded, and matched fuzzily (edit distance
//!   1 for words up to 6 letters, 2 above) or by prefix.
//! - Each entry is keyed `patient:<id>` / `document:<id>` and carries the row version; an
//!   operation not newer than the stored version is ignored. A delete leaves a tombstone
//!   (`live = 0`) with its version, so a late upsert cannot resurrect it.
//! - One batch is one commit; the reader is reloaded before `apply` returns, so what was
//!   written is searchable at once. One process owns the directory (tantivy's lock).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, QueryParser, RangeQuery, TermQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};
use uuid::Uuid;

use super::{
    Applied, IndexError, IndexOp, Kind, SearchHit, SearchIndex, SearchQuery, SearchResults, fold,
    highlight, name_distance, name_matches,
};

/// Memory the writer may buffer before it flushes a segment.
const WRITER_MEMORY: usize = 64 * 1024 * 1024;
/// Characters of a body fragment in a highlight.
const FRAGMENT_CHARS: usize = 200;

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    kind: Field,
    id: Field,
    live: Field,
    version: Field,
    name: Field,
    name_search: Field,
    birth_date: Field,
    patient_id: Field,
    author_id: Field,
    doc_type: Field,
    status: Field,
    title: Field,
    body: Field,
    created_at: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text = |tokenizer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
    };
    let fields = Fields {
        key: builder.add_text_field("key", STRING | STORED),
        kind: builder.add_text_field("kind", STRING | STORED),
        id: builder.add_text_field("id", STRING | STORED),
        live: builder.add_u64_field("live", INDEXED),
        version: builder.add_i64_field("version", STORED),
        name: builder.add_text_field("name", STORED),
        name_search: builder.add_text_field("name_search", text("ru_name")),
        birth_date: builder.add_text_field("birth_date", STORED),
        patient_id: builder.add_text_field("patient_id", STRING | STORED),
        author_id: builder.add_text_field("author_id", STRING | STORED),
        doc_type: builder.add_text_field("doc_type", STRING | STORED),
        status: builder.add_text_field("status", STRING | STORED),
        title: builder.add_text_field("title", text("ru_stem").set_stored()),
        body: builder.add_text_field("body", text("ru_stem").set_stored()),
        created_at: builder.add_date_field("created_at", INDEXED | FAST | STORED),
    };
    (builder.build(), fields)
}

fn register_analyzers(index: &Index) {
    index.tokenizers().register(
        "ru_stem",
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(60))
            .filter(LowerCaser)
            .filter(Stemmer::new(Language::Russian))
            .build(),
    );
    index.tokenizers().register(
        "ru_name",
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(60))
            .filter(LowerCaser)
            .build(),
    );
}

pub struct EmbeddedIndex {
    index: Index,
    reader: IndexReader,
    writer: Arc<Mutex<IndexWriter>>,
    fields: Fields,
}

impl EmbeddedIndex {
    /// Opens (or creates) the index in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|error| {
            anyhow::anyhow!("cannot create search.data_dir {}: {error}", dir.display())
        })?;
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(|error| {
            anyhow::anyhow!("cannot open search.data_dir {}: {error}", dir.display())
        })?;
        let index = Index::open_or_create(directory, schema).map_err(|error| {
            anyhow::anyhow!("cannot open the search index in {}: {error}", dir.display())
        })?;
        register_analyzers(&index);
        let writer = index.writer(WRITER_MEMORY).map_err(|error| {
            anyhow::anyhow!(
                "cannot write the search index in {} (is another medflow using it?): {error}",
                dir.display()
            )
        })?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            writer: Arc::new(Mutex::new(writer)),
            fields,
        })
    }

    /// Entries (live ones and tombstones) the index holds.
    pub fn entries(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn apply_blocking(&self, ops: &[IndexOp]) -> Vec<Result<Applied, IndexError>> {
        let f = self.fields;
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let searcher = self.reader.searcher();
        // Versions written by this batch (not yet visible to the searcher).
        let mut pending: HashMap<String, i64> = HashMap::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let key = op.key();
            let current = match pending.get(&key) {
                Some(version) => Some(*version),
                None => match stored_version(&searcher, f, &key) {
                    Ok(version) => version,
                    Err(error) => {
                        results.push(Err(IndexError::Transient(error.to_string())));
                        continue;
                    }
                },
            };
            let newer = match op {
                IndexOp::Delete { version, .. } => current.is_none_or(|c| *version >= c),
                _ => current.is_none_or(|c| op.version() > c),
            };
            if !newer || current == Some(i64::MAX) {
                results.push(Ok(Applied::Stale));
                continue;
            }
            let document = self.document(op, &key);
            writer.delete_term(Term::from_field_text(f.key, &key));
            match writer.add_document(document) {
                Ok(_) => {
                    pending.insert(key, op.version());
                    results.push(Ok(Applied::Written));
                }
                Err(error) => results.push(Err(IndexError::Transient(error.to_string()))),
            }
        }
        if pending.is_empty() {
            return results;
        }
        let committed = writer
            .commit()
            .and_then(|_| self.reader.reload())
            .map_err(|error| IndexError::Transient(format!("commit failed: {error}")));
        if let Err(error) = committed {
            // Nothing of this batch is durable: every written entry must be retried.
            let _ = writer.rollback();
            return results
                .into_iter()
                .map(|result| match result {
                    Ok(Applied::Written) => Err(error.clone()),
                    other => other,
                })
                .collect();
        }
        results
    }

    fn document(&self, op: &IndexOp, key: &str) -> TantivyDocument {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.key, key);
        doc.add_text(f.kind, op.kind().as_str());
        doc.add_text(f.id, op.id().to_string());
        doc.add_i64(f.version, op.version());
        match op {
            IndexOp::Patient(p) => {
                doc.add_u64(f.live, 1);
                let name = p.full_name();
                doc.add_text(f.name_search, fold(&name));
                doc.add_text(f.name, name);
                doc.add_text(f.birth_date, p.birth_date.to_string());
            }
            IndexOp::Document(d) => {
                doc.add_u64(f.live, 1);
                doc.add_text(f.patient_id, d.patient_id.to_string());
                doc.add_text(f.author_id, d.author_id.to_string());
                doc.add_text(f.doc_type, &d.doc_type);
                doc.add_text(f.status, &d.status);
                doc.add_text(f.title, &d.title);
                doc.add_text(f.body, &d.body);
                doc.add_date(
                    f.created_at,
                    tantivy::DateTime::from_timestamp_micros(d.created_at.timestamp_micros()),
                );
            }
            IndexOp::Delete { .. } => doc.add_u64(f.live, 0),
        }
        doc
    }

    fn search_blocking(&self, query: &SearchQuery) -> Result<SearchResults, IndexError> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let term = |field: Field, text: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, text),
                IndexRecordOption::Basic,
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, term(f.kind, query.kind.as_str())),
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.live, 1),
                    IndexRecordOption::Basic,
                )),
            ),
        ];
        let words: Vec<String> = fold(&query.text)
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(str::to_owned)
            .collect();
        if words.is_empty() {
            // Nothing searchable in the input (punctuation only).
            return Ok(SearchResults {
                total: 0,
                hits: Vec::new(),
            });
        }
        let text_query: Box<dyn Query> = match query.kind {
            Kind::Patient => {
                let per_word = words
                    .iter()
                    .map(|word| {
                        let term = Term::from_field_text(f.name_search, word);
                        let options: Vec<(Occur, Box<dyn Query>)> = vec![
                            (
                                Occur::Should,
                                Box::new(BoostQuery::new(
                                    Box::new(TermQuery::new(
                                        term.clone(),
                                        IndexRecordOption::WithFreqs,
                                    )),
                                    3.0,
                                )),
                            ),
                            (
                                Occur::Should,
                                Box::new(FuzzyTermQuery::new(
                                    term.clone(),
                                    name_distance(word),
                                    true,
                                )),
                            ),
                            (
                                Occur::Should,
                                Box::new(FuzzyTermQuery::new_prefix(term, 0, true)),
                            ),
                        ];
                        (
                            Occur::Must,
                            Box::new(BooleanQuery::new(options)) as Box<dyn Query>,
                        )
                    })
                    .collect();
                Box::new(BooleanQuery::new(per_word))
            }
            Kind::Document => {
                let mut parser = QueryParser::for_index(&self.index, vec![f.title, f.body]);
                parser.set_conjunction_by_default();
                parser.set_field_boost(f.title, 2.0);
                // User input never fails: operators it cannot parse are taken as words.
                parser.parse_query_lenient(&words.join(" ")).0
            }
        };
        clauses.push((Occur::Must, text_query.box_clone()));
        if query.kind == Kind::Document {
            if let Some(patient) = query.patient_id {
                clauses.push((Occur::Must, term(f.patient_id, &patient.to_string())));
            }
            if let Some(author) = query.author_id {
                clauses.push((Occur::Must, term(f.author_id, &author.to_string())));
            }
            if let Some(doc_type) = &query.doc_type {
                clauses.push((Occur::Must, term(f.doc_type, doc_type)));
            }
            // tantivy keeps dates as i64 nanoseconds (1677–2262) and refuses a range without
            // bounds. No document was created before 1970 or will be after 2200: a lower bound
            // before 1970 is no bound, an upper bound after 2200 is none either, and the others
            // are kept within the two, so any date a client sends is a query, not an overflow.
            let date = |at: DateTime<Utc>| {
                let at = at.clamp(DateTime::UNIX_EPOCH, latest_date());
                Term::from_field_date_for_search(
                    f.created_at,
                    tantivy::DateTime::from_timestamp_micros(at.timestamp_micros()),
                )
            };
            let lower = query.from.filter(|t| *t > DateTime::UNIX_EPOCH);
            let upper = query.to.filter(|t| *t < latest_date());
            if lower.is_some() || upper.is_some() {
                let lower = lower.map_or(Bound::Unbounded, |t| Bound::Included(date(t)));
                let upper = upper.map_or(Bound::Unbounded, |t| Bound::Excluded(date(t)));
                clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
            }
        }
        let full = BooleanQuery::new(clauses);
        let limit = query.limit.max(1);
        let (top, total) = searcher
            .search(
                &full,
                &(
                    TopDocs::with_limit(limit)
                        .and_offset(query.offset)
                        .order_by_score(),
                    Count,
                ),
            )
            .map_err(|error| IndexError::Transient(error.to_string()))?;
        let snippets = match query.kind {
            Kind::Document => Some((
                snippet_generator(&searcher, &*text_query, f.title)?,
                snippet_generator(&searcher, &*text_query, f.body)?,
            )),
            Kind::Patient => None,
        };
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher
                .doc(address)
                .map_err(|error| IndexError::Transient(error.to_string()))?;
            hits.push(self.hit(&doc, score, query.kind, &words, snippets.as_ref()));
        }
        Ok(SearchResults {
            total: total as u64,
            hits,
        })
    }

    fn hit(
        &self,
        doc: &TantivyDocument,
        score: f32,
        kind: Kind,
        words: &[String],
        snippets: Option<&(SnippetGenerator, SnippetGenerator)>,
    ) -> SearchHit {
        let f = self.fields;
        let text = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str().map(str::to_owned))
        };
        let uuid = |field: Field| text(field).and_then(|t| t.parse::<Uuid>().ok());
        let mut highlights = BTreeMap::new();
        let mut hit = SearchHit::new(
            kind,
            uuid(f.id).unwrap_or_default(),
            score,
            doc.get_first(f.version)
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
        );
        match kind {
            Kind::Patient => {
                let name = text(f.name).unwrap_or_default();
                let marks = name_marks(&name, words);
                if !marks.is_empty() {
                    highlights.insert("fullName".to_owned(), vec![highlight(&name, &marks)]);
                }
                hit.patient_id = Some(hit.id);
                hit.birth_date = text(f.birth_date).and_then(|t| t.parse::<NaiveDate>().ok());
                hit.full_name = Some(name);
            }
            Kind::Document => {
                if let Some((title, body)) = snippets {
                    for (name, generator) in [("title", title), ("body", body)] {
                        let snippet = generator.snippet_from_doc(doc);
                        if !snippet.highlighted().is_empty() {
                            highlights.insert(
                                name.to_owned(),
                                vec![highlight(snippet.fragment(), snippet.highlighted())],
                            );
                        }
                    }
                }
                hit.title = text(f.title);
                hit.document_type = text(f.doc_type);
                hit.status = text(f.status);
                hit.patient_id = uuid(f.patient_id);
                hit.author_id = uuid(f.author_id);
                hit.created_at = doc
                    .get_first(f.created_at)
                    .and_then(|v| v.as_datetime())
                    .and_then(|t| DateTime::from_timestamp_micros(t.into_timestamp_micros()));
            }
        }
        hit.highlights = highlights;
        hit
    }
}

/// The latest creation date a range query names (see `search`).
fn latest_date() -> DateTime<Utc> {
    DateTime::from_timestamp(7_258_118_400, 0).expect("2200-01-01 is a valid date")
}

fn snippet_generator(
    searcher: &Searcher,
    query: &dyn Query,
    field: Field,
) -> Result<SnippetGenerator, IndexError> {
    let mut generator = SnippetGenerator::create(searcher, query, field)
        .map_err(|error| IndexError::Transient(error.to_string()))?;
    generator.set_max_num_chars(FRAGMENT_CHARS);
    Ok(generator)
}

/// The byte ranges of the name's words that match a query word.
fn name_marks(name: &str, words: &[String]) -> Vec<std::ops::Range<usize>> {
    let mut marks = Vec::new();
    let mut start = None;
    for (at, c) in name.char_indices().chain([(name.len(), ' ')]) {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(at),
            (false, Some(from)) => {
                let part = &name[from..at];
                if words.iter().any(|word| name_matches(part, word)) {
                    marks.push(from..at);
                }
                start = None;
            }
            _ => {}
        }
    }
    marks
}

fn stored_version(searcher: &Searcher, f: Fields, key: &str) -> tantivy::Result<Option<i64>> {
    let query = TermQuery::new(Term::from_field_text(f.key, key), IndexRecordOption::Basic);
    let top = searcher.search(&query, &TopDocs::with_limit(1).order_by_score())?;
    let Some((_, address)) = top.first() else {
        return Ok(None);
    };
    let doc: TantivyDocument = searcher.doc(*address)?;
    Ok(doc.get_first(f.version).and_then(|v| v.as_i64()))
}

impl SearchIndex for Arc<EmbeddedIndex> {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn apply<'a>(&'a self, ops: &'a [IndexOp]) -> BoxFuture<'a, Vec<Result<Applied, IndexError>>> {
        let this = self.clone();
        let ops = ops.to_vec();
        async move {
            let count = ops.len();
            tokio::task::spawn_blocking(move || this.apply_blocking(&ops))
                .await
                .unwrap_or_else(|error| {
                    vec![
                        Err(IndexError::Transient(format!(
                            "indexing task failed: {error}"
                        )));
                        count
                    ]
                })
        }
        .boxed()
    }

    fn search<'a>(
        &'a self,
        query: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<SearchResults, IndexError>> {
        let this = self.clone();
        let query = query.clone();
        async move {
            tokio::task::spawn_blocking(move || this.search_blocking(&query))
                .await
                .map_err(|error| IndexError::Transient(format!("search task failed: {error}")))?
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{DocumentEntry, PatientEntry};

    fn patient(id: Uuid, version: i64, last: &str) -> IndexOp {
        IndexOp::Patient(PatientEntry {
            id,
            version,
            first_name: "Анна".into(),
            middle_name: Some("Сергеевна".into()),
            last_name: last.into(),
            birth_date: NaiveDate::from_ymd_opt(1985, 3, 14).unwrap(),
        })
    }

    fn query(kind: Kind, text: &str) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            kind,
            limit: 10,
            offset: 0,
            patient_id: None,
            author_id: None,
            doc_type: None,
            from: None,
            to: None,
        }
    }

    fn temp_index() -> (tempfile::TempDir, Arc<EmbeddedIndex>) {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(EmbeddedIndex::open(dir.path()).unwrap());
        (dir, index)
    }

    /// Found by schemathesis: any text a user may type is a query, never an error of the index.
    #[tokio::test]
    async fn odd_text_and_old_dates_are_queries_not_errors() {
        let (_dir, index) = temp_index();
        let texts = [
            "\u{DC314}ß\u{8F}\u{4}",
            "TO8*\u{10}!¨\u{2E91A}",
            "\u{4}",
            "ß",
            "a\u{8F}b",
            "\\",
            "title:",
            "*",
        ];
        for text in texts {
            for from in ["0197-09-01T13:01:29.1Z", "4429-04-15T15:29:32Z"] {
                for kind in [Kind::Document, Kind::Patient] {
                    let mut q = query(kind, text);
                    q.patient_id = Some(Uuid::new_v4());
                    q.from = Some(from.parse().unwrap());
                    let result = index.search(&q).await;
                    assert!(
                        result.is_ok(),
                        "{text:?} from {from} ({kind:?}): {result:?}"
                    );
                    // An empty range (to before from) finds nothing.
                    q.to = Some("2000-01-01T00:00:00Z".parse().unwrap());
                    let result = index.search(&q).await;
                    assert!(
                        result.is_ok(),
                        "{text:?} {from}..2000 ({kind:?}): {result:?}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn versions_decide_and_tombstones_stay() {
        let (_dir, index) = temp_index();
        let id = Uuid::new_v4();
        let results = index
            .apply(&[patient(id, 2, "Иванова"), patient(id, 1, "Старая")])
            .await;
        assert_eq!(results, vec![Ok(Applied::Written), Ok(Applied::Stale)]);
        let found = index
            .search(&query(Kind::Patient, "иванова"))
            .await
            .unwrap();
        assert_eq!(found.total, 1);
        assert_eq!(found.hits[0].version, 2);
        assert!(
            index
                .search(&query(Kind::Patient, "Старая"))
                .await
                .unwrap()
                .hits
                .is_empty()
        );
        let delete = IndexOp::Delete {
            kind: Kind::Patient,
            id,
            version: 3,
        };
        assert_eq!(index.apply(&[delete]).await, vec![Ok(Applied::Written)]);
        assert_eq!(
            index.apply(&[patient(id, 2, "Иванова")]).await,
            vec![Ok(Applied::Stale)],
            "a late event does not resurrect a deleted entry"
        );
        assert_eq!(
            index
                .search(&query(Kind::Patient, "иванова"))
                .await
                .unwrap()
                .total,
            0
        );
    }

    #[tokio::test]
    async fn names_match_fuzzily_and_text_by_stem() {
        let (_dir, index) = temp_index();
        let doc_id = Uuid::new_v4();
        index
            .apply(&[
                patient(Uuid::new_v4(), 1, "Иванова"),
                IndexOp::Document(DocumentEntry {
                    id: doc_id,
                    version: 1,
                    patient_id: Uuid::new_v4(),
                    author_id: Uuid::new_v4(),
                    doc_type: "consultation".into(),
                    status: "draft".into(),
                    title: "Консультация кардиолога".into(),
                    body: "Жалобы на боли в груди при нагрузке.".into(),
                    created_at: Utc::now(),
                }),
            ])
            .await;
        let names = index
            .search(&query(Kind::Patient, "Ивонова"))
            .await
            .unwrap();
        assert_eq!(names.total, 1, "one typo still finds the name");
        assert_eq!(
            names.hits[0].highlights["fullName"],
            ["<em>Иванова</em> Анна Сергеевна"]
        );
        let text = index.search(&query(Kind::Document, "болях")).await.unwrap();
        assert_eq!(text.total, 1, "another form of the word finds it");
        assert_eq!(text.hits[0].id, doc_id);
        assert!(text.hits[0].highlights["body"][0].contains("<em>боли</em>"));
        let nothing = index.search(&query(Kind::Document, "?! —")).await.unwrap();
        assert_eq!(nothing.total, 0, "input without words finds nothing");
    }
}
