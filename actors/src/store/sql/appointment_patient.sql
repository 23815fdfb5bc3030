SELECT patient_id FROM appointments WHERE id = $1
