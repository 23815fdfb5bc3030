INSERT INTO doctors (id, first_name, middle_name, last_name, specialty)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, first_name, middle_name, last_name, specialty, version, created_at, updated_at
