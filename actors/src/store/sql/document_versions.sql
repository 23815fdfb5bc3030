SELECT content_version, title, edited_by, created_at, octet_length(body) AS body_bytes
  FROM document_versions WHERE document_id = $1 ORDER BY content_version
