//! Spec-correct handling of field errors ("Handling Field Errors", GraphQL spec §6.4.4).
//!
//! async-graphql 7 leaves a field that raised an error out of its parent object, whatever
//! the field's type. The spec says the field resolves to `null`, and when its type is
//! Non-Null the `null` propagates to the nearest nullable parent (a list item, a field, or
//! finally `data` itself). Typed clients (Apollo, Relay) rely on that shape.
//!
//! [`FieldErrorNulls`] fixes the response: while an operation runs it notes the return type
//! of each field that failed and of each field completed after a failure (the failed
//! field's ancestors complete after it); when the operation is done it walks each error's
//! path up from the failed field and writes `null` where the spec puts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextResolve, ResolveInfo,
};
use async_graphql::{
    Name, PathSegment, QueryPathNode, QueryPathSegment, Response, ServerResult, Value,
};

/// The extension's factory: one [`Tracker`] per operation.
pub struct FieldErrorNulls;

impl ExtensionFactory for FieldErrorNulls {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Tracker::default())
    }
}

#[derive(Default)]
struct Tracker {
    /// Set by the first failed field; until then nothing is recorded.
    failed: AtomicBool,
    /// Return types (`[Document!]!`) by the response path of the field.
    types: Mutex<Types>,
}

/// A response path as a map key (async-graphql's `PathSegment` is not `Hash`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Field(String),
    Index(usize),
}

type Types = HashMap<Vec<Segment>, String>;

fn key(path: &[PathSegment]) -> Vec<Segment> {
    path.iter()
        .map(|segment| match segment {
            PathSegment::Field(name) => Segment::Field(name.clone()),
            PathSegment::Index(index) => Segment::Index(*index),
        })
        .collect()
}

fn response_path(node: &QueryPathNode<'_>) -> Vec<Segment> {
    let mut path: Vec<Segment> = std::iter::once(node)
        .chain(node.parents())
        .map(|node| match node.segment {
            QueryPathSegment::Name(name) => Segment::Field(name.to_owned()),
            QueryPathSegment::Index(index) => Segment::Index(index),
        })
        .collect();
    path.reverse();
    path
}

#[async_graphql::async_trait::async_trait]
impl Extension for Tracker {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let path_node = info.path_node;
        let return_type = info.return_type;
        let result = next.run(ctx, info).await;
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        if self.failed.load(Ordering::Relaxed)
            && let Ok(mut types) = self.types.lock()
        {
            types.insert(response_path(path_node), return_type.to_owned());
        }
        result
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        if self.failed.load(Ordering::Relaxed)
            && let Ok(types) = self.types.lock()
        {
            for error in &response.errors {
                null_out(&mut response.data, &error.path, &types);
            }
        }
        response
    }
}

/// Whether a GraphQL type string (`[Document!]!`) admits `null`.
fn nullable(type_name: &str) -> bool {
    !type_name.ends_with('!')
}

/// The item type of a list type string: `[Document!]!` → `Document!`.
fn item_type(type_name: &str) -> Option<&str> {
    type_name
        .trim_end_matches('!')
        .strip_prefix('[')?
        .strip_suffix(']')
}

/// Writes the `null` for the failed field at `path` where the spec puts it.
fn null_out(data: &mut Value, path: &[PathSegment], types: &Types) {
    let mut end = path.len();
    while end > 0 {
        let admits_null = match &path[end - 1] {
            // A type not recorded is taken as nullable: `null` at least takes its place.
            PathSegment::Field(_) => types.get(&key(&path[..end])).is_none_or(|t| nullable(t)),
            PathSegment::Index(_) => types
                .get(&key(&path[..end - 1]))
                .and_then(|list| item_type(list))
                .is_none_or(nullable),
        };
        if admits_null {
            set_null(data, &path[..end]);
            return;
        }
        end -= 1;
    }
    *data = Value::Null;
}

/// Sets the value at `path` to `null` (a field missing from its object is added); does
/// nothing when a parent on the way is already `null`.
fn set_null(data: &mut Value, path: &[PathSegment]) {
    let Some((last, parents)) = path.split_last() else {
        *data = Value::Null;
        return;
    };
    let mut current = data;
    for segment in parents {
        current = match (segment, current) {
            (PathSegment::Field(name), Value::Object(object)) => {
                match object.get_mut(name.as_str()) {
                    Some(value) => value,
                    None => return,
                }
            }
            (PathSegment::Index(index), Value::List(items)) => match items.get_mut(*index) {
                Some(value) => value,
                None => return,
            },
            _ => return,
        };
    }
    match (last, current) {
        (PathSegment::Field(name), Value::Object(object)) => {
            object.insert(Name::new(name), Value::Null);
        }
        (PathSegment::Index(index), Value::List(items)) => {
            if let Some(item) = items.get_mut(*index) {
                *item = Value::Null;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str) -> PathSegment {
        PathSegment::Field(name.to_owned())
    }

    fn value(json: serde_json::Value) -> Value {
        Value::from_json(json).unwrap()
    }

    #[test]
    fn a_failed_nullable_field_is_null_and_a_non_null_one_nulls_its_nearest_nullable_parent() {
        let path = vec![
            field("appointments"),
            field("edges"),
            PathSegment::Index(0),
            field("node"),
            field("documents"),
        ];
        let data =
            || value(serde_json::json!({"appointments": {"edges": [{"node": {"id": "a"}}]}}));
        let mut types = HashMap::new();
        types.insert(key(&path[..1]), "AppointmentConnection!".to_owned());
        types.insert(key(&path[..2]), "[AppointmentEdge!]!".to_owned());
        types.insert(key(&path[..4]), "Appointment".to_owned());

        // Nullable: the field is there, as null.
        types.insert(key(&path), "[DocumentSummary!]".to_owned());
        let mut nullable = data();
        null_out(&mut nullable, &path, &types);
        assert_eq!(
            nullable.into_json().unwrap(),
            serde_json::json!({"appointments": {"edges": [{"node": {"id": "a", "documents": null}}]}})
        );

        // Non-null: the nearest nullable parent (the node) is null.
        types.insert(key(&path), "[DocumentSummary!]!".to_owned());
        let mut non_null = data();
        null_out(&mut non_null, &path, &types);
        assert_eq!(
            non_null.into_json().unwrap(),
            serde_json::json!({"appointments": {"edges": [{"node": null}]}})
        );

        // Non-null all the way up: `data` itself is null.
        types.insert(key(&path[..4]), "Appointment!".to_owned());
        let mut root = data();
        null_out(&mut root, &path, &types);
        assert_eq!(root, Value::Null);
    }

    #[test]
    fn a_failed_list_item_is_null_when_the_list_admits_null_items() {
        let path = vec![field("patients"), PathSegment::Index(1), field("card")];
        let mut types = HashMap::new();
        types.insert(key(&path[..1]), "[Patient]!".to_owned());
        types.insert(key(&path), "Card!".to_owned());
        let mut data = value(serde_json::json!({"patients": [{"id": 1}, {"id": 2}]}));
        null_out(&mut data, &path, &types);
        assert_eq!(
            data.into_json().unwrap(),
            serde_json::json!({"patients": [{"id": 1}, null]})
        );
    }
}
