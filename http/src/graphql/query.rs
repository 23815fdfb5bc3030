//! Queries: objects by id, filtered lists as Relay connections (forward pagination with
//! `first`/`after`), the nested fields of each type, and `patientCard`.

use async_graphql::connection::{Connection, Edge, query};
use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject};
use chrono::{DateTime, NaiveDate, Utc};
use medflow_actors::domain::{AppointmentStatus, DocumentStatus, DocumentType};
use medflow_actors::search::Kind;
use medflow_actors::store::{
    AppointmentFilter, AuditFilter, Direction, DoctorFilter, DocumentFilter, PatientFilter,
    PatientOrder,
};
use uuid::Uuid;

use super::loaders::{
    AppointmentsOfPatient, DoctorId, DocumentsOfAppointment, DocumentsOfPatient, PatientId,
    StoreLoader,
};
use super::{OrGql, page_size, request};
use crate::appointments::AppointmentView;
use crate::audit::AuditEntryView;
use crate::doctors::DoctorView;
use crate::documents::{DocumentSummaryView, DocumentVersionView, DocumentView};
use crate::patients::PatientView;
use crate::policy::{Action, Target};
use crate::problem::Problem;
use crate::reads;

const DEFAULT_PAGE: i64 = 20;

/// The total of a connection, over all pages.
#[derive(SimpleObject)]
pub struct Total {
    pub total_count: i64,
}

type Page<T> = Connection<usize, T, Total>;

/// A text filter (a name prefix, a specialty): the same rule as REST's
/// (`extract::text_filter`), refused naming `field`.
fn name_filter(field: &str, raw: Option<String>) -> async_graphql::Result<Option<String>> {
    raw.map(|raw| {
        crate::extract::text_filter(&raw, 100)
            .ok_or_else(|| invalid(field, "must be 1–100 characters, not only white space"))
    })
    .transpose()
}

/// Runs a forward-paginated list: `load(offset, limit)` returns the items and the total.
async fn connection<T, F, Fut>(
    ctx: &Context<'_>,
    after: Option<String>,
    first: Option<i32>,
    load: F,
) -> async_graphql::Result<Page<T>>
where
    T: async_graphql::OutputType,
    F: FnOnce(i64, i64) -> Fut,
    Fut: std::future::Future<Output = async_graphql::Result<(Vec<T>, i64)>>,
{
    let limit = page_size(ctx, first, DEFAULT_PAGE)?;
    query(
        after,
        None,
        first,
        None,
        |after: Option<usize>, _before: Option<usize>, _first, _last| async move {
            let offset = after.map_or(0, |cursor| cursor + 1);
            let (items, total) = load(offset as i64, limit).await?;
            let has_next = (offset as i64 + items.len() as i64) < total;
            let mut page = Connection::with_additional_fields(
                offset > 0,
                has_next,
                Total { total_count: total },
            );
            page.edges.extend(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(n, item)| Edge::new(offset + n, item)),
            );
            Ok::<_, async_graphql::Error>(page)
        },
    )
    .await
}

fn loader<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a DataLoader<StoreLoader>> {
    ctx.data::<DataLoader<StoreLoader>>()
}

fn store_error(
    kind: &'static str,
) -> impl Fn(medflow_actors::store::StoreError) -> async_graphql::Error {
    let problem = crate::problem::store_problem(kind);
    move |error| super::gql_error(problem(error))
}

fn invalid(field: &str, message: &str) -> async_graphql::Error {
    super::gql_error(Problem::invalid_field(field, message))
}

/// `None` for a missing object, an error otherwise.
fn found<T>(result: Result<T, Problem>) -> async_graphql::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(problem) if problem.status == 404 => Ok(None),
        Err(problem) => Err(super::gql_error(problem)),
    }
}

/// The order of a patient list (ties broken by id).
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatientOrderBy {
    /// Last name, then first name, case-insensitively.
    #[default]
    NameAsc,
    NameDesc,
    BirthDateAsc,
    BirthDateDesc,
    CreatedAtAsc,
    CreatedAtDesc,
}

impl PatientOrderBy {
    fn store(self) -> (PatientOrder, Direction) {
        match self {
            Self::NameAsc => (PatientOrder::Name, Direction::Ascending),
            Self::NameDesc => (PatientOrder::Name, Direction::Descending),
            Self::BirthDateAsc => (PatientOrder::BirthDate, Direction::Ascending),
            Self::BirthDateDesc => (PatientOrder::BirthDate, Direction::Descending),
            Self::CreatedAtAsc => (PatientOrder::CreatedAt, Direction::Ascending),
            Self::CreatedAtDesc => (PatientOrder::CreatedAt, Direction::Descending),
        }
    }
}

