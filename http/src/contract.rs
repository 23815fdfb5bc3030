//! The OpenAPI schemas of fields whose rules live in the domain (`medflow_actors::domain`):
//! lengths, patterns and enums stated once here, from the domain's own names and limits, so
//! the document accepts exactly what the handlers accept (schemathesis checks both ways:
//! schema-valid data is accepted, schema-invalid data refused). Rules a JSON Schema cannot
//! state (SNILS checksums, dates relative to today) are in the field's description.

use medflow_actors::domain::{AppointmentStatus, DocumentStatus, DocumentType, Payment, Visit};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{Object, RefOr, Schema};

/// A character that is neither a control character (Unicode Cc: U+0000–U+001F,
/// U+007F–U+009F) — the class the domain's `char::is_control` refuses.
const NOT_CONTROL: &str = r"[^\u0000-\u001F\u007F-\u009F]";
/// A character that is neither a control character nor white space as Rust's `str::trim`
/// removes it (Unicode White_Space).
const VISIBLE: &str =
    r"[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// A character that is neither NUL nor white space as `str::trim` removes it.
const NOT_BLANK: &str =
    r"[^\u0000\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// A query's text filter (`extract::text_filter`): at most `max` characters, not only white
/// space.
fn filter(max: usize, description: &str) -> RefOr<Schema> {
    schema(
        string(false)
            .max_length(Some(max))
            .pattern(Some(format!("^[^\\u0000]*{NOT_BLANK}[^\\u0000]*$")))
            .description(Some(description))
            .build(),
    )
}
pub fn name_filter() -> RefOr<Schema> {
    filter(100, "1–100 characters, not only white space; trimmed")
}

fn string(nullable: bool) -> ObjectBuilder {
    let builder = ObjectBuilder::new();
    if nullable {
        builder.schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    } else {
        builder.schema_type(SchemaType::new(Type::String))
    }
}

/// A one-line text: at most `max` characters, no control characters, not only white space
/// (surrounding white space is trimmed before it is stored).
fn line(max: usize, nullable: bool, description: &str) -> Object {
    string(nullable)
        .max_length(Some(max))
        .pattern(Some(format!("^{NOT_CONTROL}*{VISIBLE}{NOT_CONTROL}*$")))
        .description(Some(description))
        .build()
}

fn one_of(names: &[&str], nullable: bool, description: &str) -> Object {
    let mut builder = string(nullable).description(Some(description));
    let values = names.iter().map(|name| serde_json::Value::from(*name));
    builder = if nullable {
        builder.enum_values(Some(values.chain([serde_json::Value::Null])))
    } else {
        builder.enum_values(Some(values))
    };
    builder.build()
}

fn schema(object: Object) -> RefOr<Schema> {
    RefOr::T(Schema::Object(object))
}

pub fn person_name() -> RefOr<Schema> {
    schema(line(
        100,
        false,
        "1–100 characters, no control characters; trimmed",
    ))
}
pub fn optional_person_name() -> RefOr<Schema> {
    schema(line(
        100,
        true,
        "1–100 characters, no control characters; trimmed",
    ))
}
pub fn specialty() -> RefOr<Schema> {
    schema(line(
        100,
        false,
        "1–100 characters, no control characters; trimmed",
    ))
}
pub fn title() -> RefOr<Schema> {
    schema(line(
        300,
        false,
        "1–300 characters, no control characters; trimmed",
    ))
}
pub fn cancel_reason() -> RefOr<Schema> {
    schema(line(
        500,
        false,
        "1–500 characters, no control characters; trimmed",
    ))
}

/// Clinical text: any characters but NUL, at most 1 MiB of UTF-8 (a limit in bytes the
/// document states in characters only as far as a JSON Schema can).
pub fn body() -> RefOr<Schema> {
    schema(
        string(false)
            .pattern(Some(r"^[^\u0000]*$"))
            .max_length(Some(medflow_actors::domain::document::MAX_BODY_BYTES))
            .description(Some(
                "Clinical text: anything but NUL (U+0000), up to 1 MiB of UTF-8",
            ))
            .build(),
    )
}

pub fn snils() -> RefOr<Schema> {
    schema(
        string(true)
            .pattern(Some(r"^[0-9]{11}$"))
            .format(Some(utoipa::openapi::SchemaFormat::Custom("snils".into())))
            .description(Some(
                "SNILS: 11 digits whose last two are the checksum of the first nine \
                 (the Pension Fund's rule; a wrong checksum answers 400)",
            ))
            .examples([serde_json::json!("11223344595")])
            .build(),
    )
}
pub fn oms_policy() -> RefOr<Schema> {
    schema(
        string(true)
            .pattern(Some(r"^[0-9]{16}$"))
            .description(Some("OMS policy number: 16 digits"))
            .build(),
    )
}

