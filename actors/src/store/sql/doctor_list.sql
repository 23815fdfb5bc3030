SELECT id, first_name, middle_name, last_name, specialty, version, created_at, updated_at
  FROM doctors
 WHERE ($1::text IS NULL OR lower(last_name) LIKE lower($1::text) || '%')
   AND ($2::text IS NULL OR specialty = $2::text)
 ORDER BY lower(last_name), lower(first_name), id
OFFSET $3 LIMIT $4
