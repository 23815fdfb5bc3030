-- Locks the patient row against a concurrent archive until the booking commits.
SELECT archived_at FROM patients WHERE id = $1 FOR SHARE
