UPDATE patients
   SET first_name = $3, middle_name = $4, last_name = $5, birth_date = $6, email = $7,
       snils = $8, oms_policy = $9, version = version + 1, updated_at = now()
 WHERE id = $1 AND version = $2
RETURNING id, first_name, middle_name, last_name, birth_date, email, snils, oms_policy,
          archived_at, version, created_at, updated_at
