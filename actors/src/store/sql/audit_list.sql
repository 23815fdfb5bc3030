SELECT a.id, a.occurred_at, a.actor_id, a.action, a.object_type, a.object_id, a.client_addr,
       a.request_id, a.details, a.content_hash, l.leaf_index
  FROM audit_log a
  LEFT JOIN audit_leaves l ON l.audit_id = a.id
 WHERE ($1::uuid IS NULL OR a.object_id = $1)
   AND ($2::text IS NULL OR a.actor_id = $2)
 ORDER BY a.id DESC
OFFSET $3 LIMIT $4
