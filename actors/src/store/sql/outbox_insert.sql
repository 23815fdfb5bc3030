INSERT INTO outbox (id, aggregate_type, aggregate_id, patient_id, event_type, version, payload, traceparent)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
