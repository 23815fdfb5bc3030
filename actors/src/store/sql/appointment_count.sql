SELECT count(*) FROM appointments
 WHERE ($1::uuid IS NULL OR patient_id = $1)
   AND ($2::uuid IS NULL OR doctor_id = $2)
   AND ($3::text IS NULL OR status = $3)
   AND ($4::timestamptz IS NULL OR starts_at >= $4)
   AND ($5::timestamptz IS NULL OR starts_at < $5)
