-- Device activity logs (connects, disconnects, publishes, configs, errors), written in batches
-- and pruned by age and row count. No foreign keys: entries outlive the devices they are about,
-- until retention takes them.
CREATE TABLE device_logs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    time          INTEGER NOT NULL, -- Unix nanoseconds of the event
    received      INTEGER NOT NULL, -- Unix nanoseconds of the append
    project       TEXT NOT NULL,
    location      TEXT NOT NULL,
    registry      TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    device_num_id INTEGER NOT NULL,
    severity      INTEGER NOT NULL, -- google.logging.type.LogSeverity number
    event_type    TEXT NOT NULL,
    payload       TEXT NOT NULL     -- jsonPayload
);

CREATE INDEX device_logs_by_registry ON device_logs (project, location, registry, seq);
CREATE INDEX device_logs_by_time ON device_logs (time);
