UPDATE patients
   SET archived_at = now(), version = version + 1, updated_at = now()
 WHERE id = $1 AND version = $2
RETURNING id, first_name, middle_name, last_name, birth_date, email, snils, oms_policy,
          archived_at, version, created_at, updated_at
