UPDATE documents
   SET title = $3, body = $4, content_version = content_version + 1,
       version = version + 1, updated_at = clock_timestamp()
 WHERE id = $1 AND version = $2 AND status = 'draft'
RETURNING *
