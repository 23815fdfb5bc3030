-- Every attempt to submit a signed document to the federal registry, with what it answered.
-- An operational log (append-only like the audit log): who asked is the registry submitter.
CREATE TABLE document_exchange_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id  uuid NOT NULL REFERENCES documents (id),
    -- The DocumentSigned event the attempt answers (from its eventId header).
    event_id     uuid,
    -- 1 for the first attempt, then one more per retry stage.
    attempt      integer NOT NULL CHECK (attempt > 0),
    -- accepted / rejected (the registry's final answers) or failed (retried or dead-lettered).
    outcome      text NOT NULL CHECK (outcome IN ('accepted', 'rejected', 'failed')),
    http_status  integer,
    registry_id  text,
    -- The rejection reason, or what went wrong.
    detail       text,
    duration_ms  integer NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX document_exchange_events_document ON document_exchange_events (document_id, id);
