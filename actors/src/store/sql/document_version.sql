SELECT content_version, title, body, edited_by, created_at, octet_length(body) AS body_bytes
  FROM document_versions WHERE document_id = $1 AND content_version = $2
