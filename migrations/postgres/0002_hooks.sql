-- Webhook ingestion: every verified request is kept raw (audit, replay), every event that
-- could not be mapped or judged is kept with its reason, and conversions point back at the
-- request they came from.

CREATE TABLE raw_requests (
    id           TEXT    PRIMARY KEY,   -- UUIDv7
    connector    TEXT    NOT NULL,
    received_at  BIGINT  NOT NULL,
    method       TEXT    NOT NULL,
    path         TEXT    NOT NULL,      -- without the query string (it may hold a token)
    headers      TEXT    NOT NULL,      -- JSON [[name, value]], credentials removed
    body         BYTEA   NOT NULL,      -- exact bytes, LZ4-compressed (size-prefixed block)
    body_size    BIGINT  NOT NULL,      -- uncompressed length
    events       BIGINT  NOT NULL
);

-- Bodies are LZ4-compressed already: store them out of line without PostgreSQL's own
-- compression, which would spend CPU on every insert and gain nothing.
ALTER TABLE raw_requests ALTER COLUMN body SET STORAGE EXTERNAL;

CREATE TABLE ingest_failures (
    id              TEXT    PRIMARY KEY,   -- UUIDv7
    raw_request_id  TEXT    NOT NULL REFERENCES raw_requests (id),
    connector       TEXT    NOT NULL,
    event_type      TEXT,
    event_id        TEXT,
    code            TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL
);

ALTER TABLE conversions ADD COLUMN raw_request_id TEXT;
-- `source:source_event_id:n`: a redelivered webhook is a duplicate, whatever it contains.
ALTER TABLE conversions ADD COLUMN event_key TEXT;
CREATE UNIQUE INDEX conversions_event_key ON conversions (event_key) WHERE event_key IS NOT NULL;
