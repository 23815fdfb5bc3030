-- Many audit rows in one statement (one chain lock per batch).
INSERT INTO audit_log (actor_id, action, object_type, object_id, client_addr, request_id, details)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[])
