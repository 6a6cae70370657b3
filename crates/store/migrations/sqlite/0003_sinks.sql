-- External sinks (--sink): when each was first seen, and how far it forwarded each topic.
CREATE TABLE sinks (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL -- Unix nanoseconds: topics without a cursor start at this time
);

CREATE TABLE sink_cursors (
    sink        TEXT NOT NULL REFERENCES sinks (name) ON DELETE CASCADE,
    topic       TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (sink, topic)
) WITHOUT ROWID;
