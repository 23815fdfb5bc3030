-- Change data capture: full before-images for the small domain tables (Debezium's `before`),
-- and a record of completed initial snapshots, so a crash mid-snapshot redoes it.
ALTER TABLE patients REPLICA IDENTITY FULL;
ALTER TABLE doctors REPLICA IDENTITY FULL;
ALTER TABLE appointments REPLICA IDENTITY FULL;

CREATE TABLE cdc_snapshots (
    slot_name    text PRIMARY KEY,
    completed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
