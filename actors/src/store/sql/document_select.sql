SELECT * FROM documents WHERE id = $1
