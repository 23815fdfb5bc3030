//! Decodes the `pgoutput` logical replication messages (protocol version 1) carried in
//! `XLogData`: transaction boundaries, relation descriptions and row changes.
//!
//! Values arrive in text form; [`crate::cdc::envelope`] turns them into JSON by column type.
//! A malformed message is an error, never a panic: the reader turns it into an
//! `ErrorOccurred` event and carries on.

use bytes::{Buf, Bytes};

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key).
    pub key: bool,
}

/// A table as the `Relation` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value that did not change (not sent).
    Unchanged,
    Text(String),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    Update {
        relation: u32,
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: Vec<Datum>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Type, origin and logical messages: nothing to publish.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

type Result<T> = std::result::Result<T, DecodeError>;

fn need(buf: &Bytes, n: usize, what: &str) -> Result<()> {
    if buf.remaining() < n {
        return Err(DecodeError(format!("truncated {what}")));
    }
    Ok(())
}

fn cstring(buf: &mut Bytes) -> Result<String> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| DecodeError("unterminated string".into()))?;
    let text = String::from_utf8(buf.split_to(end).to_vec())
        .map_err(|_| DecodeError("a name is not UTF-8".into()))?;
    buf.advance(1);
    Ok(text)
}

fn tuple(buf: &mut Bytes) -> Result<Vec<Datum>> {
    need(buf, 2, "tuple")?;
    let count = buf.get_u16();
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        need(buf, 1, "column kind")?;
        let datum = match buf.get_u8() {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' | b'b' => {
                need(buf, 4, "value length")?;
                let len = buf.get_u32() as usize;
                need(buf, len, "value")?;
                let raw = buf.split_to(len);
                Datum::Text(
                    String::from_utf8(raw.to_vec())
                        .map_err(|_| DecodeError("a value is not UTF-8 text".into()))?,
                )
            }
            other => return Err(DecodeError(format!("unknown column kind {other}"))),
        };
        values.push(datum);
    }
    Ok(values)
}

