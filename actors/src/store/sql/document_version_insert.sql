INSERT INTO document_versions (document_id, content_version, title, body, edited_by)
VALUES ($1, $2, $3, $4, $5)
