SELECT chain_seq, occurred_at, actor_id, action, object_type, object_id, client_addr,
       request_id, details::text AS details_text, prev_hash, hash
  FROM audit_log
 WHERE chain_seq > $1
 ORDER BY chain_seq
 LIMIT $2
