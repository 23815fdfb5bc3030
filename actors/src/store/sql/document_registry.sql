UPDATE documents
   SET status = $3, registry_id = coalesce($4, registry_id), registry_reason = $5,
       version = version + 1, updated_at = clock_timestamp()
 WHERE id = $1 AND version = $2
RETURNING *
