-- The audit log leaves the commit path: no lock is taken when a row is written. Rows are
-- sealed after commit, in commit order, into an RFC 6962/9162-style Merkle tree by one
-- sealer at a time (`actors/src/audit_sealer.rs`), which reads the committed rows from the
-- WAL through its own logical replication slot and publication — so a row changed or
-- deleted before it was sealed is still sealed as it was committed, and the change shows.
--
-- Each row is stamped at insert (no lock) with the SHA-256 of its canonical content:
--
--   id | occurred_at (UTC, ISO 8601, microseconds) | actor_id | action | object_type |
--   object_id | client_addr | request_id | details (jsonb text)
--
-- each field length-prefixed (`<bytes>:<text>`, a NULL is `~`), as in V2 but starting with
-- the row's id instead of its chain position. The leaf of a sealed row is
-- SHA-256(0x00 ‖ leaf index as 8 bytes big-endian ‖ content hash); interior nodes are
-- SHA-256(0x01 ‖ left ‖ right) (RFC 9162 §2.1.1). Rows chained before this migration keep
-- their V2 chain columns and are sealed first, in chain order.

-- 1. The chain trigger and its lock go; the stamp replaces them.
DROP TRIGGER audit_log_chain ON audit_log;
DROP FUNCTION audit_log_chain();
ALTER TABLE audit_log
    ALTER COLUMN chain_seq DROP NOT NULL,
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL,
    ADD COLUMN content_hash bytea;

CREATE FUNCTION audit_log_content_hash(
    id bigint, occurred_at timestamptz, actor_id text, action text, object_type text,
    object_id uuid, client_addr text, request_id text, details jsonb
) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$
SELECT sha256(convert_to(
    audit_log_field(id::text)
    || audit_log_field(to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    || audit_log_field(actor_id)
    || audit_log_field(action)
    || audit_log_field(object_type)
    || audit_log_field(object_id::text)
    || audit_log_field(client_addr)
    || audit_log_field(request_id)
    || audit_log_field(details::text),
    'UTF8'))
$$;

-- Inline, as V4 found the SQL helpers slow when called row by row from PL/pgSQL.
CREATE FUNCTION audit_log_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ts      text := to_char(NEW.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
    id_text text := NEW.id::text;
    details text := NEW.details::text;
BEGIN
    NEW.content_hash := sha256(convert_to(
        octet_length(id_text) || ':' || id_text
        || octet_length(ts) || ':' || ts
        || octet_length(NEW.actor_id) || ':' || NEW.actor_id
        || octet_length(NEW.action) || ':' || NEW.action
        || octet_length(NEW.object_type) || ':' || NEW.object_type
        || coalesce(octet_length(NEW.object_id::text) || ':' || NEW.object_id::text, '~')
        || coalesce(octet_length(NEW.client_addr) || ':' || NEW.client_addr, '~')
        || coalesce(octet_length(NEW.request_id) || ':' || NEW.request_id, '~')
        || octet_length(details) || ':' || details,
        'UTF8'));
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_log_stamp
    BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_stamp();

-- V3 revoked UPDATE from the owner too: granted back for this one statement.
GRANT UPDATE ON audit_log TO CURRENT_USER;
ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete;
UPDATE audit_log SET content_hash = audit_log_content_hash(
    id, occurred_at, actor_id, action, object_type, object_id, client_addr, request_id, details);
ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete;
REVOKE UPDATE ON audit_log FROM CURRENT_USER;
ALTER TABLE audit_log ALTER COLUMN content_hash SET NOT NULL;
-- Listings are newest first by id now that new rows have no chain position.
CREATE INDEX audit_log_object_id_idx ON audit_log (object_id, id);
CREATE INDEX audit_log_actor_id_idx ON audit_log (actor_id, id);
DROP INDEX audit_log_object_idx;
DROP INDEX audit_log_actor_idx;

-- 2. The sealed structure. Leaves and heads are append-only like the log itself.
CREATE TABLE audit_leaves (
    leaf_index   bigint PRIMARY KEY CHECK (leaf_index >= 0),
    audit_id     bigint NOT NULL UNIQUE,
    content_hash bytea NOT NULL,
    leaf_hash    bytea NOT NULL
);

-- Every complete perfect subtree above the leaves (level ≥ 1, `idx` = first leaf >> level),
-- so an inclusion proof reads O(log² n) rows instead of every leaf.
CREATE TABLE audit_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 1 AND 63),
    idx   bigint NOT NULL,
    hash  bytea NOT NULL,
    PRIMARY KEY (level, idx)
);

-- One head per sealing round: the tree's size and root, signed (Ed25519) when a key is set.
CREATE TABLE audit_tree_heads (
    tree_size  bigint PRIMARY KEY CHECK (tree_size > 0),
    root_hash  bytea NOT NULL,
    sealed_at  timestamptz NOT NULL,
    key_id     text,
    signature  bytea
);

CREATE TRIGGER audit_leaves_no_update_delete BEFORE UPDATE OR DELETE ON audit_leaves
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_leaves_no_truncate BEFORE TRUNCATE ON audit_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_nodes_no_update_delete BEFORE UPDATE OR DELETE ON audit_nodes
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_nodes_no_truncate BEFORE TRUNCATE ON audit_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_tree_heads_no_update_delete BEFORE UPDATE OR DELETE ON audit_tree_heads
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_tree_heads_no_truncate BEFORE TRUNCATE ON audit_tree_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_leaves, audit_nodes, audit_tree_heads FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_leaves, audit_nodes, audit_tree_heads FROM CURRENT_USER;

-- The sealer's position, locked by the round that holds the sealing advisory lock (the
-- others skip the round: one sealer at a time, with no transaction id held while waiting). `frontier` holds the roots of the tree's perfect
-- subtrees, left to right (at most 63), so a round appends without reading old leaves.
-- `backfill_pending` is set before the replication slot is (re)created and cleared once
-- every row committed before it has been sealed from the table.
CREATE TABLE audit_seal_state (
    id               smallint PRIMARY KEY CHECK (id = 1),
    tree_size        bigint NOT NULL,
    frontier         bytea[] NOT NULL,
    sealed_lsn       pg_lsn NOT NULL,
    backfill_pending boolean NOT NULL,
    -- Every row with a smaller id that exists is sealed (where the unsealed tail starts).
    unsealed_from    bigint NOT NULL
);
INSERT INTO audit_seal_state VALUES (1, 0, '{}', '0/0', true, 0);

-- The last verified head: verification resumes from here instead of from the first row.
CREATE TABLE audit_verify_state (
    id          smallint PRIMARY KEY CHECK (id = 1),
    tree_size   bigint NOT NULL,
    frontier    bytea[] NOT NULL,
    verified_at timestamptz
);
INSERT INTO audit_verify_state VALUES (1, 0, '{}', NULL);

-- The sealer's own publication: the audit log only, every operation (an UPDATE, DELETE or
-- TRUNCATE can only come from someone bypassing the append-only triggers, and is reported).
CREATE PUBLICATION medflow_audit FOR TABLE audit_log;
