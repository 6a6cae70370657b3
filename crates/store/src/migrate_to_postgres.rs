//! `ferrocore migrate`: copies a stopped installation's store from its SQLite file into an empty
//! PostgreSQL database, so that nothing a client reads changes: every row of every table, keys
//! included (registries' and device logs' generated numbers, devices' numeric ids), times as they
//! were stored.
//!
//! - The SQLite file is opened read-only, and only at this binary's schema version
//!   ([`SQLITE_SCHEMA_VERSION`]); everything is read in one read transaction, one consistent
//!   snapshot.
//! - PostgreSQL is opened with [`PostgresStore::open`], which applies its schema; then one
//!   transaction locks every table against writers, refuses unless all are empty (a half-done or
//!   repeated migrate never mixes data), copies, verifies and commits: all or nothing.
//! - Tables go in foreign-key order ([`TABLES`]), read in primary-key order by keyset in batches,
//!   each batch one multi-row INSERT (at most 1,000 rows, and never over PostgreSQL's 65,535
//!   parameters).
//! - Both schemas are read from the databases, and must have the same columns in every table:
//!   each value is bound by its SQLite storage class (INTEGER, REAL, TEXT, BLOB, NULL) into its
//!   PostgreSQL column's type. The conversions this needs are checked, never silent: INTEGER into
//!   `integer`/`smallint` must fit, INTEGER into `boolean` must be 0 or 1 (`devices.blocked`),
//!   TEXT into `bytea` keeps its bytes; anything else is refused, naming the table, column and row.
//! - Columns PostgreSQL generates (`registries.pk`, `device_logs.seq`) are copied as they are
//!   (`OVERRIDING SYSTEM VALUE`), and their sequences set past the highest number used: the highest
//!   copied, or for `device_logs` SQLite's AUTOINCREMENT mark if higher (numbers of pruned entries
//!   are not given again).
//! - Before the commit, each table's row count is compared on both sides; any difference rolls
//!   everything back.

use crate::postgres::PostgresStore;
use crate::{Result, StoreError};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, Postgres, QueryBuilder, Row, Sqlite, TypeInfo, ValueRef};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// The SQLite schema version this binary writes (its newest migration): the only one copied.
pub const SQLITE_SCHEMA_VERSION: i64 = crate::sqlite::migrate::LATEST;

/// Every table of the store, in the order they are copied: a table after those it references.
pub const TABLES: &[&str] = &[
    "registries",
    "devices",
    "device_configs",
    "device_states",
    "gateway_bindings",
    "pubsub_topics",
    "pubsub_subscriptions",
    "iam_policies",
    "sinks",
    "sink_cursors",
    "device_logs",
    "api_tokens",
    "service_accounts",
    "service_account_keys",
    "server_secrets",
];

/// The schema's own bookkeeping, present on both sides and never copied.
const VERSIONS_TABLE: &str = "schema_migrations";
/// Rows per INSERT at most.
const MAX_ROWS_PER_INSERT: usize = 1_000;
/// Bind parameters PostgreSQL takes in one statement.
const MAX_PARAMETERS: usize = 65_535;
/// How long the copy waits for a lock on the PostgreSQL tables.
const LOCK_TIMEOUT: &str = "30s";

/// What was copied: rows per table, in the order copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub tables: Vec<(String, u64)>,
}

impl Report {
    /// Rows copied over all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }

    /// Rows copied into `table`.
    pub fn table(&self, table: &str) -> Option<u64> {
        self.tables.iter().find(|(t, _)| t == table).map(|(_, n)| *n)
    }
}

