SELECT count(*)
  FROM doctors
 WHERE ($1::text IS NULL OR lower(last_name) LIKE lower($1::text) || '%')
   AND ($2::text IS NULL OR specialty = $2::text)
