-- The unsealed tail: rows from where sealing has not caught up, not sealed yet.
SELECT a.id, a.occurred_at, a.actor_id, a.action, a.object_type, a.object_id, a.client_addr,
       a.request_id, a.details::text AS details_text, a.content_hash
  FROM audit_log a
 WHERE a.id >= $1
   AND NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.audit_id = a.id)
 ORDER BY a.id
 LIMIT $2
