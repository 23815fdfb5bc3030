SELECT id, first_name, middle_name, last_name, birth_date, email, snils, oms_policy,
       archived_at, version, created_at, updated_at
  FROM patients
 WHERE ($1::text IS NULL OR lower(last_name) LIKE lower($1::text) || '%')
   AND ($2::date IS NULL OR birth_date = $2::date)
   AND ($3::bool OR archived_at IS NULL)
   AND ($4::date IS NULL OR birth_date >= $4::date)
   AND ($5::date IS NULL OR birth_date <= $5::date)
 ORDER BY lower(last_name), lower(first_name), id
OFFSET $6 LIMIT $7
