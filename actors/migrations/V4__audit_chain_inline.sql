-- The chain trigger computes the canonical form inline: calling the SQL helper functions
-- from PL/pgSQL runs each as its own query (≈10 per row), which made audited reads slow.
-- The canonical form and the hashes are unchanged (see V2); `audit_log_canonical` stays for
-- SQL use (it is inlined there). Within one transaction the head of the chain is carried
-- from row to row in a transaction-local setting, so a batch of N rows reads the last row
-- once, not N times (the lock is held to the end of the transaction either way; a rolled
-- back subtransaction rolls the setting back too).
CREATE OR REPLACE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
    ts        text;
    seq_text  text;
    id_text   text;
    details   text;
    head      text;
BEGIN
    PERFORM pg_advisory_xact_lock(7243507166911004551);
    head := current_setting('medflow.audit_chain_head', true);
    IF head IS NULL OR head = '' THEN
        SELECT chain_seq, hash INTO last_seq, last_hash
          FROM audit_log ORDER BY chain_seq DESC LIMIT 1;
    ELSE
        last_seq := split_part(head, ':', 1)::bigint;
        last_hash := decode(split_part(head, ':', 2), 'hex');
    END IF;
    NEW.chain_seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    seq_text := NEW.chain_seq::text;
    ts := to_char(NEW.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
    id_text := NEW.object_id::text;
    details := NEW.details::text;
    NEW.hash := sha256(NEW.prev_hash || convert_to(
        octet_length(seq_text) || ':' || seq_text
        || octet_length(ts) || ':' || ts
        || octet_length(NEW.actor_id) || ':' || NEW.actor_id
        || octet_length(NEW.action) || ':' || NEW.action
        || octet_length(NEW.object_type) || ':' || NEW.object_type
        || coalesce(octet_length(id_text) || ':' || id_text, '~')
        || coalesce(octet_length(NEW.client_addr) || ':' || NEW.client_addr, '~')
        || coalesce(octet_length(NEW.request_id) || ':' || NEW.request_id, '~')
        || octet_length(details) || ':' || details,
        'UTF8'));
    PERFORM set_config('medflow.audit_chain_head',
        NEW.chain_seq::text || ':' || encode(NEW.hash, 'hex'), true);
    RETURN NEW;
END;
$$;
