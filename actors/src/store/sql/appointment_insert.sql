INSERT INTO appointments (id, patient_id, doctor_id, starts_at, ends_at, duration_minutes, payment, visit)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *
