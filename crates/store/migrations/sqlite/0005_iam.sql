-- Identity and access: API tokens (their SHA-256 only), service accounts with the public halves
-- of their keys, and the server's own secrets. Times are Unix nanoseconds, as elsewhere.

CREATE TABLE api_tokens (
    id          TEXT    PRIMARY KEY,       -- 16 lowercase hex, shown by `tokens list`
    hash        BLOB    NOT NULL UNIQUE,   -- SHA-256 of the whole token
    principal   TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    project     TEXT    NOT NULL,
    registry    TEXT,                      -- NULL: the grant is on the whole project
    create_time INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX api_tokens_by_time ON api_tokens (create_time, id);

CREATE TABLE service_accounts (
    email        TEXT    PRIMARY KEY,      -- NAME@PROJECT.iam.gserviceaccount.com
    project      TEXT    NOT NULL,
    account_id   TEXT    NOT NULL,
    unique_id    TEXT    NOT NULL,
    display_name TEXT    NOT NULL,
    roles        TEXT    NOT NULL,         -- JSON array of role names
    registry     TEXT,                     -- NULL: the roles are on the whole project
    create_time  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE service_account_keys (
    email          TEXT    NOT NULL REFERENCES service_accounts (email) ON DELETE CASCADE,
    key_id         TEXT    NOT NULL UNIQUE, -- the JWT header's `kid`, looked up alone
    public_key_der BLOB    NOT NULL,        -- SubjectPublicKeyInfo
    create_time    INTEGER NOT NULL,
    PRIMARY KEY (email, key_id)
) WITHOUT ROWID;

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