/// The order of a list by time (an appointment's start, a document's creation).
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq)]
pub enum TimeOrder {
    Asc,
    Desc,
}

#[derive(InputObject, Default)]
pub struct PatientFilterInput {
    /// Case-insensitive prefix of the last name.
    pub last_name_prefix: Option<String>,
    /// Born on or after.
    pub born_from: Option<NaiveDate>,
    /// Born on or before.
    pub born_to: Option<NaiveDate>,
    #[graphql(default = false)]
    pub include_archived: bool,
}

#[derive(InputObject, Default)]
pub struct DoctorFilterInput {
    pub last_name_prefix: Option<String>,
    pub specialty: Option<String>,
}

#[derive(InputObject, Default)]
pub struct AppointmentFilterInput {
    pub patient_id: Option<Uuid>,
    pub doctor_id: Option<Uuid>,
    /// `scheduled`, `in_progress`, `completed` or `cancelled`.
    pub status: Option<String>,
    /// Starting at or after.
    pub from: Option<DateTime<Utc>>,
    /// Starting before.
    pub to: Option<DateTime<Utc>>,
}

#[derive(InputObject, Default)]
pub struct DocumentFilterInput {
    pub patient_id: Option<Uuid>,
    pub author_id: Option<Uuid>,
    #[graphql(name = "type")]
    pub doc_type: Option<String>,
    pub status: Option<String>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
}

/// What a doctor's screen shows of one patient.
#[derive(SimpleObject)]
pub struct PatientCard {
    pub patient: PatientView,
    /// Appointments from now on, soonest first.
    pub upcoming_appointments: Vec<AppointmentView>,
    /// The latest documents, newest first.
    pub recent_documents: Vec<DocumentSummaryView>,
    pub appointment_count: i64,
    pub document_count: i64,
}

pub struct QueryRoot;

/// Filters of the audit log.
#[derive(InputObject, Default)]
pub struct AuditLogFilter {
    /// Entries about this object only.
    pub object_id: Option<Uuid>,
    /// Entries by this token subject only.
    pub actor_id: Option<String>,
}

/// What `search` looks for.
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq)]
pub enum SearchType {
    Patient,
    Document,
}

/// Filters of a document search.
#[derive(InputObject, Default)]
pub struct SearchFilter {
    pub patient_id: Option<Uuid>,
    pub author_id: Option<Uuid>,
    /// consultation, referral, discharge_summary, sick_leave or prescription.
    pub document_type: Option<String>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
}

/// Matched words of one field, in `<em>…</em>` (the rest HTML-escaped).
#[derive(SimpleObject)]
pub struct SearchHighlight {
    pub field: String,
    pub fragments: Vec<String>,
}

/// One search result.
#[derive(SimpleObject)]
#[graphql(name = "SearchHit")]
pub struct SearchHitGql {
    #[graphql(name = "type")]
    pub kind: SearchType,
    pub id: Uuid,
    pub score: f32,
    pub version: i64,
    pub full_name: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub title: Option<String>,
    pub document_type: Option<String>,
    pub status: Option<String>,
    pub patient_id: Option<Uuid>,
    pub author_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub highlights: Vec<SearchHighlight>,
}

/// Search results, best first.
#[derive(SimpleObject)]
#[graphql(name = "SearchResults")]
pub struct SearchResultsGql {
    pub total_count: i64,
    pub hits: Vec<SearchHitGql>,
}

#[Object]
impl QueryRoot {
    /// A patient by id (archived ones too); null when there is none.
    async fn patient(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<PatientView>> {
        let (state, caller) = request(ctx)?;
        let Some(patient) = found(crate::reads::patient(state, caller, id).await)? else {
            return Ok(None);
        };
        Ok(Some(PatientView::from(patient.as_ref())))
    }

    /// Patients ordered by last name, first name.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn patients(
        &self,
        ctx: &Context<'_>,
        filter: Option<PatientFilterInput>,
        #[graphql(default)] order_by: PatientOrderBy,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Page<PatientView>> {
        let (order, direction) = order_by.store();
        let (state, caller) = request(ctx)?;
        let filter = filter.unwrap_or_default();
        let last_name_prefix = name_filter("filter.lastNamePrefix", filter.last_name_prefix)?;
        connection(ctx, after, first, |offset, limit| async move {
            let filter = PatientFilter {
                last_name_prefix,
                birth_date: None,
                born_from: filter.born_from,
                born_to: filter.born_to,
                include_archived: filter.include_archived,
                order,
                direction,
                offset,
                limit,
            };
            let page = reads::patients(state, caller, &filter).await.gql()?;
            Ok((
                page.items.iter().map(PatientView::from).collect(),
                page.total,
            ))
        })
        .await
    }

