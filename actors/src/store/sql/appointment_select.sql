SELECT * FROM appointments WHERE id = $1
