UPDATE documents
   SET status = 'signed', signed_by = $3, signed_at = clock_timestamp(), signature = $4,
       certificate_thumbprint = $5, checksum = $6,
       version = version + 1, updated_at = clock_timestamp()
 WHERE id = $1 AND version = $2 AND status = 'draft'
RETURNING *
