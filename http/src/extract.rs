//! Turning raw requests into typed values, with a problem naming the offending part when
//! that fails: JSON bodies, `If-Match`, path ids, query strings and the request's context.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use medflow_actors::RequestContext;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use warp::http::{HeaderMap, StatusCode, header};
use warp::{Filter, Rejection};

use crate::problem::Problem;

/// What the server wrapper learned about a request before routing: its id and peer.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    pub client_addr: Option<SocketAddr>,
    /// The traceparent naming the request's span (a child of the client's, or a new trace).
    pub traceparent: Option<String>,
}

const MAX_HEADER_ID_LEN: usize = 128;

/// Builds the request's context for `actor_id`: request id and peer (from the server
/// wrapper) and the W3C trace parent.
pub fn request_context(
    meta: Option<RequestMeta>,
    headers: &HeaderMap,
    actor_id: String,
) -> RequestContext {
    let meta = meta.unwrap_or_else(|| RequestMeta {
        request_id: Uuid::new_v4().to_string(),
        client_addr: None,
        traceparent: None,
    });
    // The request span's own traceparent; without tracing installed, the client's.
    let traceparent = meta.traceparent.clone().or_else(|| {
        headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .filter(|value| is_traceparent(value))
            .map(str::to_owned)
    });
    RequestContext {
        actor_id,
        request_id: meta.request_id,
        client_addr: meta.client_addr.map(|addr| addr.ip().to_string()),
        traceparent,
    }
}

/// Returns a header's value if it is a short token of visible ASCII.
pub fn header_token(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    let acceptable = !value.is_empty()
        && value.len() <= MAX_HEADER_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    acceptable.then(|| value.to_owned())
}

/// `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let lengths_ok = parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len);
    lengths_ok
        && parts
            .iter()
            .all(|part| part.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses a path segment as an id, or answers 400 naming it.
pub fn parse_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::invalid_field("id", "must be a UUID"))
}

/// A text filter of a query (a name prefix, a specialty, search words): at most `max_chars`
/// characters as sent, something besides white space; used trimmed. NUL is refused for every
/// parameter by [`Query::parse`]. `contract::filter` states the same rule in the document.
pub fn text_filter(raw: &str, max_chars: usize) -> Option<String> {
    let trimmed = raw.trim();
    (!trimmed.is_empty() && raw.chars().count() <= max_chars).then(|| trimmed.to_owned())
}

/// The largest `offset` of a list (the OpenAPI document's `maximum`).
pub const MAX_OFFSET: i64 = 1_000_000_000;

/// Parses `If-Match`: `None` when absent or `*`, else the version in the entity tag.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || {
        Problem::invalid_field(
            "If-Match",
            "must be an entity tag from an ETag header, such as \"3\"",
        )
    };
    let value = value.to_str().map_err(|_| invalid())?.trim();
    if value == "*" {
        return Ok(None);
    }
    parse_etag(value).map(Some).ok_or_else(invalid)
}

/// Returns whether `If-None-Match` names `version` (or is `*`).
pub fn if_none_match_hits(headers: &HeaderMap, version: i64) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || parse_etag(tag) == Some(version))
}

/// What `If-Match` may carry: `*` or a tag [`parse_etag`] reads (the OpenAPI document gives
/// every `If-Match` parameter this pattern).
pub const IF_MATCH_PATTERN: &str = r#"^(\*|(W/)?"[1-9][0-9]{0,17}")$"#;

/// A version tag as medflow writes it: `"<version>"` (optionally weak, `W/`), the version
/// in decimal digits without a leading zero, at most 18 of them ([`IF_MATCH_PATTERN`]).
fn parse_etag(tag: &str) -> Option<i64> {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let digits = tag.strip_prefix('"')?.strip_suffix('"')?;
    let well_formed = (1..=18).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| digits.parse::<i64>().ok()).flatten()
}

