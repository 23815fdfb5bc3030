SELECT count(*)
  FROM patients
 WHERE ($1::text IS NULL OR lower(last_name) LIKE lower($1::text) || '%')
   AND ($2::date IS NULL OR birth_date = $2::date)
   AND ($3::bool OR archived_at IS NULL)
   AND ($4::date IS NULL OR birth_date >= $4::date)
   AND ($5::date IS NULL OR birth_date <= $5::date)
