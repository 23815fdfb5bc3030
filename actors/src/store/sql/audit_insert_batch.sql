-- Many audit rows in one statement and one short transaction (no lock: the sealer links
-- them into the tree after commit). It also returns the committed version of every entity
-- in $8 (the patients, appointments and documents whose reads it records) as of this
-- statement's start — after each of those reads began — so a reader answered from a cache
-- older than that reloads before answering (reads stay current with several instances
-- writing).
WITH appended AS (
    INSERT INTO audit_log (actor_id, action, object_type, object_id, client_addr, request_id, details)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[])
)
SELECT id, version FROM patients WHERE id = ANY($8::uuid[])
UNION ALL
SELECT id, version FROM appointments WHERE id = ANY($8::uuid[])
UNION ALL
SELECT id, version FROM documents WHERE id = ANY($8::uuid[])
