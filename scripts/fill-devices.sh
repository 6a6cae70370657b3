#!/usr/bin/env bash
# Copies one device of a stopped server's SQLite store into many, with its credentials and
# config, in one transaction: how the large-registry benchmarks get a million devices in seconds
# instead of the best part of an hour through the API. The one place the benchmark scripts spell
# out the devices and device_configs columns.
#
#   scripts/fill-devices.sh DB TEMPLATE_ID FIRST LAST ID_EXPR
#
# Writes devices i = FIRST..LAST (inclusive) into the template's registry, device i with numeric
# id 1000000000000000 + i and the string id ID_EXPR, an SQL expression over i (for example
# "printf('d%07d', i)"). Needs sqlite3.
set -euo pipefail
db="${1:?DB}" template="${2:?TEMPLATE_ID}" first="${3:?FIRST}" last="${4:?LAST}" id_expr="${5:?ID_EXPR}"
command -v sqlite3 >/dev/null || { echo "error: sqlite3 is needed (apt-get install sqlite3)" >&2; exit 1; }
sqlite3 "$db" <<SQL
BEGIN;
WITH RECURSIVE n(i) AS (SELECT $first UNION ALL SELECT i + 1 FROM n WHERE i < $last)
INSERT INTO devices (num_id, registry_pk, id, credentials, blocked, log_level, metadata, gateway_type,
                     gateway_auth_method, config_version)
SELECT 1000000000000000 + i, d.registry_pk, $id_expr,
       d.credentials, d.blocked, d.log_level, d.metadata, d.gateway_type, d.gateway_auth_method, d.config_version
FROM n, devices d WHERE d.id = '$template';
INSERT INTO device_configs (num_id, version, cloud_update_time, device_ack_time, data)
SELECT d.num_id, c.version, c.cloud_update_time, NULL, c.data
FROM devices d, device_configs c, devices t
WHERE t.id = '$template' AND c.num_id = t.num_id AND d.num_id <> t.num_id;
COMMIT;
SQL