pub fn payment() -> RefOr<Schema> {
    schema(one_of(
        Payment::names(),
        false,
        "`oms` (compulsory insurance) or `paid`",
    ))
}
pub fn visit() -> RefOr<Schema> {
    schema(one_of(Visit::names(), false, "`primary` or `repeat`"))
}
pub fn appointment_status() -> RefOr<Schema> {
    schema(one_of(
        AppointmentStatus::names(),
        false,
        "An appointment's status",
    ))
}
pub fn document_type() -> RefOr<Schema> {
    schema(one_of(DocumentType::names(), false, "A document's type"))
}
pub fn document_status() -> RefOr<Schema> {
    schema(one_of(
        DocumentStatus::names(),
        false,
        "A document's status",
    ))
}

/// `RegistryInput`: one of `sent`; `accepted` with a `registryId` (1–200 characters); or
/// `rejected` with a `reason` (1–2000 characters) — each a one-line text. The field another
/// outcome does not use may be sent and is ignored.
pub fn registry_input() -> RefOr<Schema> {
    use utoipa::openapi::schema::{AdditionalProperties, OneOfBuilder};
    let variant = |outcome: &str, required: Option<(&str, usize)>| {
        let mut builder = ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Object))
            .property(
                "outcome",
                string(false).enum_values(Some([serde_json::Value::from(outcome)])),
            )
            .required("outcome")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for (field, max) in [("registryId", 200), ("reason", 2000)] {
            if required.is_some_and(|(name, _)| name == field) {
                builder = builder
                    .property(field, line(max, false, &format!("1–{max} characters")))
                    .required(field);
            } else {
                // Ignored, but still text: NUL is refused in any request body.
                builder = builder.property(
                    field,
                    string(true)
                        .pattern(Some(r"^[^\u0000]*$"))
                        .description(Some("Ignored by this outcome; no NUL (U+0000)"))
                        .build(),
                );
            }
        }
        builder.build()
    };
    RefOr::T(Schema::OneOf(
        OneOfBuilder::new()
            .description(Some(
                "What the federal registry said: `sent`, `accepted` with `registryId`, \
                 or `rejected` with `reason`",
            ))
            .item(variant("sent", None))
            .item(variant("accepted", Some(("registryId", 200))))
            .item(variant("rejected", Some(("reason", 2000))))
            .build(),
    ))
}

pub fn email() -> RefOr<Schema> {
    schema(
        string(true)
            .max_length(Some(medflow_actors::domain::EMAIL_MAX_CHARS))
            .pattern(Some(medflow_actors::domain::EMAIL_PATTERN))
            .description(Some("A bare e-mail address with a dotted domain"))
            .examples([serde_json::json!("anna@example.org")])
            .build(),
    )
}

/// A detached signature: canonical base64 (RFC 4648 §4, padded, no stray bits) of 1 byte to
/// 64 KiB, as `SignatureInput::parse` decodes it.
pub fn signature() -> RefOr<Schema> {
    schema(
        string(false)
            .min_length(Some(4))
            .max_length(Some(87_384))
            .pattern(Some(
                r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)$",
            ))
            .description(Some("Base64 of the detached signature, 1 byte to 64 KiB"))
            .build(),
    )
}

/// A certificate thumbprint: SHA-1 (40) or SHA-256 (64) hexadecimal digits.
pub fn thumbprint() -> RefOr<Schema> {
    schema(
        string(false)
            .pattern(Some(r"^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$"))
            .description(Some(
                "The signing certificate's SHA-1 or SHA-256 thumbprint, hex",
            ))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::{RefOr, Schema};

    fn pattern(schema: RefOr<Schema>) -> String {
        match schema {
            RefOr::T(Schema::Object(object)) => object.pattern.expect("a pattern"),
            _ => panic!("not an object schema"),
        }
    }

    #[test]
    fn the_search_words_parameter_states_the_filter_rule() {
        let document = crate::openapi::document();
        let parameters = document["paths"]["/api/v1/search"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let q = parameters.iter().find(|p| p["name"] == "q").unwrap();
        assert_eq!(q["required"], true);
        assert_eq!(q["schema"]["maxLength"], 200);
        assert_eq!(q["schema"]["pattern"], pattern(super::name_filter()));
    }
}