/// Copies the SQLite store at `sqlite_path` (a data directory's `ferrocore.db`) into the empty
/// PostgreSQL database at `postgres_url`; `progress` is told each table's row count once it is
/// copied (nothing is committed before the last). On any error nothing is left in PostgreSQL
/// but its (empty) schema.
pub async fn copy_sqlite_to_postgres(
    sqlite_path: &Path,
    postgres_url: &str,
    mut progress: impl FnMut(&str, u64),
) -> Result<Report> {
    // The source first: a wrong file is refused before PostgreSQL is touched.
    let mut source = open_sqlite(sqlite_path).await?;
    let mut src = source.begin().await.map_err(failed("cannot read the SQLite database"))?;
    check_sqlite_version(&mut src, sqlite_path).await?;
    let sqlite_tables = sqlite_schema(&mut src).await?;

    let store = PostgresStore::open(postgres_url).await?;
    store.close().await;
    let options = PgConnectOptions::from_str(postgres_url)
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?
        .application_name("ferrocore-migrate");
    let mut target = PgConnection::connect_with(&options).await.map_err(failed("cannot connect to PostgreSQL"))?;
    let mut dst = target.begin().await.map_err(failed("cannot begin the PostgreSQL transaction"))?;
    let tables = plan(&sqlite_tables, postgres_schema(&mut dst).await?)?;

    sqlx::query(AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")))
        .execute(&mut *dst)
        .await
        .map_err(failed("cannot set the lock timeout"))?;
    // Writers wait (or time out) until the copy commits; a second migrate finds the rows.
    let all = TABLES.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", ");
    sqlx::query(AssertSqlSafe(format!("LOCK TABLE {all} IN EXCLUSIVE MODE")))
        .execute(&mut *dst)
        .await
        .map_err(failed("cannot lock the PostgreSQL tables (is a Ferrocore server using this database?)"))?;
    let mut filled = Vec::new();
    for t in TABLES {
        let any: bool = sqlx::query_scalar(AssertSqlSafe(format!("SELECT EXISTS (SELECT 1 FROM {})", quote(t))))
            .fetch_one(&mut *dst)
            .await
            .map_err(failed(format!("cannot read PostgreSQL table {t}")))?;
        if any {
            filled.push(*t);
        }
    }
    if !filled.is_empty() {
        return Err(StoreError::Backend(format!(
            "the PostgreSQL database already holds Ferrocore data ({} not empty); migrate into an empty \
             database (a new one, or this one dropped and created again); nothing was written",
            filled.join(", ")
        )));
    }

    let mut report = Report::default();
    for table in &tables {
        let rows = copy_table(&mut src, &mut dst, table).await?;
        progress(table.name, rows);
        report.tables.push((table.name.to_owned(), rows));
    }
    for table in &tables {
        advance_sequences(&mut src, &mut dst, table).await?;
    }
    for (name, copied) in &report.tables {
        let count = |what: &'static str| failed(format!("cannot count the rows of {name} in {what}"));
        let sql = format!("SELECT COUNT(*) FROM {}", quote(name));
        let in_sqlite: i64 =
            sqlx::query_scalar(AssertSqlSafe(sql.clone())).fetch_one(&mut *src).await.map_err(count("SQLite"))?;
        let in_postgres: i64 =
            sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut *dst).await.map_err(count("PostgreSQL"))?;
        if in_sqlite != in_postgres || u64::try_from(in_postgres).ok() != Some(*copied) {
            return Err(StoreError::Backend(format!(
                "verification failed: {name} has {in_sqlite} rows in SQLite, {in_postgres} in PostgreSQL \
                 ({copied} copied); nothing was written"
            )));
        }
    }
    dst.commit().await.map_err(failed("cannot commit the copy in PostgreSQL"))?;
    src.rollback().await.ok();
    source.close().await.ok();
    target.close().await.ok();
    Ok(report)
}

/// An error's text with what was being done.
fn failed(context: impl Display) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Backend(format!("{context}: {e}"))
}

/// A table or column name as an SQL identifier (the names are the schema's own).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn open_sqlite(path: &Path) -> Result<SqliteConnection> {
    if !path.is_file() {
        return Err(StoreError::Backend(format!("there is no SQLite database at {}", path.display())));
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    SqliteConnection::connect_with(&options)
        .await
        .map_err(failed(format!("cannot open the SQLite database {}", path.display())))
}

