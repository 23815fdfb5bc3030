//! The OpenAPI 3 document, generated from the handlers' annotations, and Swagger UI.

use std::sync::Arc;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::Config;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::path::{FullPath, Tail};
use warp::reply::Response;

use crate::{admin, appointments, audit, doctors, documents, json_reply, patients, search};

pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "medflow",
        description = "Patients, doctors, appointments and medical documents of a clinic. \
            Errors are RFC 7807 `application/problem+json`; writes are versioned (`ETag` / `If-Match`).",
        license(name = "Apache-2.0")
    ),
    paths(
        patients::list_patients, patients::create_patient, patients::get_patient,
        patients::replace_patient, patients::patch_patient, patients::archive_patient,
        doctors::list_doctors, doctors::create_doctor, doctors::get_doctor, doctors::replace_doctor,
        appointments::list_appointments, appointments::create_appointment,
        appointments::get_appointment, appointments::start_appointment,
        appointments::complete_appointment, appointments::cancel_appointment,
        appointments::reschedule_appointment,
        documents::list_documents, documents::create_document, documents::get_document,
        documents::edit_document, documents::list_document_versions,
        documents::get_document_version, documents::sign_document,
        documents::record_registry_outcome,
        audit::list_audit, admin::verify_audit, admin::inclusion_proof, admin::cdc_status,
        search::search, admin::list_consumers, admin::replay_dlq,
    ),
    modifiers(&BearerAuth, &CreatedLinks, &IfMatchPattern),
    security(("bearer" = [])),
    tags(
        (name = "patients", description = "Patients' personal data; archived, never deleted"),
        (name = "doctors", description = "Doctors"),
        (name = "appointments", description = "Appointments and their lifecycle; a doctor is never double-booked"),
        (name = "documents", description = "Medical documents: drafts in versions, signing, registry outcomes"),
        (name = "audit", description = "The hash-chained audit log and operations (admin only)"),
        (name = "search", description = "Full-text search over documents, fuzzy search over patient names"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme and the answers every `/api/v1` operation may give
/// before its handler runs: 401 (no valid token), 403 (roles do not allow it), 429 (rate
/// limit).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (RS256/ES256 from the identity provider, HS256 in development) \
                         with `sub`, `iss`, `aud`, `exp` and the roles claim",
                    ))
                    .build(),
            ),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".into(),
                    problem("No valid bearer token (`WWW-Authenticate` says why, per RFC 6750)")
                        .into(),
                );
                responses.insert(
                    "403".into(),
                    problem("The caller's roles do not allow this operation").into(),
                );
                responses.insert(
                    "429".into(),
                    problem("Rate limit exceeded; `Retry-After` says when to retry").into(),
                );
            }
        }
    }
}

/// OpenAPI links from each creating operation (`POST` on a collection, answering 201) to every
/// operation on the created resource (`{collection}/{id}` and below) that needs no other
/// path parameter: `id` from the response body, `If-Match` from its `ETag`. A generated
/// client (and schemathesis' stateful run) follows them.
struct CreatedLinks;

impl Modify for CreatedLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut targets: Vec<(String, String, bool)> = Vec::new();
        for (path, item) in &openapi.paths.paths {
            let Some((collection, rest)) = path.split_once("/{id}") else {
                continue;
            };
            if rest.contains('{') {
                continue;
            }
            for operation in operations(item) {
                let Some(operation_id) = &operation.operation_id else {
                    continue;
                };
                let takes_if_match = operation.parameters.iter().flatten().any(|parameter| {
                    parameter.name == "If-Match"
                        && parameter.parameter_in == utoipa::openapi::path::ParameterIn::Header
                });
                targets.push((collection.to_owned(), operation_id.clone(), takes_if_match));
            }
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let Some(create) = item.post.as_mut() else {
                continue;
            };
            let Some(RefOr::T(created)) = create.responses.responses.get_mut("201") else {
                continue;
            };
            for (_, operation_id, takes_if_match) in
                targets.iter().filter(|(collection, ..)| collection == path)
            {
                let mut link = utoipa::openapi::link::LinkBuilder::new()
                    .operation_id(operation_id.as_str())
                    .parameter("id", "$response.body#/id");
                if *takes_if_match {
                    link = link.parameter("header.If-Match", "$response.header.ETag");
                }
                created
                    .links
                    .insert(operation_id.clone(), link.build().into());
            }
        }
    }
}

/// Every `If-Match` header parameter: an optional string of [`crate::extract::IF_MATCH_PATTERN`]
/// (declared once here rather than on each operation).
struct IfMatchPattern;

