//! RFC 7807 problem details: the one body every error answer has, and the one mapping from
//! error kinds to HTTP statuses.

use std::time::Duration;

use medflow_actors::Error;
use medflow_actors::domain::{FieldError, ValidationErrors};
use serde::Serialize;
use utoipa::ToSchema;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Maps a store failure reading a `kind` of entity to its problem (for `map_err`).
pub(crate) fn store_problem(
    kind: &'static str,
) -> impl Fn(medflow_actors::store::StoreError) -> Problem {
    move |error| Problem::from(Error::from_store(kind, error))
}

/// An error answer (`application/problem+json`, RFC 7807).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URN naming the problem type, e.g. `urn:medflow:problem:validation-error`.
    #[serde(rename = "type", serialize_with = "problem_urn")]
    #[schema(value_type = String, example = "urn:medflow:problem:validation-error")]
    pub slug: &'static str,
    #[schema(value_type = String)]
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The offending fields, by their wire names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<ProblemField>)]
    pub errors: Vec<FieldError>,
    /// The entity's current version, on 409 and 412 answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// The entity's current status, when a lifecycle transition was refused (409).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub current_status: Option<&'static str>,
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// The `WWW-Authenticate` challenge of a 401 answer.
    #[serde(skip)]
    pub challenge: Option<Challenge>,
}

/// The RFC 6750 challenge of a 401 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No token was sent.
    Bearer,
    /// A token was sent and failed a check.
    InvalidToken,
}

impl Challenge {
    fn header_value(self) -> &'static str {
        match self {
            Challenge::Bearer => r#"Bearer realm="medflow""#,
            Challenge::InvalidToken => r#"Bearer realm="medflow", error="invalid_token""#,
        }
    }
}

/// One offending field of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemField {
    /// The field's wire name (`birthDate`, `If-Match`, `limit`).
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str) -> Self {
        Self {
            slug,
            title,
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            current_version: None,
            current_status: None,
            retry_after: None,
            challenge: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.errors.push(FieldError::new(field, message));
        self
    }

    /// A request that cannot be accepted as sent: malformed, mistyped or invalid fields.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation-error",
            "The request is invalid",
        )
        .detail(detail)
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self::bad_request(format!("{field}: {message}")).field(field, message)
    }

    pub fn validation(errors: ValidationErrors) -> Self {
        let mut problem = Self::bad_request(errors.to_string());
        problem.errors = errors.0;
        problem
    }

    pub fn not_found(kind: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found")
            .detail(format!("no {kind} with this id"))
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "Internal error",
        )
        .detail("the server failed to handle the request; it was logged with the request id")
    }

    /// 401: no usable bearer token. The body and the RFC 6750 challenge say only whether a
    /// token was missing or invalid, never which check failed.
    pub fn unauthenticated(token_present: bool) -> Self {
        let mut problem = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication required",
        );
        if token_present {
            problem.detail = Some("the bearer token is invalid or expired".into());
            problem.challenge = Some(Challenge::InvalidToken);
        } else {
            problem.detail = Some("send an `Authorization: Bearer <token>` header".into());
            problem.challenge = Some(Challenge::Bearer);
        }
        problem
    }

    /// 403: authenticated, but the caller's roles do not allow `operation`.
    pub fn forbidden(operation: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .detail(format!("your roles do not allow you to {operation}"))
    }

    /// 429: the caller's request budget is spent; retry after `wait`.
    pub fn too_many_requests(wait: Duration) -> Self {
        let mut problem = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-requests",
            "Too many requests",
        )
        .detail("the request rate limit was exceeded; retry after the indicated delay");
        problem.retry_after = Some(wait);
        problem
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(body.into());
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(retry_after) = self.retry_after {
            let seconds = retry_after.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge.header_value()),
            );
        }
        response
    }
}

fn problem_urn<S: serde::Serializer>(
    slug: &&'static str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("urn:medflow:problem:{slug}"))
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(errors) => Self::validation(errors),
            Error::NotFound { kind } => Self::not_found(kind),
            Error::PreconditionFailed { expected, current } => {
                let mut problem = Self::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition-failed",
                    "Version mismatch",
                )
                .detail(format!(
                    "If-Match names version {expected}, the current version is {current}"
                ));
                problem.current_version = Some(current);
                problem
            }
            Error::ModifiedConcurrently { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", "Conflict").detail(error.to_string())
            }
            Error::Conflict {
                message,
                current_version,
            } => {
                let mut problem =
                    Self::new(StatusCode::CONFLICT, "conflict", "Conflict").detail(message);
                problem.current_version = current_version;
                problem
            }
            Error::Unprocessable { field, message } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "The request cannot be processed",
            )
            .detail(format!("{field}: {message}"))
            .field(field, message),
            Error::InvalidTransition {
                message,
                current_status,
                current_version,
            } => {
                let mut problem = Self::new(
                    StatusCode::CONFLICT,
                    "invalid-transition",
                    "Not allowed in the current status",
                )
                .detail(message);
                problem.current_status = Some(current_status);
                problem.current_version = Some(current_version);
                problem
            }
            Error::Duplicate { field } => Self::new(StatusCode::CONFLICT, "duplicate", "Duplicate")
                .detail(format!("a record with this {field} already exists"))
                .field(field, "already exists"),
            Error::Unavailable {
                message,
                retry_after,
            } => {
                tracing::warn!(reason = %message, "answering 503");
                let mut problem = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Temporarily unavailable",
                )
                .detail("a dependency is unavailable; retry later");
                problem.retry_after = Some(retry_after.unwrap_or(Duration::from_secs(1)));
                problem
            }
            Error::OutcomeUnknown(message) => {
                tracing::warn!(reason = %message, "write outcome unknown");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "outcome-unknown", "Outcome unknown")
                    .detail("the request was interrupted; read the resource to learn whether it was applied")
            }
            Error::Internal(message) => {
                tracing::error!(reason = %message, "internal error");
                Self::internal()
            }
        }
    }
}
