INSERT INTO documents (id, patient_id, appointment_id, author_id, doc_type, title, body)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