impl Modify for IfMatchPattern {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                let if_match = operation
                    .parameters
                    .iter_mut()
                    .flatten()
                    .filter(|parameter| {
                        parameter.name == "If-Match"
                            && parameter.parameter_in == ParameterIn::Header
                    });
                for parameter in if_match {
                    let schema = ObjectBuilder::new()
                        .schema_type(SchemaType::new(Type::String))
                        .pattern(Some(crate::extract::IF_MATCH_PATTERN))
                        .build();
                    parameter.schema = Some(RefOr::T(utoipa::openapi::Schema::Object(schema)));
                }
            }
        }
    }
}

fn operations_mut(
    item: &mut utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.patch,
        &mut item.delete,
    ]
    .into_iter()
    .flatten()
}

fn operations(
    item: &utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = &utoipa::openapi::path::Operation> {
    [&item.get, &item.put, &item.post, &item.patch, &item.delete]
        .into_iter()
        .flatten()
}

/// The OpenAPI document as served (JSON), built once per process: the route serving it, the
/// `Allow` header of a 405 and `medflow openapi` all read this one.
pub fn document() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
        let mut json = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        spell_links(&mut json);
        // An edit names a title, a body or both (utoipa 5.5 writes `min_properties` as
        // `maxProperties`, so it is set here).
        json["components"]["schemas"]["DocumentEditInput"]["minProperties"] = 1.into();
        json
    });
    &DOCUMENT
}

/// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`); OpenAPI spells
/// them `operationId`, `operationRef` and `requestBody`.
fn spell_links(json: &mut serde_json::Value) {
    let Some(paths) = json["paths"].as_object_mut() else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation["responses"].as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response
            .get_mut("links")
            .and_then(|links| links.as_object_mut())
        else {
            continue;
        };
        for link in links
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
}

pub fn routes() -> BoxedFilter<(Response,)> {
    let spec = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, document(), None));
    let config = Arc::new(Config::from(OPENAPI_PATH));
    let docs = warp::path("docs")
        .and(warp::get())
        .and(warp::path::full())
        .and(warp::path::tail())
        .map(move |full: FullPath, tail: Tail| swagger_ui(full, tail, config.clone()));
    spec.or(docs).unify().boxed()
}

/// `GET /api/v1/asyncapi.json`: the Kafka channels (AsyncAPI 3.0), like the OpenAPI
/// document public.
pub fn asyncapi_route(document: Arc<serde_json::Value>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "asyncapi.json")
        .and(warp::get())
        .map(move || json_reply(StatusCode::OK, &*document, None))
        .boxed()
}

fn swagger_ui(full: FullPath, tail: Tail, config: Arc<Config<'static>>) -> Response {
    if full.as_str() == "/docs" {
        let mut response = warp::reply::Response::default();
        *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/docs/"));
        return response;
    }
    match utoipa_swagger_ui::serve(tail.as_str(), config) {
        Ok(Some(file)) => {
            let mut response = Response::new(file.bytes.into_owned().into());
            if let Ok(value) = HeaderValue::from_str(&file.content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Ok(None) => crate::problem::Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
            .into_response(),
        Err(error) => {
            tracing::error!(error = %error, "swagger ui failed");
            crate::problem::Problem::internal().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn list_responses_name_their_item_schema() {
        let json = super::document();
        let schema = &json["paths"]["/api/v1/patients"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        let text = schema.to_string();
        assert!(text.contains("PatientView"), "{text}");
        let edit = &json["components"]["schemas"]["DocumentEditInput"];
        assert_eq!(edit["minProperties"], 1, "{edit}");
        assert!(edit.get("maxProperties").is_none(), "{edit}");
    }

    #[test]
    fn creating_operations_link_to_the_created_resource() {
        let json = super::document();
        let links = &json["paths"]["/api/v1/patients"]["post"]["responses"]["201"]["links"];
        assert_eq!(links["get_patient"]["operationId"], "get_patient");
        assert_eq!(
            links["get_patient"]["parameters"]["id"],
            "$response.body#/id"
        );
        assert_eq!(
            links["patch_patient"]["parameters"]["header.If-Match"],
            "$response.header.ETag"
        );
        let patch = &json["paths"]["/api/v1/patients/{id}"]["patch"]["parameters"];
        let if_match = patch
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == "If-Match")
            .unwrap();
        assert_eq!(if_match["required"], false);
        assert_eq!(
            if_match["schema"]["type"], "string",
            "not nullable: {if_match}"
        );
        assert_eq!(
            if_match["schema"]["pattern"],
            crate::extract::IF_MATCH_PATTERN
        );
        assert!(
            links["get_patient"].get("operation_id").is_none(),
            "{links}"
        );
        for (collection, target) in [
            ("/api/v1/doctors", "get_doctor"),
            ("/api/v1/appointments", "cancel_appointment"),
            ("/api/v1/documents", "list_document_versions"),
        ] {
            let links = &json["paths"][collection]["post"]["responses"]["201"]["links"];
            assert_eq!(
                links[target]["operationId"], target,
                "{collection}: {links}"
            );
        }
    }
}