    async fn doctor(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<DoctorView>> {
        let (_, caller) = request(ctx)?;
        caller.authorize(Action::DoctorRead, Target::Any).gql()?;
        loader(ctx)?.load_one(DoctorId(id)).await.gql()
    }

    /// Doctors ordered by last name, first name.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn doctors(
        &self,
        ctx: &Context<'_>,
        filter: Option<DoctorFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Page<DoctorView>> {
        let (state, caller) = request(ctx)?;
        let filter = filter.unwrap_or_default();
        let last_name_prefix = name_filter("filter.lastNamePrefix", filter.last_name_prefix)?;
        let specialty = name_filter("filter.specialty", filter.specialty)?;
        connection(ctx, after, first, |offset, limit| async move {
            let filter = DoctorFilter {
                last_name_prefix,
                specialty,
                offset,
                limit,
            };
            let page = reads::doctors(state, caller, &filter).await.gql()?;
            Ok((
                page.items.iter().map(DoctorView::from).collect(),
                page.total,
            ))
        })
        .await
    }

    async fn appointment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<AppointmentView>> {
        let (state, caller) = request(ctx)?;
        let Some(appointment) = found(crate::reads::appointment(state, caller, id).await)? else {
            return Ok(None);
        };
        Ok(Some(AppointmentView::from(appointment.as_ref())))
    }

    /// Appointments ordered by start time (earliest first unless `orderBy: DESC`). A
    /// `patient` token must filter by its own id.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn appointments(
        &self,
        ctx: &Context<'_>,
        filter: Option<AppointmentFilterInput>,
        #[graphql(default_with = "TimeOrder::Asc")] order_by: TimeOrder,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Page<AppointmentView>> {
        let (state, caller) = request(ctx)?;
        let filter = filter.unwrap_or_default();
        let status = match filter.status.as_deref() {
            None => None,
            Some(raw) => Some(AppointmentStatus::parse(raw).ok_or_else(|| {
                invalid(
                    "filter.status",
                    "must be scheduled, in_progress, completed or cancelled",
                )
            })?),
        };
        connection(ctx, after, first, |offset, limit| async move {
            let filter = AppointmentFilter {
                patient_id: filter.patient_id,
                doctor_id: filter.doctor_id,
                status,
                from: filter.from,
                to: filter.to,
                direction: match order_by {
                    TimeOrder::Asc => Direction::Ascending,
                    TimeOrder::Desc => Direction::Descending,
                },
                offset,
                limit,
            };
            let page = reads::appointments(state, caller, &filter).await.gql()?;
            Ok((
                page.items.iter().map(AppointmentView::from).collect(),
                page.total,
            ))
        })
        .await
    }

    /// A document with its current content.
    async fn document(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<DocumentView>> {
        let (state, caller) = request(ctx)?;
        let Some(document) = found(crate::reads::document(state, caller, id).await)? else {
            return Ok(None);
        };
        Ok(Some(DocumentView::from(document.as_ref())))
    }

    /// Documents (without bodies), newest first unless `orderBy: ASC`. A `patient` token
    /// must filter by its own id.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn documents(
        &self,
        ctx: &Context<'_>,
        filter: Option<DocumentFilterInput>,
        #[graphql(default_with = "TimeOrder::Desc")] order_by: TimeOrder,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Page<DocumentSummaryView>> {
        let (state, caller) = request(ctx)?;
        let filter = filter.unwrap_or_default();
        let doc_type = match filter.doc_type.as_deref() {
            None => None,
            Some(raw) => Some(DocumentType::parse(raw).ok_or_else(|| {
                invalid(
                    "filter.type",
                    &format!("must be one of {}", DocumentType::names().join(", ")),
                )
            })?),
        };
        let status = match filter.status.as_deref() {
            None => None,
            Some(raw) => Some(DocumentStatus::parse(raw).ok_or_else(|| {
                invalid(
                    "filter.status",
                    "must be draft, signed, sent, accepted or rejected",
                )
            })?),
        };
        connection(ctx, after, first, |offset, limit| async move {
            let filter = DocumentFilter {
                patient_id: filter.patient_id,
                author_id: filter.author_id,
                doc_type,
                status,
                from: filter.from,
                to: filter.to,
                oldest_first: order_by == TimeOrder::Asc,
                offset,
                limit,
            };
            let page = reads::documents(state, caller, &filter).await.gql()?;
            Ok((
                page.items.iter().map(DocumentSummaryView::from).collect(),
                page.total,
            ))
        })
        .await
    }

    /// Full-text search over documents (Russian stemming, highlights) or fuzzy search over
    /// patient names, from the search index; the same permissions as REST's
    /// `GET /api/v1/search` (a `patient` token finds only their own documents).
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn search(
        &self,
        ctx: &Context<'_>,
        q: String,
        #[graphql(name = "type")] kind: SearchType,
        filter: Option<SearchFilter>,
        first: Option<i32>,
        #[graphql(default = 0)] offset: i32,
    ) -> async_graphql::Result<SearchResultsGql> {
        let (state, caller) = request(ctx)?;
        let limit = page_size(ctx, first, DEFAULT_PAGE)?;
        let filter = filter.unwrap_or_default();
        let results = crate::search::run_search(
            state,
            caller,
            crate::search::SearchRequest {
                text: q,
                kind: match kind {
                    SearchType::Patient => Kind::Patient,
                    SearchType::Document => Kind::Document,
                },
                limit,
                offset: i64::from(offset),
                patient_id: filter.patient_id,
                author_id: filter.author_id,
                doc_type: filter.document_type,
                from: filter.from,
                to: filter.to,
            },
        )
        .await
        .gql()?;
        Ok(SearchResultsGql {
            total_count: results.total as i64,
            hits: results
                .hits
                .into_iter()
                .map(|hit| SearchHitGql {
                    kind,
                    id: hit.id,
                    score: hit.score,
                    version: hit.version,
                    full_name: hit.full_name,
                    birth_date: hit.birth_date,
                    title: hit.title,
                    document_type: hit.document_type,
                    status: hit.status,
                    patient_id: hit.patient_id,
                    author_id: hit.author_id,
                    created_at: hit.created_at,
                    highlights: hit
                        .highlights
                        .into_iter()
                        .map(|(field, fragments)| SearchHighlight { field, fragments })
                        .collect(),
                })
                .collect(),
        })
    }

    /// The audit log, newest first (admin): who did what to which object, when, from where,
    /// with each entry's content hash and its place in the sealed Merkle tree.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        after: Option<String>,
        first: Option<i32>,
    ) -> async_graphql::Result<Page<AuditEntryView>> {
        let (state, caller) = request(ctx)?;
        caller.authorize(Action::AuditList, Target::Any).gql()?;
        let filter = filter.unwrap_or_default();
        if filter
            .actor_id
            .as_ref()
            .is_some_and(|actor| actor.is_empty() || actor.len() > 128)
        {
            return Err(Problem::invalid_field(
                "actorId",
                "must be 1–128 characters",
            ))
            .gql();
        }
        connection(ctx, after, first, |offset, limit| async move {
            let page = state
                .store
                .list_audit(&AuditFilter {
                    object_id: filter.object_id,
                    actor_id: filter.actor_id,
                    offset,
                    limit,
                })
                .await
                .map_err(store_error("audit entry"))?;
            Ok((
                page.items.into_iter().map(AuditEntryView::from).collect(),
                page.total,
            ))
        })
        .await
    }

    /// One patient as a doctor's screen shows them: the record, upcoming appointments and
    /// the latest documents, with counts.
    async fn patient_card(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<PatientCard>> {
        let (_, caller) = request(ctx)?;
        caller
            .authorize(Action::PatientRead, Target::Patient(id))
            .gql()?;
        caller
            .authorize(Action::AppointmentList, Target::Patient(id))
            .gql()?;
        caller
            .authorize(Action::DocumentList, Target::Patient(id))
            .gql()?;
        let loader = loader(ctx)?;
        let Some(patient) = loader.load_one(PatientId(id)).await.gql()? else {
            return Ok(None);
        };
        let appointments = loader
            .load_one(AppointmentsOfPatient(id))
            .await
            .gql()?
            .unwrap_or_default();
        let documents = loader
            .load_one(DocumentsOfPatient(id))
            .await
            .gql()?
            .unwrap_or_default();
        let now = Utc::now();
        let mut upcoming: Vec<AppointmentView> = appointments
            .iter()
            .filter(|a| a.starts_at >= now && a.status == AppointmentStatus::Scheduled.as_str())
            .cloned()
            .collect();
        upcoming.sort_by_key(|a| a.starts_at);
        Ok(Some(PatientCard {
            patient,
            upcoming_appointments: upcoming,
            appointment_count: appointments.len() as i64,
            document_count: documents.len() as i64,
            recent_documents: documents.into_iter().take(10).collect(),
        }))
    }
}

