-- Sealed leaves from $1 on, each with the row it seals as the table holds it now (NULLs
-- where the row is gone).
SELECT l.leaf_index, l.audit_id, l.content_hash AS sealed_content, l.leaf_hash,
       a.id, a.occurred_at, a.actor_id, a.action, a.object_type, a.object_id, a.client_addr,
       a.request_id, a.details::text AS details_text, a.content_hash
  FROM audit_leaves l
  LEFT JOIN audit_log a ON a.id = l.audit_id
 WHERE l.leaf_index >= $1
 ORDER BY l.leaf_index
 LIMIT $2