/// The `ETag` of an entity at `version`.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// Parses a JSON body into `T`, or answers 415 (not JSON), or 400 naming the malformed part
/// or the offending field (wrong type, unknown, missing).
pub fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json"))
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail(format!(
            "the body must be application/json, not {:?}",
            content_type
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::bad_request("the request body is empty"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(json_problem)?;
    deserializer
        .end()
        .map_err(|error| Problem::bad_request(format!("malformed JSON: {error}")))?;
    // JSON can carry U+0000 only escaped; the exact search runs only when the escape is there.
    if holds_nul_escape(body)
        && let Ok(document) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(path) = nul_path(&document)
    {
        return Err(Problem::invalid_field(
            path,
            medflow_actors::domain::NUL_REFUSED,
        ));
    }
    Ok(value)
}

/// Whether `body` holds the JSON escape of U+0000 (or an escaped backslash before `u0000`,
/// which the exact search then tells apart).
fn holds_nul_escape(body: &[u8]) -> bool {
    body.windows(6).any(|window| window == b"\\u0000")
}

/// The path (as `a.b[2].c`, the form field errors use) of the first string or key in
/// `value` that holds U+0000.
pub fn nul_path(value: &serde_json::Value) -> Option<String> {
    fn walk(value: &serde_json::Value, path: &mut String) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(index, item)| {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            serde_json::Value::Object(fields) => fields.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.replace('\0', "\\u0000"));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then(|| {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path
        }
    })
}

fn json_problem(error: serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if !inner.is_data() {
        return Problem::bad_request(format!("malformed JSON: {inner}"));
    }
    let message = strip_position(&inner.to_string());
    // Unknown and missing fields are reported at the enclosing object; name the field itself.
    let named = backticked(&message)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"));
    // serde_path_to_error places an unknown field at its own path, a missing one at its
    // parent's.
    let field = match (named, path.as_str()) {
        (_, ".") => named.unwrap_or("body").to_owned(),
        (Some(name), parent) if message.starts_with("missing field") => format!("{parent}.{name}"),
        (_, path) => path.to_owned(),
    };
    Problem::invalid_field(field, message)
}

/// Drops serde_json's " at line L column C" suffix.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Reads the request body up to `limit` bytes. A larger body — announced by
/// `Content-Length` or discovered while streaming a chunked one — is a 413 problem; a body
/// without a length is read like any other (warp's own limit would answer 411).
pub fn body(
    limit: u64,
) -> impl Filter<Extract = (Result<Bytes, Problem>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |length, stream| collect_body(limit, length, stream))
}

async fn collect_body<B: Buf>(
    limit: u64,
    length: Option<u64>,
    stream: impl futures::Stream<Item = Result<B, warp::Error>>,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
        )
        .detail(format!("the request body exceeds {limit} bytes"))
    };
    if length.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut stream = std::pin::pin!(stream);
    let mut collected = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|error| {
            Problem::bad_request(format!("the request body could not be read: {error}"))
        })?;
        if collected.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let len = part.len();
            collected.extend_from_slice(part);
            chunk.advance(len);
        }
    }
    Ok(collected.freeze())
}

/// Query parameters of a list: known keys only, each once.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: &str, known: &[&str]) -> Result<Self, Problem> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|_| Problem::bad_request("the query string is malformed"))?;
        for (index, (key, _)) in pairs.iter().enumerate() {
            if !known.contains(&key.as_str()) {
                return Err(Problem::invalid_field(
                    key.clone(),
                    format!("unknown query parameter; known: {}", known.join(", ")),
                ));
            }
            if pairs[..index].iter().any(|(earlier, _)| earlier == key) {
                return Err(Problem::invalid_field(key.clone(), "given more than once"));
            }
            if pairs[index].1.contains('\0') {
                return Err(Problem::invalid_field(
                    key.clone(),
                    medflow_actors::domain::NUL_REFUSED,
                ));
            }
        }
        Ok(Self(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parses `key` with `parse`, answering 400 with `expected` if it fails.
    pub fn parsed<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, Problem> {
        self.get(key)
            .map(|raw| parse(raw).ok_or_else(|| Problem::invalid_field(key, expected)))
            .transpose()
    }

    /// An optional UUID parameter, or 400 naming it.
    pub fn uuid(&self, key: &str) -> Result<Option<Uuid>, Problem> {
        self.parsed(key, "must be a UUID", |raw| Uuid::parse_str(raw).ok())
    }

    /// An optional RFC 3339 time parameter, or 400 naming it.
    pub fn time(&self, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
        self.parsed(key, "must be an RFC 3339 time", |raw| {
            chrono::DateTime::parse_from_rfc3339(raw)
                .ok()
                .map(|time| time.to_utc())
        })
    }

    /// `offset` (≥ 0, default 0) and `limit` (1–`max`, default `default`).
    pub fn pagination(&self, default: i64, max: i64) -> Result<(i64, i64), Problem> {
        let offset = self.parsed("offset", "must be an integer from 0 to 1000000000", |raw| {
            raw.parse::<i64>()
                .ok()
                .filter(|v| (0..=MAX_OFFSET).contains(v))
        })?;
        let limit = self.parsed(
            "limit",
            &format!("must be an integer from 1 to {max}"),
            |raw| raw.parse::<i64>().ok().filter(|v| (1..=max).contains(v)),
        )?;
        Ok((offset.unwrap_or(0), limit.unwrap_or(default)))
    }
}

/// An integer as JSON Schema reads one: `30` or `30.0` (a number whose fraction is zero).
pub fn whole_number<'de, D>(deserializer: D) -> Result<i64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let number = <serde_json::Number as serde::Deserialize>::deserialize(deserializer)?;
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|value| value.fract() == 0.0 && value.abs() < 9.0e15)
                .map(|value| value as i64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a whole number")))
}

