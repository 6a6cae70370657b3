-- Pub/Sub topics and subscriptions over the topic log, their acknowledgement cursors, and IAM
-- policies on them.

CREATE TABLE pubsub_topics (
    name        TEXT    PRIMARY KEY,   -- projects/P/topics/T
    project     TEXT    NOT NULL,
    labels      TEXT    NOT NULL,      -- JSON object
    retention_seconds INTEGER,
    origin      INTEGER NOT NULL       -- 0 CreateTopic, 1 named by a registry
) WITHOUT ROWID;

CREATE INDEX pubsub_topics_by_project ON pubsub_topics (project, name);

CREATE TABLE pubsub_subscriptions (
    name        TEXT    PRIMARY KEY,   -- projects/P/subscriptions/S
    project     TEXT    NOT NULL,
    topic       TEXT,                  -- NULL once the topic was deleted
    settings    TEXT    NOT NULL,      -- JSON of the subscription's settings
    floor       INTEGER NOT NULL,      -- every offset below is acknowledged
    acked       TEXT    NOT NULL       -- JSON array of [start, end) ranges acknowledged above the floor
) WITHOUT ROWID;

CREATE INDEX pubsub_subscriptions_by_project ON pubsub_subscriptions (project, name);
CREATE INDEX pubsub_subscriptions_by_topic ON pubsub_subscriptions (topic, name);

CREATE TABLE iam_policies (
    resource    TEXT    PRIMARY KEY,
    policy      TEXT    NOT NULL       -- JSON
) WITHOUT ROWID;

-- Topics that existing registries already name exist from now on.
INSERT OR IGNORE INTO pubsub_topics (name, project, labels, retention_seconds, origin)
SELECT DISTINCT json_extract(c.value, '$.pubsub_topic_name'),
       substr(json_extract(c.value, '$.pubsub_topic_name'), 10,
              instr(substr(json_extract(c.value, '$.pubsub_topic_name'), 10), '/') - 1),
       '{}', NULL, 1
FROM registries r, json_each(r.event_configs) c
WHERE json_extract(c.value, '$.pubsub_topic_name') LIKE 'projects/%/topics/%';

INSERT OR IGNORE INTO pubsub_topics (name, project, labels, retention_seconds, origin)
SELECT DISTINCT state_topic, substr(state_topic, 10, instr(substr(state_topic, 10), '/') - 1), '{}', NULL, 1
FROM registries
WHERE state_topic LIKE 'projects/%/topics/%';