async fn check_sqlite_version(src: &mut SqliteConnection, path: &Path) -> Result<()> {
    let read = failed(format!("cannot read the SQLite database {}", path.display()));
    let versioned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations')",
    )
    .fetch_one(&mut *src)
    .await
    .map_err(read)?;
    if !versioned {
        return Err(StoreError::Backend(format!("{} is not a Ferrocore database", path.display())));
    }
    let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *src)
        .await
        .map_err(failed(format!("cannot read the schema version of {}", path.display())))?;
    if version < SQLITE_SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the SQLite database {} has schema version {version}, older than this binary's \
             ({SQLITE_SCHEMA_VERSION}): start the server on it once with this binary, which upgrades it, \
             stop the server, then migrate",
            path.display()
        )));
    }
    if version > SQLITE_SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the SQLite database {} has schema version {version}, newer than this binary's \
             ({SQLITE_SCHEMA_VERSION}): migrate with the Ferrocore version that last served it, or a newer one",
            path.display()
        )));
    }
    Ok(())
}

/// A SQLite table's columns, each with its place in the primary key (0: not in it).
type SqliteTables = BTreeMap<String, Vec<(String, i64)>>;

async fn sqlite_schema(src: &mut SqliteConnection) -> Result<SqliteTables> {
    let read = || failed("cannot read the SQLite schema");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         ORDER BY name",
    )
    .fetch_all(&mut *src)
    .await
    .map_err(read())?;
    let mut tables = SqliteTables::new();
    for name in names.into_iter().filter(|n| n != VERSIONS_TABLE) {
        let columns: Vec<(String, i64)> = sqlx::query_as("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid")
            .bind(name.clone())
            .fetch_all(&mut *src)
            .await
            .map_err(read())?;
        tables.insert(name, columns);
    }
    Ok(tables)
}

/// A PostgreSQL column: its type, and whether a sequence fills it.
struct PgColumn {
    name: String,
    kind: Kind,
    sequence: bool,
}

async fn postgres_schema(dst: &mut PgConnection) -> Result<BTreeMap<String, Vec<PgColumn>>> {
    let rows: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text, \
                (c.is_identity = 'YES' OR COALESCE(c.column_default, '') LIKE 'nextval(%') \
         FROM information_schema.columns c \
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(&mut *dst)
    .await
    .map_err(failed("cannot read the PostgreSQL schema"))?;
    let mut tables: BTreeMap<String, Vec<PgColumn>> = BTreeMap::new();
    for (table, name, data_type, sequence) in rows {
        // Tables of other applications in the same schema are left alone, whatever their types.
        if !TABLES.contains(&table.as_str()) {
            continue;
        }
        let kind = Kind::from_postgres(&data_type).ok_or_else(|| {
            StoreError::Backend(format!(
                "PostgreSQL column {table}.{name} has type {data_type}, which migrate cannot fill"
            ))
        })?;
        tables.entry(table).or_default().push(PgColumn { name, kind, sequence });
    }
    Ok(tables)
}

/// One table to copy: its columns in PostgreSQL's order, and which of them are the primary key.
struct Table {
    name: &'static str,
    columns: Vec<PgColumn>,
    /// Indexes into `columns`, in the primary key's order.
    key: Vec<usize>,
}