/// [`whole_number`] for an optional field (with `#[serde(default)]`).
pub fn optional_whole_number<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] i64);
    Ok(<Option<Whole> as serde::Deserialize>::deserialize(deserializer)?.map(|Whole(n)| n))
}

/// Accepts `null` as an explicit value: `Some(None)` for null, `Some(Some(v))` for a value;
/// with `#[serde(default)]` an absent field stays `None`. This is JSON merge patch.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Sample {
        #[allow(dead_code)]
        first_name: String,
        #[allow(dead_code)]
        birth_date: chrono::NaiveDate,
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    fn field_of(body: &str) -> (u16, Vec<String>) {
        let problem =
            json_body::<Sample>(&headers("application/json"), &Bytes::from(body.to_owned()))
                .unwrap_err();
        (
            problem.status,
            problem.errors.into_iter().map(|e| e.field).collect(),
        )
    }

    #[test]
    fn body_errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"firstName": 1, "birthDate": "2000-01-01"}"#),
            (400, vec!["firstName".into()])
        );
        assert_eq!(
            field_of(r#"{"firstName": "a", "birthDate": "2000-13-01"}"#),
            (400, vec!["birthDate".into()])
        );
        assert_eq!(
            field_of(r#"{"firstName": "a", "birthDate": "2000-01-01", "x": 1}"#),
            (400, vec!["x".into()])
        );
        assert_eq!(
            field_of(r#"{"birthDate": "2000-01-01"}"#),
            (400, vec!["firstName".into()])
        );
        assert_eq!(field_of(r#"{"firstName": "a""#), (400, vec![]));
    }

    #[test]
    fn non_json_is_415() {
        let problem =
            json_body::<Sample>(&headers("text/plain"), &Bytes::from_static(b"{}")).unwrap_err();
        assert_eq!(problem.status, 415);
    }

    #[test]
    fn etags_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, etag(7).parse().unwrap());
        assert_eq!(if_match(&headers).unwrap(), Some(7));
        headers.insert(header::IF_MATCH, "W/\"7\"".parse().unwrap());
        assert_eq!(if_match(&headers).unwrap(), Some(7));
        headers.insert(header::IF_MATCH, "*".parse().unwrap());
        assert_eq!(if_match(&headers).unwrap(), None);
        headers.insert(header::IF_MATCH, "7".parse().unwrap());
        assert_eq!(if_match(&headers).unwrap_err().status, 400);
    }

    #[test]
    fn queries_refuse_unknown_and_repeated_keys() {
        assert!(Query::parse("limit=5&offset=0", &["limit", "offset"]).is_ok());
        assert_eq!(
            Query::parse("limt=5", &["limit"]).err().unwrap().errors[0].field,
            "limt"
        );
        assert_eq!(
            Query::parse("limit=5&limit=6", &["limit"])
                .err()
                .unwrap()
                .errors[0]
                .field,
            "limit"
        );
        let query = Query::parse("limit=101", &["limit", "offset"]).unwrap();
        assert_eq!(
            query.pagination(20, 100).unwrap_err().errors[0].field,
            "limit"
        );
    }

    #[test]
    fn traceparent_format_is_checked() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent("00-xyz-00f067aa0ba902b7-01"));
    }
}
