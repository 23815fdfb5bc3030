SELECT chain_seq, occurred_at, actor_id, action, object_type, object_id, client_addr,
       request_id, details, hash
  FROM audit_log
 WHERE ($1::uuid IS NULL OR object_id = $1)
   AND ($2::text IS NULL OR actor_id = $2)
 ORDER BY chain_seq DESC
OFFSET $3 LIMIT $4