/// Matches the two schemas table by table and column by column; any difference is refused, so
/// that no column is dropped or left to a default.
fn plan(sqlite: &SqliteTables, mut postgres: BTreeMap<String, Vec<PgColumn>>) -> Result<Vec<Table>> {
    let known: BTreeSet<&str> = TABLES.iter().copied().collect();
    if let Some(extra) = sqlite.keys().find(|t| !known.contains(t.as_str())) {
        return Err(StoreError::Backend(format!(
            "the SQLite database has a table this binary does not know ({extra}); nothing was copied"
        )));
    }
    let mut tables = Vec::new();
    for &name in TABLES {
        let source =
            sqlite.get(name).ok_or_else(|| StoreError::Backend(format!("the SQLite database has no table {name}")))?;
        let columns = postgres
            .remove(name)
            .ok_or_else(|| StoreError::Backend(format!("the PostgreSQL schema has no table {name}")))?;
        let source_names: BTreeSet<&str> = source.iter().map(|(c, _)| c.as_str()).collect();
        let target_names: BTreeSet<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        if source_names != target_names {
            let only = |a: &BTreeSet<&str>, b: &BTreeSet<&str>| a.difference(b).copied().collect::<Vec<_>>().join(", ");
            return Err(StoreError::Backend(format!(
                "table {name} has different columns in SQLite and PostgreSQL (only in SQLite: [{}]; only in \
                 PostgreSQL: [{}])",
                only(&source_names, &target_names),
                only(&target_names, &source_names)
            )));
        }
        let mut key: Vec<(i64, usize)> = source
            .iter()
            .filter(|(_, pk)| *pk > 0)
            .map(|(c, pk)| (*pk, columns.iter().position(|p| &p.name == c).unwrap_or_default()))
            .collect();
        if key.is_empty() {
            return Err(StoreError::Backend(format!("SQLite table {name} has no primary key to read it in order")));
        }
        key.sort_unstable();
        tables.push(Table { name, columns, key: key.into_iter().map(|(_, i)| i).collect() });
    }
    Ok(tables)
}

/// A PostgreSQL column type the copy fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int8,
    Int4,
    Int2,
    Bool,
    Float8,
    Text,
    Bytea,
}

impl Kind {
    fn from_postgres(data_type: &str) -> Option<Self> {
        Some(match data_type {
            "bigint" => Kind::Int8,
            "integer" => Kind::Int4,
            "smallint" => Kind::Int2,
            "boolean" => Kind::Bool,
            "double precision" => Kind::Float8,
            "text" => Kind::Text,
            "bytea" => Kind::Bytea,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Int8 => "bigint",
            Kind::Int4 => "integer",
            Kind::Int2 => "smallint",
            Kind::Bool => "boolean",
            Kind::Float8 => "double precision",
            Kind::Text => "text",
            Kind::Bytea => "bytea",
        }
    }
}

/// A value as SQLite stored it: its storage class and content.
#[derive(Debug, Clone)]
enum Stored {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Stored {
    fn read(row: &SqliteRow, i: usize) -> std::result::Result<Self, sqlx::Error> {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            return Ok(Stored::Null);
        }
        // The value's own storage class, whatever the column was declared as.
        let class = raw.type_info().name().to_owned();
        Ok(match class.as_str() {
            "INTEGER" => Stored::Integer(row.try_get_unchecked(i)?),
            "REAL" => Stored::Real(row.try_get_unchecked(i)?),
            "TEXT" => Stored::Text(row.try_get_unchecked(i)?),
            _ => Stored::Blob(row.try_get_unchecked(i)?),
        })
    }

    fn class(&self) -> &'static str {
        match self {
            Stored::Null => "NULL",
            Stored::Integer(_) => "INTEGER",
            Stored::Real(_) => "REAL",
            Stored::Text(_) => "TEXT",
            Stored::Blob(_) => "BLOB",
        }
    }

    /// Binds the value into a SQLite statement (a keyset bound), with its own storage class.
    fn bind_sqlite(&self, q: &mut Separated<'_, Sqlite, &str>) {
        match self.clone() {
            Stored::Null => q.push_bind(None::<i64>),
            Stored::Integer(v) => q.push_bind(v),
            Stored::Real(v) => q.push_bind(v),
            Stored::Text(v) => q.push_bind(v),
            Stored::Blob(v) => q.push_bind(v),
        };
    }

