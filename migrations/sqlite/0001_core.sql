-- Core gateway schema. Times are Unix epoch milliseconds (UTC); money is integer minor units
-- of the ISO 4217 currency stored beside it. Kept to SQL that PostgreSQL also accepts.

CREATE TABLE advertisers (
    id            INTEGER PRIMARY KEY,
    key           TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    token_sha256  TEXT    NOT NULL,           -- hex SHA-256 of the postback token; never the token
    allow_ips     TEXT    NOT NULL DEFAULT '[]', -- JSON array of CIDR networks
    aliases       TEXT    NOT NULL DEFAULT '{}', -- JSON object: parameter -> [names]
    updated_at    BIGINT  NOT NULL
);

CREATE TABLE affiliates (
    id          INTEGER PRIMARY KEY,
    key         TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE offers (
    id               INTEGER PRIMARY KEY,
    key              TEXT    NOT NULL UNIQUE,
    name             TEXT    NOT NULL,
    advertiser_id    BIGINT  NOT NULL REFERENCES advertisers (id),
    landing_url      TEXT    NOT NULL,
    fallback_url     TEXT,
    status           TEXT    NOT NULL CHECK (status IN ('active', 'paused')),
    currency         TEXT    NOT NULL,
    default_goal     TEXT    NOT NULL,
    min_lag_seconds  BIGINT  NOT NULL,
    lag_action       TEXT    NOT NULL CHECK (lag_action IN ('reject', 'flag')),
    window_seconds   BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);

CREATE TABLE goals (
    offer_id       BIGINT  NOT NULL REFERENCES offers (id),
    name           TEXT    NOT NULL,
    payout_kind    TEXT    NOT NULL CHECK (payout_kind IN ('fixed', 'percent')),
    payout_value   TEXT    NOT NULL,
    revenue_kind   TEXT    NOT NULL CHECK (revenue_kind IN ('fixed', 'percent')),
    revenue_value  TEXT    NOT NULL,
    allow_repeats  BOOLEAN NOT NULL,
    PRIMARY KEY (offer_id, name)
);

-- Generated click-ID keys (only when the configuration declares none).
CREATE TABLE click_keys (
    id          INTEGER PRIMARY KEY,
    secret      TEXT    NOT NULL,             -- base64
    created_at  BIGINT  NOT NULL
);

CREATE TABLE clicks (
    click_id      TEXT    PRIMARY KEY,
    offer_id      BIGINT  NOT NULL,
    affiliate_id  BIGINT  NOT NULL,
    sub1          TEXT,
    sub2          TEXT,
    sub3          TEXT,
    sub4          TEXT,
    sub5          TEXT,
    ip            TEXT,
    user_agent    TEXT,
    referrer      TEXT,
    clicked_at    BIGINT  NOT NULL
);
CREATE INDEX clicks_offer_time ON clicks (offer_id, clicked_at);

-- Every authenticated conversion event, whatever the decision: nothing is silently dropped.
CREATE TABLE conversions (
    id                      TEXT    PRIMARY KEY,   -- UUIDv7
    created_at              BIGINT  NOT NULL,
    updated_at              BIGINT  NOT NULL,
    source                  TEXT    NOT NULL,
    source_event_id         TEXT,
    advertiser_id           BIGINT,
    offer_id                BIGINT,
    affiliate_id            BIGINT,
    goal                    TEXT,
    click_id                TEXT,
    clicked_at              BIGINT,
    transaction_id          TEXT,
    status                  TEXT    NOT NULL CHECK (status IN ('approved', 'pending', 'rejected', 'reversed')),
    decision                TEXT    NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    reasons                 TEXT    NOT NULL DEFAULT '[]',  -- JSON [{code, message}]
    amount_minor            BIGINT,
    currency                TEXT,
    fx_rate                 TEXT,                  -- exact decimal: network units per unit of currency
    network_currency        TEXT,
    network_amount_minor    BIGINT,
    payout_minor            BIGINT,
    revenue_minor           BIGINT,
    occurred_at             BIGINT,
    attributes              TEXT    NOT NULL DEFAULT '{}',
    -- Dedupe keys: NULL means "not subject to this rule".
    txn_key                 TEXT,                  -- offer_id ':' transaction_id
    click_goal_key          TEXT                   -- click_id ':' goal, unless the goal repeats
) WITHOUT ROWID;  -- UUIDv7 ids arrive in time order: the table is its own time index.
-- Partial indexes keep NULL keys out: fewer pages dirtied per conversion on the write path.
CREATE UNIQUE INDEX conversions_txn_key ON conversions (txn_key) WHERE txn_key IS NOT NULL;
CREATE UNIQUE INDEX conversions_click_goal_key ON conversions (click_goal_key)
    WHERE click_goal_key IS NOT NULL;
CREATE INDEX conversions_click ON conversions (click_id) WHERE click_id IS NOT NULL;

-- Append-only double-entry postings. Balances are sums, never stored.
CREATE TABLE ledger_postings (
    id             INTEGER PRIMARY KEY,
    conversion_id  TEXT    NOT NULL REFERENCES conversions (id),
    kind           TEXT    NOT NULL CHECK (kind IN ('conversion', 'reversal')),
    account        TEXT    NOT NULL,
    currency       TEXT    NOT NULL,
    amount_minor   BIGINT  NOT NULL,   -- debit positive, credit negative
    created_at     BIGINT  NOT NULL
);
CREATE INDEX ledger_postings_conversion ON ledger_postings (conversion_id);
-- No index on account: balances scan the postings (an admin read), and every index is paid
-- for on the hot write path.