/// Decodes one message.
pub fn decode(mut buf: Bytes) -> Result<PgOutput> {
    need(&buf, 1, "message")?;
    let tag = buf.get_u8();
    let message = match tag {
        b'B' => {
            need(&buf, 20, "Begin")?;
            PgOutput::Begin {
                final_lsn: buf.get_u64(),
                commit_time: buf.get_i64(),
                xid: buf.get_u32(),
            }
        }
        b'C' => {
            need(&buf, 25, "Commit")?;
            let _flags = buf.get_u8();
            PgOutput::Commit {
                commit_lsn: buf.get_u64(),
                end_lsn: buf.get_u64(),
                commit_time: buf.get_i64(),
            }
        }
        b'R' => {
            need(&buf, 4, "Relation")?;
            let id = buf.get_u32();
            let schema = cstring(&mut buf)?;
            let table = cstring(&mut buf)?;
            need(&buf, 3, "Relation")?;
            let _replica_identity = buf.get_u8();
            let count = buf.get_u16();
            let mut columns = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                need(&buf, 1, "column")?;
                let flags = buf.get_u8();
                let name = cstring(&mut buf)?;
                need(&buf, 8, "column")?;
                let type_oid = buf.get_u32();
                let _type_modifier = buf.get_i32();
                columns.push(Column {
                    name,
                    type_oid,
                    key: flags & 1 == 1,
                });
            }
            PgOutput::Relation(Relation {
                id,
                schema,
                table,
                columns,
            })
        }
        b'I' => {
            need(&buf, 5, "Insert")?;
            let relation = buf.get_u32();
            if buf.get_u8() != b'N' {
                return Err(DecodeError("Insert without a new tuple".into()));
            }
            PgOutput::Insert {
                relation,
                new: tuple(&mut buf)?,
            }
        }
        b'U' => {
            need(&buf, 5, "Update")?;
            let relation = buf.get_u32();
            let mut old = None;
            let mut marker = buf.get_u8();
            if marker == b'K' || marker == b'O' {
                old = Some(tuple(&mut buf)?);
                need(&buf, 1, "Update")?;
                marker = buf.get_u8();
            }
            if marker != b'N' {
                return Err(DecodeError("Update without a new tuple".into()));
            }
            PgOutput::Update {
                relation,
                old,
                new: tuple(&mut buf)?,
            }
        }
        b'D' => {
            need(&buf, 5, "Delete")?;
            let relation = buf.get_u32();
            let marker = buf.get_u8();
            if marker != b'K' && marker != b'O' {
                return Err(DecodeError("Delete without an old tuple".into()));
            }
            PgOutput::Delete {
                relation,
                old: tuple(&mut buf)?,
            }
        }
        b'T' => {
            need(&buf, 5, "Truncate")?;
            let count = buf.get_u32();
            let _options = buf.get_u8();
            need(&buf, 4 * count as usize, "Truncate")?;
            PgOutput::Truncate {
                relations: (0..count).map(|_| buf.get_u32()).collect(),
            }
        }
        other => PgOutput::Other(other),
    };
    Ok(message)
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::BufMut;

    use super::*;

    pub(crate) fn relation_message() -> Bytes {
        let mut buf = bytes::BytesMut::new();
        buf.put_u8(b'R');
        buf.put_u32(16_384);
        buf.put_slice(b"public\0patients\0");
        buf.put_u8(b'd');
        buf.put_u16(2);
        for (key, name, oid) in [(1u8, &b"id\0"[..], 2950u32), (0, b"last_name\0", 25)] {
            buf.put_u8(key);
            buf.put_slice(name);
            buf.put_u32(oid);
            buf.put_i32(-1);
        }
        buf.freeze()
    }

    fn put_tuple(buf: &mut bytes::BytesMut, values: &[Option<&str>]) {
        buf.put_u16(values.len() as u16);
        for value in values {
            match value {
                None => buf.put_u8(b'n'),
                Some(text) => {
                    buf.put_u8(b't');
                    buf.put_u32(text.len() as u32);
                    buf.put_slice(text.as_bytes());
                }
            }
        }
    }

    #[test]
    fn relations_and_row_changes_decode() {
        let PgOutput::Relation(relation) = decode(relation_message()).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(
            (relation.schema.as_str(), relation.table.as_str()),
            ("public", "patients")
        );
        assert_eq!(relation.columns[0].name, "id");
        assert!(relation.columns[0].key && !relation.columns[1].key);

        let mut buf = bytes::BytesMut::new();
        buf.put_u8(b'U');
        buf.put_u32(16_384);
        buf.put_u8(b'O');
        put_tuple(&mut buf, &[Some("a"), Some("Иванова")]);
        buf.put_u8(b'N');
        put_tuple(&mut buf, &[Some("a"), None]);
        assert_eq!(
            decode(buf.freeze()).unwrap(),
            PgOutput::Update {
                relation: 16_384,
                old: Some(vec![Datum::Text("a".into()), Datum::Text("Иванова".into())]),
                new: vec![Datum::Text("a".into()), Datum::Null],
            }
        );
    }

    #[test]
    fn truncated_or_unknown_input_is_an_error_not_a_panic() {
        let full = relation_message();
        for len in 0..full.len() {
            assert!(decode(full.slice(..len)).is_err(), "prefix of {len} bytes");
        }
        let mut buf = bytes::BytesMut::new();
        buf.put_u8(b'I');
        buf.put_u32(1);
        buf.put_u8(b'N');
        buf.put_u16(1);
        buf.put_u8(b'x');
        assert!(decode(buf.freeze()).is_err());
        assert_eq!(
            decode(Bytes::from_static(b"Yrest")).unwrap(),
            PgOutput::Other(b'Y')
        );
    }
}
