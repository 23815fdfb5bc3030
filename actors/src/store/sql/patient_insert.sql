INSERT INTO patients (id, first_name, middle_name, last_name, birth_date, email, snils, oms_policy)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id, first_name, middle_name, last_name, birth_date, email, snils, oms_policy,
          archived_at, version, created_at, updated_at
