-- Registries are keyed by (project, location, id); devices by a server-wide numeric id.
CREATE TABLE registries (
    pk          INTEGER PRIMARY KEY,
    project     TEXT    NOT NULL,
    location    TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    event_configs TEXT  NOT NULL,      -- JSON array of EventNotificationConfig
    state_topic TEXT,                  -- NULL when no state notification config
    mqtt_state  INTEGER NOT NULL,
    http_state  INTEGER NOT NULL,
    log_level   INTEGER NOT NULL,
    credentials TEXT    NOT NULL,      -- JSON array of RegistryCredential
    UNIQUE (project, location, id)
);

CREATE TABLE devices (
    num_id      INTEGER PRIMARY KEY,
    registry_pk INTEGER NOT NULL REFERENCES registries (pk),
    id          TEXT    NOT NULL,
    credentials TEXT    NOT NULL,      -- JSON array of DeviceCredential
    blocked     INTEGER NOT NULL,
    log_level   INTEGER NOT NULL,
    metadata    TEXT    NOT NULL,      -- JSON object
    gateway_type INTEGER NOT NULL,
    gateway_auth_method INTEGER NOT NULL,
    last_accessed_gateway_id TEXT NOT NULL DEFAULT '',
    last_accessed_gateway_time INTEGER,
    last_heartbeat_time INTEGER,
    last_event_time INTEGER,
    last_state_time INTEGER,
    last_config_ack_time INTEGER,
    last_config_send_time INTEGER,
    last_error_time INTEGER,
    last_error_status TEXT,            -- JSON Status
    config_version INTEGER NOT NULL,
    UNIQUE (registry_pk, id)
);

CREATE TABLE device_configs (
    num_id      INTEGER NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    cloud_update_time INTEGER NOT NULL,
    device_ack_time INTEGER,
    data        BLOB    NOT NULL,
    PRIMARY KEY (num_id, version)
) WITHOUT ROWID;

CREATE TABLE device_states (
    num_id      INTEGER NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    update_time INTEGER NOT NULL,
    data        BLOB    NOT NULL,
    PRIMARY KEY (num_id, update_time)
) WITHOUT ROWID;

CREATE TABLE gateway_bindings (
    gateway_num_id INTEGER NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    device_num_id  INTEGER NOT NULL REFERENCES devices (num_id) ON DELETE CASCADE,
    PRIMARY KEY (gateway_num_id, device_num_id)
) WITHOUT ROWID;

CREATE INDEX gateway_bindings_by_device ON gateway_bindings (device_num_id);
