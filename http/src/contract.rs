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
