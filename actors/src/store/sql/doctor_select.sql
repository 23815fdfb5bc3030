SELECT id, first_name, middle_name, last_name, specialty, version, created_at, updated_at
  FROM doctors
 WHERE id = $1
