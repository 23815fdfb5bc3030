SELECT count(*)
  FROM audit_log
 WHERE ($1::uuid IS NULL OR object_id = $1)
   AND ($2::text IS NULL OR actor_id = $2)
