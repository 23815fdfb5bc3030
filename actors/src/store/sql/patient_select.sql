SELECT id, first_name, middle_name, last_name, birth_date, email, snils, oms_policy,
       archived_at, version, created_at, updated_at
  FROM patients
 WHERE id = $1
