SELECT count(*) FROM documents
 WHERE ($1::uuid IS NULL OR patient_id = $1)
   AND ($2::uuid IS NULL OR author_id = $2)
   AND ($3::text IS NULL OR doc_type = $3)
   AND ($4::text IS NULL OR status = $4)
   AND ($5::timestamptz IS NULL OR created_at >= $5)
   AND ($6::timestamptz IS NULL OR created_at < $6)
