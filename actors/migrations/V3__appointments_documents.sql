-- Appointments and medical documents.

-- btree_gist lets one exclusion constraint combine equality on the doctor with overlap of
-- time ranges. It is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE appointments (
    id               uuid PRIMARY KEY,
    patient_id       uuid NOT NULL REFERENCES patients (id),
    doctor_id        uuid NOT NULL REFERENCES doctors (id),
    starts_at        timestamptz NOT NULL,
    -- Stored rather than generated: timestamptz + interval is not immutable.
    ends_at          timestamptz NOT NULL,
    duration_minutes integer NOT NULL CHECK (duration_minutes BETWEEN 5 AND 240),
    payment          text NOT NULL CHECK (payment IN ('oms', 'paid')),
    visit            text NOT NULL CHECK (visit IN ('primary', 'repeat')),
    status           text NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled')),
    cancel_reason    text,
    version          bigint NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (ends_at > starts_at),
    CHECK ((status = 'cancelled') = (cancel_reason IS NOT NULL)),
    -- A doctor is never double-booked: no two live appointments of one doctor overlap. The
    -- database enforces it, so it holds across pods and under any concurrency.
    CONSTRAINT appointments_no_double_booking EXCLUDE USING gist (
        doctor_id WITH =,
        tstzrange(starts_at, ends_at, '[)') WITH &&
    ) WHERE (status <> 'cancelled')
);
CREATE INDEX appointments_patient_idx ON appointments (patient_id, starts_at);
CREATE INDEX appointments_doctor_idx ON appointments (doctor_id, starts_at);
CREATE INDEX appointments_starts_idx ON appointments (starts_at);

CREATE TABLE documents (
    id                      uuid PRIMARY KEY,
    patient_id              uuid NOT NULL REFERENCES patients (id),
    appointment_id          uuid REFERENCES appointments (id),
    author_id               uuid NOT NULL REFERENCES doctors (id),
    doc_type                text NOT NULL CHECK (doc_type IN
                            ('consultation', 'referral', 'discharge_summary', 'sick_leave', 'prescription')),
    title                   text NOT NULL,
    body                    text NOT NULL,
    -- The number of the current content version (1 at creation, +1 per draft edit).
    content_version         integer NOT NULL DEFAULT 1,
    status                  text NOT NULL DEFAULT 'draft'
                            CHECK (status IN ('draft', 'signed', 'sent', 'accepted', 'rejected')),
    signed_by               uuid REFERENCES doctors (id),
    signed_at               timestamptz,
    signature               bytea,
    certificate_thumbprint  text,
    -- SHA-256 of the canonical serialisation of the signed content.
    checksum                bytea,
    registry_id             text,
    registry_reason         text,
    version                 bigint NOT NULL DEFAULT 1,
    created_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (octet_length(body) <= 1048576),
    CHECK ((status = 'draft') = (signed_at IS NULL)),
    CHECK (status = 'draft' OR (signed_by IS NOT NULL AND signature IS NOT NULL AND checksum IS NOT NULL))
);
CREATE INDEX documents_patient_idx ON documents (patient_id, created_at);
CREATE INDEX documents_author_idx ON documents (author_id, created_at);

-- Every content version of a document, kept for ever.
CREATE TABLE document_versions (
    document_id     uuid NOT NULL REFERENCES documents (id),
    content_version integer NOT NULL,
    title           text NOT NULL,
    body            text NOT NULL,
    edited_by       text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (document_id, content_version)
);

-- A signed document is immutable: its content and signature can never change again, whoever
-- writes (only its registry status moves on).
CREATE FUNCTION documents_signed_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'draft' AND (
        NEW.title IS DISTINCT FROM OLD.title OR NEW.body IS DISTINCT FROM OLD.body
        OR NEW.content_version IS DISTINCT FROM OLD.content_version
        OR NEW.patient_id IS DISTINCT FROM OLD.patient_id
        OR NEW.appointment_id IS DISTINCT FROM OLD.appointment_id
        OR NEW.author_id IS DISTINCT FROM OLD.author_id
        OR NEW.doc_type IS DISTINCT FROM OLD.doc_type
        OR NEW.signed_by IS DISTINCT FROM OLD.signed_by
        OR NEW.signed_at IS DISTINCT FROM OLD.signed_at
        OR NEW.signature IS DISTINCT FROM OLD.signature
        OR NEW.checksum IS DISTINCT FROM OLD.checksum
        OR NEW.status = 'draft'
    ) THEN
        RAISE EXCEPTION 'document % is signed and immutable', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER documents_signed_immutable
    BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION documents_signed_immutable();

-- Medical records are retained: documents and their versions are never deleted.
CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are retained: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER documents_no_delete BEFORE DELETE ON documents
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();
CREATE TRIGGER document_versions_no_change BEFORE UPDATE OR DELETE ON document_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

-- The application's role (which runs these migrations and so owns the tables) gives up its
-- right to change the audit log: INSERT and SELECT remain. An owner could grant itself the
-- rights back, which is why the V1 trigger also refuses UPDATE, DELETE and TRUNCATE.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER;
