-- Patients, doctors, the append-only audit log and the transactional outbox.
-- Every entity row carries `version` (optimistic concurrency), `created_at` and `updated_at`.

CREATE TABLE patients (
    id          uuid PRIMARY KEY,
    first_name  text NOT NULL,
    middle_name text,
    last_name   text NOT NULL,
    birth_date  date NOT NULL,
    email       text,
    snils       text CHECK (snils ~ '^[0-9]{11}$'),
    oms_policy  text CHECK (oms_policy ~ '^[0-9]{16}$'),
    archived_at timestamptz,
    version     bigint NOT NULL DEFAULT 1 CHECK (version > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT patients_snils_key UNIQUE (snils),
    CONSTRAINT patients_oms_policy_key UNIQUE (oms_policy)
);
CREATE INDEX patients_last_name_idx ON patients (lower(last_name) text_pattern_ops);
CREATE INDEX patients_birth_date_idx ON patients (birth_date);

CREATE TABLE doctors (
    id          uuid PRIMARY KEY,
    first_name  text NOT NULL,
    middle_name text,
    last_name   text NOT NULL,
    specialty   text NOT NULL,
    version     bigint NOT NULL DEFAULT 1 CHECK (version > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX doctors_last_name_idx ON doctors (lower(last_name) text_pattern_ops);

-- Who did what to which object, when and from where. Never personal data values.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_id    text NOT NULL,
    action      text NOT NULL,
    object_type text NOT NULL,
    object_id   uuid,
    client_addr text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_object_idx ON audit_log (object_id, id);

-- The audit log is append-only for everyone, its owner included: a trigger refuses UPDATE
-- and DELETE, and TRUNCATE is refused by a statement trigger.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Business events written in the same transaction as the change they describe; the CDC
-- reader routes them from the WAL to their topics.
CREATE TABLE outbox (
    id             uuid PRIMARY KEY,
    aggregate_type text NOT NULL,
    aggregate_id   uuid NOT NULL,
    patient_id     uuid,
    event_type     text NOT NULL,
    version        bigint NOT NULL,
    payload        jsonb NOT NULL,
    traceparent    text,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
