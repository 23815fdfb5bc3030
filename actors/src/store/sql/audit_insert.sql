INSERT INTO audit_log (actor_id, action, object_type, object_id, client_addr, request_id, details)
VALUES ($1, $2, $3, $4, $5, $6, $7)
