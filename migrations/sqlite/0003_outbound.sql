-- Outbound postbacks. One delivery per (conversion status change, subscribed endpoint); each
-- attempt is an apalis job (table Jobs, created by apalis' own migrations under
-- _apalis_migrations) and leaves a row in delivery_attempts. Times are epoch milliseconds.

CREATE TABLE deliveries (
    id                TEXT    PRIMARY KEY,   -- UUIDv7; the Standard Webhooks id is msg_<id>
    conversion_id     TEXT    NOT NULL REFERENCES conversions (id),
    endpoint          TEXT    NOT NULL,      -- aff:<affiliate> or aff:<affiliate>:offer:<offer>
    affiliate_id      BIGINT,
    offer_id          BIGINT,
    status            TEXT    NOT NULL,      -- the conversion status this delivery announces
    state             TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'paused', 'dead')),
    series            INTEGER NOT NULL DEFAULT 1, -- a replay starts a new series of attempts
    attempts          INTEGER NOT NULL DEFAULT 0, -- attempts made, all series
    series_started_at BIGINT  NOT NULL,      -- the schedule's origin for the current series
    next_attempt_at   BIGINT,
    last_error        TEXT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);
CREATE INDEX deliveries_conversion ON deliveries (conversion_id);
CREATE INDEX deliveries_state_endpoint ON deliveries (state, endpoint);
CREATE INDEX deliveries_affiliate_time ON deliveries (affiliate_id, created_at);

CREATE TABLE delivery_attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      TEXT    NOT NULL REFERENCES deliveries (id),
    series           INTEGER NOT NULL,
    attempt_no       INTEGER NOT NULL,
    started_at       BIGINT  NOT NULL,
    url              TEXT    NOT NULL,       -- secrets redacted
    http_status      INTEGER,
    latency_ms       BIGINT  NOT NULL,
    outcome          TEXT    NOT NULL,       -- delivered | retry | paused | dead
    error            TEXT,
    response_prefix  BLOB,                   -- first 2 KiB of the response body
    UNIQUE (delivery_id, series, attempt_no)
);

-- Endpoints that answered 410 Gone: nothing is sent to them until an operator resumes them.
CREATE TABLE paused_endpoints (
    endpoint   TEXT    PRIMARY KEY,
    paused_at  BIGINT  NOT NULL,
    reason     TEXT    NOT NULL
);
