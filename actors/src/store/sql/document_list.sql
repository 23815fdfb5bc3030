-- Summaries: the body (up to 1 MiB each) is left out of lists.
SELECT id, patient_id, appointment_id, author_id, doc_type, title, content_version, status,
       signed_by, signed_at, registry_id, version, created_at, updated_at
  FROM documents
 WHERE ($1::uuid IS NULL OR patient_id = $1)
   AND ($2::uuid IS NULL OR author_id = $2)
   AND ($3::text IS NULL OR doc_type = $3)
   AND ($4::text IS NULL OR status = $4)
   AND ($5::timestamptz IS NULL OR created_at >= $5)
   AND ($6::timestamptz IS NULL OR created_at < $6)
 ORDER BY created_at DESC, id
OFFSET $7 LIMIT $8
