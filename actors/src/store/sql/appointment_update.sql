UPDATE appointments
   SET status = $3, starts_at = $4, ends_at = $5, duration_minutes = $6, cancel_reason = $7,
       version = version + 1, updated_at = clock_timestamp()
 WHERE id = $1 AND version = $2
RETURNING *