    /// The value for a PostgreSQL column of type `kind`; `Err` says why it cannot be one.
    fn convert(self, kind: Kind) -> std::result::Result<Bound, String> {
        let refused = |v: &Stored| format!("a {} value cannot be stored in a {} column", v.class(), kind.name());
        Ok(match (kind, self) {
            (Kind::Int8, Stored::Null) => Bound::Int8(None),
            (Kind::Int4, Stored::Null) => Bound::Int4(None),
            (Kind::Int2, Stored::Null) => Bound::Int2(None),
            (Kind::Bool, Stored::Null) => Bound::Bool(None),
            (Kind::Float8, Stored::Null) => Bound::Float8(None),
            (Kind::Text, Stored::Null) => Bound::Text(None),
            (Kind::Bytea, Stored::Null) => Bound::Bytea(None),
            (Kind::Int8, Stored::Integer(v)) => Bound::Int8(Some(v)),
            (Kind::Int4, Stored::Integer(v)) => {
                Bound::Int4(Some(i32::try_from(v).map_err(|_| format!("{v} does not fit an integer column"))?))
            }
            (Kind::Int2, Stored::Integer(v)) => {
                Bound::Int2(Some(i16::try_from(v).map_err(|_| format!("{v} does not fit a smallint column"))?))
            }
            (Kind::Bool, Stored::Integer(v @ (0 | 1))) => Bound::Bool(Some(v == 1)),
            (Kind::Bool, Stored::Integer(v)) => return Err(format!("{v} is not a boolean (0 or 1)")),
            // Exact up to 2^53, as SQLite's own REAL conversion.
            (Kind::Float8, Stored::Integer(v)) => Bound::Float8(Some(v as f64)),
            (Kind::Float8, Stored::Real(v)) => Bound::Float8(Some(v)),
            (Kind::Text, Stored::Text(v)) => Bound::Text(Some(v)),
            (Kind::Bytea, Stored::Blob(v)) => Bound::Bytea(Some(v)),
            // What SQLite's blob reading of a TEXT value gives: its bytes.
            (Kind::Bytea, Stored::Text(v)) => Bound::Bytea(Some(v.into_bytes())),
            (_, v) => return Err(refused(&v)),
        })
    }
}

impl Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Null => f.write_str("NULL"),
            Stored::Integer(v) => write!(f, "{v}"),
            Stored::Real(v) => write!(f, "{v}"),
            Stored::Text(v) => write!(f, "{v:?}"),
            Stored::Blob(v) => write!(f, "<{} bytes>", v.len()),
        }
    }
}

/// A value typed for its PostgreSQL column (a NULL too carries the column's type).
enum Bound {
    Int8(Option<i64>),
    Int4(Option<i32>),
    Int2(Option<i16>),
    Bool(Option<bool>),
    Float8(Option<f64>),
    Text(Option<String>),
    Bytea(Option<Vec<u8>>),
}

impl Bound {
    fn bind(self, q: &mut Separated<'_, Postgres, &'static str>) {
        match self {
            Bound::Int8(v) => q.push_bind(v),
            Bound::Int4(v) => q.push_bind(v),
            Bound::Int2(v) => q.push_bind(v),
            Bound::Bool(v) => q.push_bind(v),
            Bound::Float8(v) => q.push_bind(v),
            Bound::Text(v) => q.push_bind(v),
            Bound::Bytea(v) => q.push_bind(v),
        };
    }
}