#[ComplexObject]
impl PatientView {
    /// The patient's appointments, newest first (at most 100); `null` with an error when
    /// the caller may not list them (the rest of the answer stands).
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn appointments(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> async_graphql::Result<Option<Vec<AppointmentView>>> {
        let (_, caller) = request(ctx)?;
        caller
            .authorize(Action::AppointmentList, Target::Patient(self.id))
            .gql()?;
        let first = page_size(ctx, first, DEFAULT_PAGE)? as usize;
        let mut list = loader(ctx)?
            .load_one(AppointmentsOfPatient(self.id))
            .await
            .gql()?
            .unwrap_or_default();
        list.truncate(first);
        Ok(Some(list))
    }

    /// The patient's documents (without bodies), newest first (at most 100); `null` with
    /// an error when the caller may not list them.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn documents(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> async_graphql::Result<Option<Vec<DocumentSummaryView>>> {
        let (_, caller) = request(ctx)?;
        caller
            .authorize(Action::DocumentList, Target::Patient(self.id))
            .gql()?;
        let first = page_size(ctx, first, DEFAULT_PAGE)? as usize;
        let mut list = loader(ctx)?
            .load_one(DocumentsOfPatient(self.id))
            .await
            .gql()?
            .unwrap_or_default();
        list.truncate(first);
        Ok(Some(list))
    }
}

#[ComplexObject]
impl AppointmentView {
    async fn patient(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<PatientView>> {
        let (_, caller) = request(ctx)?;
        caller
            .authorize(Action::PatientRead, Target::Patient(self.patient_id))
            .gql()?;
        loader(ctx)?
            .load_one(PatientId(self.patient_id))
            .await
            .gql()
    }

    async fn doctor(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<DoctorView>> {
        let (_, caller) = request(ctx)?;
        caller.authorize(Action::DoctorRead, Target::Any).gql()?;
        loader(ctx)?.load_one(DoctorId(self.doctor_id)).await.gql()
    }

    /// Documents written for this appointment, newest first; `null` with an error when the
    /// caller may not list them (a registrar, say: the rest of the answer stands).
    async fn documents(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<Vec<DocumentSummaryView>>> {
        let (_, caller) = request(ctx)?;
        caller
            .authorize(Action::DocumentList, Target::Patient(self.patient_id))
            .gql()?;
        Ok(Some(
            loader(ctx)?
                .load_one(DocumentsOfAppointment(self.id))
                .await
                .gql()?
                .unwrap_or_default(),
        ))
    }
}

async fn author(ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Option<DoctorView>> {
    let (_, caller) = request(ctx)?;
    caller.authorize(Action::DoctorRead, Target::Any).gql()?;
    loader(ctx)?.load_one(DoctorId(id)).await.gql()
}

async fn owner(ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Option<PatientView>> {
    let (_, caller) = request(ctx)?;
    caller
        .authorize(Action::PatientRead, Target::Patient(id))
        .gql()?;
    loader(ctx)?.load_one(PatientId(id)).await.gql()
}

#[ComplexObject]
impl DocumentView {
    async fn author(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<DoctorView>> {
        author(ctx, self.author_id).await
    }

    /// Every content version, oldest first (titles and sizes; read a version's body through
    /// REST `…/versions/{n}`).
    async fn versions(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<Vec<DocumentVersionView>>> {
        let (state, caller) = request(ctx)?;
        let versions = reads::document_versions(state, caller, self.id)
            .await
            .gql()?;
        Ok(Some(
            versions
                .into_iter()
                .map(DocumentVersionView::from)
                .collect(),
        ))
    }

    async fn patient(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<PatientView>> {
        owner(ctx, self.patient_id).await
    }
}

#[ComplexObject]
impl DocumentSummaryView {
    async fn author(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<DoctorView>> {
        author(ctx, self.author_id).await
    }

    async fn patient(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<PatientView>> {
        owner(ctx, self.patient_id).await
    }
}

#[ComplexObject]
impl AuditEntryView {
    /// What else the entry records (e.g. the version written), as JSON.
    async fn details(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(self.details.clone())
    }
}
