UPDATE doctors
   SET first_name = $3, middle_name = $4, last_name = $5, specialty = $6,
       version = version + 1, updated_at = now()
 WHERE id = $1 AND ($2::bigint IS NULL OR version = $2::bigint)
RETURNING id, first_name, middle_name, last_name, specialty, version, created_at, updated_at