/// Copies one table in batches; returns the rows copied.
async fn copy_table(src: &mut SqliteConnection, dst: &mut PgConnection, table: &Table) -> Result<u64> {
    let name = table.name;
    let list = |indexes: &mut dyn Iterator<Item = usize>| {
        indexes.map(|i| quote(&table.columns[i].name)).collect::<Vec<_>>().join(", ")
    };
    let columns = list(&mut (0..table.columns.len()));
    let key = list(&mut table.key.iter().copied());
    let overriding = if table.columns.iter().any(|c| c.sequence) { " OVERRIDING SYSTEM VALUE" } else { "" };
    let batch = MAX_ROWS_PER_INSERT.min(MAX_PARAMETERS / table.columns.len()).max(1);
    let mut after: Option<Vec<Stored>> = None;
    let mut copied = 0u64;
    loop {
        let mut read: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {columns} FROM {}", quote(name)));
        if let Some(after) = &after {
            read.push(format_args!(" WHERE ({key}) > ("));
            let mut bounds = read.separated(", ");
            for v in after {
                v.bind_sqlite(&mut bounds);
            }
            read.push(")");
        }
        read.push(format_args!(" ORDER BY {key} LIMIT {batch}"));
        let rows =
            read.build().fetch_all(&mut *src).await.map_err(failed(format!("cannot read {name} from SQLite")))?;
        if rows.is_empty() {
            break;
        }
        let mut values = Vec::with_capacity(rows.len());
        for row in &rows {
            let stored = (0..table.columns.len())
                .map(|i| Stored::read(row, i))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(failed(format!("cannot read a row of {name} from SQLite")))?;
            let row_key: Vec<Stored> = table.key.iter().map(|&i| stored[i].clone()).collect();
            let describe = || {
                table
                    .key
                    .iter()
                    .zip(&row_key)
                    .map(|(&i, v)| format!("{} {v}", table.columns[i].name))
                    .collect::<Vec<_>>()
            };
            let typed = stored
                .into_iter()
                .zip(&table.columns)
                .map(|(v, c)| {
                    v.convert(c.kind).map_err(|why| {
                        StoreError::Backend(format!(
                            "cannot copy {name}.{} of the row with {}: {why}; nothing was written",
                            c.name,
                            describe().join(", ")
                        ))
                    })
                })
                .collect::<Result<Vec<Bound>>>()?;
            values.push(typed);
            after = Some(row_key);
        }
        let n = values.len();
        let mut write: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("INSERT INTO {} ({columns}){overriding} ", quote(name)));
        write.push_values(values, |mut b, row| {
            for v in row {
                v.bind(&mut b);
            }
        });
        write.build().execute(&mut *dst).await.map_err(failed(format!("cannot write {name} to PostgreSQL")))?;
        copied += n as u64;
        if n < batch {
            break;
        }
    }
    Ok(copied)
}

/// Sets each sequence of `table` past the highest number used, so that new rows never collide
/// with copied ones nor reuse SQLite's AUTOINCREMENT numbers.
async fn advance_sequences(src: &mut SqliteConnection, dst: &mut PgConnection, table: &Table) -> Result<()> {
    let name = table.name;
    for column in table.columns.iter().filter(|c| c.sequence) {
        let highest: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT MAX({}) FROM {}", quote(&column.name), quote(name))))
                .fetch_one(&mut *dst)
                .await
                .map_err(failed(format!("cannot read the highest {name}.{}", column.name)))?;
        // SQLite's AUTOINCREMENT mark is that of the table's INTEGER PRIMARY KEY.
        let is_rowid_key = table.key.len() == 1 && table.columns[table.key[0]].name == column.name;
        let mark: Option<i64> = if is_rowid_key {
            let has_marks: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence')",
            )
            .fetch_one(&mut *src)
            .await
            .map_err(failed("cannot read the SQLite schema"))?;
            if has_marks {
                sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = ?")
                    .bind(name)
                    .fetch_optional(&mut *src)
                    .await
                    .map_err(failed(format!("cannot read the AUTOINCREMENT mark of {name}")))?
            } else {
                None
            }
        } else {
            None
        };
        let Some(next_after) = highest.max(mark).filter(|n| *n >= 1) else { continue };
        sqlx::query("SELECT setval(pg_get_serial_sequence($1, $2), $3)")
            .bind(quote(name))
            .bind(column.name.clone())
            .bind(next_after)
            .execute(&mut *dst)
            .await
            .map_err(failed(format!("cannot advance the sequence of {name}.{}", column.name)))?;
        tracing::info!(table = name, column = %column.name, last = next_after, "sequence set past the copied numbers");
    }
    Ok(())
}
