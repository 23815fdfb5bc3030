-- The audit log becomes tamper-evident: every row stores the SHA-256 of its content and of
-- the previous row's hash, in a dense sequence (`chain_seq`) assigned under a lock, so an
-- altered, inserted or removed row breaks the chain that `GET /api/v1/admin/audit/verify`
-- walks. The hash covers this canonical text, one length-prefixed field after another (a
-- NULL is `~`), which the verifier rebuilds independently:
--
--   chain_seq | occurred_at (UTC, ISO 8601, microseconds) | actor_id | action |
--   object_type | object_id | client_addr | request_id | details (jsonb text)
--
--   hash = sha256(prev_hash || canonical)      prev_hash of the first row: 32 zero bytes

ALTER TABLE audit_log
    ADD COLUMN chain_seq bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash      bytea;

CREATE FUNCTION audit_log_field(value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN value IS NULL THEN '~' ELSE octet_length(value) || ':' || value END $$;

CREATE FUNCTION audit_log_canonical(
    chain_seq bigint, occurred_at timestamptz, actor_id text, action text, object_type text,
    object_id uuid, client_addr text, request_id text, details jsonb
) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$
SELECT convert_to(
    audit_log_field(chain_seq::text)
    || audit_log_field(to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    || audit_log_field(actor_id)
    || audit_log_field(action)
    || audit_log_field(object_type)
    || audit_log_field(object_id::text)
    || audit_log_field(client_addr)
    || audit_log_field(request_id)
    || audit_log_field(details::text),
    'UTF8')
$$;

-- Links a new row to the chain. The transaction-scoped advisory lock serialises audited
-- transactions from this insert to their commit, so the row read as "last" is committed and
-- no two rows share a predecessor; a rolled-back transaction releases the lock and leaves
-- no gap. Writers therefore insert their audit row last, just before COMMIT.
CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(7243507166911004551);
    SELECT chain_seq, hash INTO last_seq, last_hash
      FROM audit_log ORDER BY chain_seq DESC LIMIT 1;
    NEW.chain_seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, decode(repeat('00', 32), 'hex'));
    NEW.hash := sha256(NEW.prev_hash || audit_log_canonical(
        NEW.chain_seq, NEW.occurred_at, NEW.actor_id, NEW.action, NEW.object_type,
        NEW.object_id, NEW.client_addr, NEW.request_id, NEW.details));
    RETURN NEW;
END;
$$;

-- Rows written before the chain existed are chained once, in id order.
ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete;
DO $$
DECLARE
    row_       record;
    seq        bigint := 0;
    last_hash  bytea := decode(repeat('00', 32), 'hex');
    next_hash  bytea;
BEGIN
    FOR row_ IN SELECT * FROM audit_log ORDER BY id LOOP
        seq := seq + 1;
        next_hash := sha256(last_hash || audit_log_canonical(
            seq, row_.occurred_at, row_.actor_id, row_.action, row_.object_type,
            row_.object_id, row_.client_addr, row_.request_id, row_.details));
        UPDATE audit_log SET chain_seq = seq, prev_hash = last_hash, hash = next_hash
         WHERE id = row_.id;
        last_hash := next_hash;
    END LOOP;
END;
$$;
ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete;

ALTER TABLE audit_log
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
CREATE UNIQUE INDEX audit_log_chain_seq_idx ON audit_log (chain_seq);
-- Listings filter by object or actor and order by the chain.
DROP INDEX audit_log_object_idx;
CREATE INDEX audit_log_object_idx ON audit_log (object_id, chain_seq);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, chain_seq);

CREATE TRIGGER audit_log_chain
    BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();
