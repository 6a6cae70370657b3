-- Ferrocore's schema on PostgreSQL: the tables of SQLite's migrations 0001-0005 in one step, with
-- the same columns and the same encodings (times are Unix nanoseconds in BIGINT, blobs BYTEA, JSON
-- documents TEXT). Names and ids that lists sort or page by are COLLATE "C", so their order is
-- byte order, as SQLite's, whatever the database's locale.

-- Registries are keyed by (project, location, id); devices by a server-wide numeric id.
CREATE TABLE registries (
    pk            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project       TEXT    COLLATE "C" NOT NULL,
    location      TEXT    COLLATE "C" NOT NULL,
    id            TEXT    COLLATE "C" NOT NULL,
    event_configs TEXT    NOT NULL,      -- JSON array of EventNotificationConfig
    state_topic   TEXT,                  -- NULL when no state notification config
    mqtt_state    INTEGER NOT NULL,
    http_state    INTEGER NOT NULL,
    log_level     INTEGER NOT NULL,
    credentials   TEXT    NOT NULL,      -- JSON array of RegistryCredential
    UNIQUE (project, location, id)
);

CREATE TABLE devices (
    num_id        BIGINT  PRIMARY KEY,   -- random 16 digits, assigned by the store
    registry_pk   BIGINT  NOT NULL REFERENCES registries (pk),
    id            TEXT    COLLATE "C" NOT NULL,
    credentials   TEXT    NOT NULL,      -- JSON array of DeviceCredential
    blocked       BOOLEAN NOT NULL,
    log_level     INTEGER NOT NULL,
    metadata      TEXT    NOT NULL,      -- JSON object
    gateway_type  INTEGER NOT NULL,
    gateway_auth_method INTEGER NOT NULL,
    last_accessed_gateway_id TEXT NOT NULL DEFAULT '',
    last_accessed_gateway_time BIGINT,
    last_heartbeat_time BIGINT,
    last_event_time BIGINT,
    last_state_time BIGINT,
    last_config_ack_time BIGINT,
    last_config_send_time BIGINT,
    last_error_time BIGINT,
    last_error_status TEXT,              -- JSON Status
    config_version BIGINT NOT NULL,
    UNIQUE (registry_pk, id)
);

CREATE TABLE device_configs (
    num_id        BIGINT  NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    version       BIGINT  NOT NULL,
    cloud_update_time BIGINT NOT NULL,
    device_ack_time BIGINT,
    data          BYTEA   NOT NULL,
    PRIMARY KEY (num_id, version)
);

CREATE TABLE device_states (
    num_id        BIGINT  NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    update_time   BIGINT  NOT NULL,
    data          BYTEA   NOT NULL,
    PRIMARY KEY (num_id, update_time)
);

CREATE TABLE gateway_bindings (
    gateway_num_id BIGINT NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    device_num_id  BIGINT NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    PRIMARY KEY (gateway_num_id, device_num_id)
);

CREATE INDEX gateway_bindings_by_device ON gateway_bindings (device_num_id);

-- Pub/Sub topics and subscriptions over the topic log, their acknowledgement cursors, and IAM
-- policies on them (and on registries).
CREATE TABLE pubsub_topics (
    name          TEXT    COLLATE "C" PRIMARY KEY, -- projects/P/topics/T
    project       TEXT    COLLATE "C" NOT NULL,
    labels        TEXT    NOT NULL,      -- JSON object
    retention_seconds BIGINT,
    origin        INTEGER NOT NULL       -- 0 CreateTopic, 1 named by a registry
);

CREATE INDEX pubsub_topics_by_project ON pubsub_topics (project, name);

CREATE TABLE pubsub_subscriptions (
    name          TEXT    COLLATE "C" PRIMARY KEY, -- projects/P/subscriptions/S
    project       TEXT    COLLATE "C" NOT NULL,
    topic         TEXT    COLLATE "C",  -- NULL once the topic was deleted
    settings      TEXT    NOT NULL,      -- JSON of the subscription's settings
    floor         BIGINT  NOT NULL,      -- every offset below is acknowledged
    acked         TEXT    NOT NULL       -- JSON array of [start, end) ranges acknowledged above the floor
);

CREATE INDEX pubsub_subscriptions_by_project ON pubsub_subscriptions (project, name);
CREATE INDEX pubsub_subscriptions_by_topic ON pubsub_subscriptions (topic, name);

CREATE TABLE iam_policies (
    resource      TEXT    PRIMARY KEY,
    policy        TEXT    NOT NULL       -- JSON
);

-- External sinks (--sink): when each was first seen, and how far it forwarded each topic.
CREATE TABLE sinks (
    name          TEXT    PRIMARY KEY,
    created_at    BIGINT  NOT NULL       -- topics without a cursor start at this time
);

CREATE TABLE sink_cursors (
    sink          TEXT    NOT NULL REFERENCES sinks (name) ON DELETE CASCADE,
    topic         TEXT    COLLATE "C" NOT NULL,
    next_offset   BIGINT  NOT NULL,
    PRIMARY KEY (sink, topic)
);

-- Device activity logs, written in batches and pruned by age and row count. No foreign keys:
-- entries outlive the devices they are about, until retention takes them.
CREATE TABLE device_logs (
    seq           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time          BIGINT  NOT NULL,      -- of the event
    received      BIGINT  NOT NULL,      -- of the append
    project       TEXT    NOT NULL,
    location      TEXT    NOT NULL,
    registry      TEXT    NOT NULL,
    device_id     TEXT    NOT NULL,
    device_num_id BIGINT  NOT NULL,
    severity      INTEGER NOT NULL,      -- google.logging.type.LogSeverity number
    event_type    TEXT    NOT NULL,
    payload       TEXT    NOT NULL       -- jsonPayload
);

CREATE INDEX device_logs_by_registry ON device_logs (project, location, registry, seq);
CREATE INDEX device_logs_by_time ON device_logs (time);

-- Identity and access: API tokens (their SHA-256 only), service accounts with the public halves
-- of their keys, and the server's own secrets.
CREATE TABLE api_tokens (
    id            TEXT    COLLATE "C" PRIMARY KEY, -- 16 lowercase hex, shown by `tokens list`
    hash          BYTEA   NOT NULL UNIQUE, -- SHA-256 of the whole token
    principal     TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    project       TEXT    NOT NULL,
    registry      TEXT,                  -- NULL: the grant is on the whole project
    create_time   BIGINT  NOT NULL
);

CREATE INDEX api_tokens_by_time ON api_tokens (create_time, id);

CREATE TABLE service_accounts (
    email         TEXT    COLLATE "C" PRIMARY KEY, -- NAME@PROJECT.iam.gserviceaccount.com
    project       TEXT    NOT NULL,
    account_id    TEXT    NOT NULL,
    unique_id     TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    roles         TEXT    NOT NULL,      -- JSON array of role names
    registry      TEXT,                  -- NULL: the roles are on the whole project
    create_time   BIGINT  NOT NULL
);

CREATE TABLE service_account_keys (
    email         TEXT    COLLATE "C" NOT NULL REFERENCES service_accounts (email) ON DELETE CASCADE,
    key_id        TEXT    COLLATE "C" NOT NULL UNIQUE, -- the JWT header's `kid`, looked up alone
    public_key_der BYTEA  NOT NULL,      -- SubjectPublicKeyInfo
    create_time   BIGINT  NOT NULL,
    PRIMARY KEY (email, key_id)
);

CREATE TABLE server_secrets (
    name          TEXT    PRIMARY KEY,
    value         BYTEA   NOT NULL
);
