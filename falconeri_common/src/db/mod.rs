//! Database connections for both backends: SQLite (the embedded default) and
//! PostgreSQL (clusters, feature `postgres`).
//!
//! Model code is written once and compiled for each backend by the
//! [`with_conn!`] and [`write_tx!`] macros, which expand their body for every
//! connection type. Only the few statements that differ (reservation) are
//! written per backend.
//!
//! Waiting: a request waits at most the pool's `wait` for a connection
//! (`falconerid --db-wait`), so with the database down it fails in seconds
//! instead of hanging; PostgreSQL connection attempts give up after about as
//! long (`connect_timeout`). Connections are not tested with a query at each
//! check-out, which would cost a round trip per request: a PostgreSQL
//! connection that fails because it was closed is marked broken by
//! [`PgManager`] and dropped when it returns to the pool, so only the request
//! that met it fails (with a closed-connection error, see
//! [`is_closed_connection`]) and the next one gets a fresh connection.

pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use diesel::{
    connection::SimpleConnection,
    r2d2::{
        ConnectionManager, CustomizeConnection, HandleEvent, Pool, PooledConnection,
        event::{CheckoutEvent, TimeoutEvent},
    },
    result::{DatabaseErrorKind, Error as DieselError},
    sqlite::SqliteConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Which database we talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The name shown by `/v1/version`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The backend a database URL names: `postgres://…`/`postgresql://…`, or
    /// `sqlite://PATH` / a plain file path for SQLite.
    pub fn for_url(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// A pool of connections to one database.
#[derive(Clone)]
pub struct DbPool {
    kind: PoolKind,
}

#[derive(Clone)]
enum PoolKind {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    #[cfg(feature = "postgres")]
    Postgres(Pool<PgManager>),
}

/// How a pool's connections are used right now, for falconerid's
/// `/metrics`. The waits for a connection are recorded as they happen, as
/// the histogram [`POOL_WAIT_METRIC`] (and the give-ups as the counter
/// [`POOL_TIMEOUTS_METRIC`]), through the `metrics` facade: a no-op until
/// falconerid installs its recorder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open now, busy or idle.
    pub connections: u32,
    /// Open connections nobody holds.
    pub idle: u32,
    /// The most the pool opens.
    pub max_size: u32,
}

/// The histogram of how long each check-out of a pooled connection waited
/// (opening a connection included, when none was idle).
pub const POOL_WAIT_METRIC: &str = "falconeri_db_pool_wait_seconds";
/// The counter of requests that gave up waiting for a connection (`--db-wait`).
pub const POOL_TIMEOUTS_METRIC: &str = "falconeri_db_pool_timeouts_total";

/// The handler r2d2 calls on every check-out and time-out.
#[derive(Debug)]
struct PoolEventHandler;

impl HandleEvent for PoolEventHandler {
    fn handle_checkout(&self, event: CheckoutEvent) {
        metrics::histogram!(POOL_WAIT_METRIC).record(event.duration());
    }

    fn handle_timeout(&self, _event: TimeoutEvent) {
        metrics::counter!(POOL_TIMEOUTS_METRIC).increment(1);
    }
}

impl std::fmt::Debug for DbPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbPool({})", self.backend().name())
    }
}

/// One pooled connection.
pub enum DbConn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    #[cfg(feature = "postgres")]
    Postgres(PooledConnection<PgManager>),
}

impl std::fmt::Debug for DbConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbConn({})", self.backend().name())
    }
}

/// One SQLite write transaction at a time in this process (see
/// [`DbConn::write_transaction`]).
static SQLITE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The PostgreSQL notification channel on which servers tell each other
/// that jobs or datums changed, so long-polls on every replica wake up.
pub const CHANGES_CHANNEL: &str = "falconeri_changes";

impl DbConn {
    /// Tells the other servers on this database what changed, in
    /// `payload` (PostgreSQL `pg_notify`; SQLite has one server, so nothing
    /// to do).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn notify_other_servers(&mut self, payload: &str) -> Result<()> {
        match self {
            DbConn::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            DbConn::Postgres(c) => {
                use diesel::{RunQueryDsl, sql_types::Text};
                diesel::sql_query("SELECT pg_notify($1, $2)")
                    .bind::<Text, _>(CHANGES_CHANNEL)
                    .bind::<Text, _>(payload)
                    .execute(&mut **c)
                    .map(|_| ())
                    .context("cannot notify the other servers")
            }
        }
    }

    /// Runs `f` in a write transaction on this connection: `BEGIN
    /// IMMEDIATE` on SQLite (the write lock is taken up front, so writers
    /// queue on the busy timeout instead of failing half-way), an ordinary
    /// transaction on PostgreSQL, where row locks do that job. Unlike
    /// [`write_tx!`], `f` gets the [`DbConn`] itself, so statements built at
    /// run time for either backend (`models::sql`) can run inside.
    pub fn write_transaction<T, E>(
        &mut self,
        f: impl FnOnce(&mut DbConn) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<diesel::result::Error>,
    {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        // Held until the transaction ends (dropped after the commit below).
        let mut _writer = None;
        match self {
            DbConn::Sqlite(c) => {
                // Inside a transaction already, a savepoint nests in it.
                let nested = AnsiTransactionManager::transaction_manager_status_mut(&mut **c)
                    .transaction_depth()?
                    .is_some();
                if nested {
                    AnsiTransactionManager::begin_transaction(&mut **c)?
                } else {
                    // SQLite has one writer; writers that find the lock taken
                    // wait in its busy handler, which sleeps 1 ms, 2 ms, … up
                    // to 100 ms between tries. Queueing on a mutex instead
                    // hands the lock over the moment it is free.
                    _writer = Some(
                        SQLITE_WRITER
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    );
                    AnsiTransactionManager::begin_transaction_sql(&mut **c, "BEGIN IMMEDIATE")?
                }
            }
            #[cfg(feature = "postgres")]
            DbConn::Postgres(c) => AnsiTransactionManager::begin_transaction(&mut **c)?,
        }
        let result = f(self);
        let ended = match (&result, &mut *self) {
            (Ok(_), DbConn::Sqlite(c)) => AnsiTransactionManager::commit_transaction(&mut **c),
            (Err(_), DbConn::Sqlite(c)) => AnsiTransactionManager::rollback_transaction(&mut **c),
            #[cfg(feature = "postgres")]
            (Ok(_), DbConn::Postgres(c)) => AnsiTransactionManager::commit_transaction(&mut **c),
            #[cfg(feature = "postgres")]
            (Err(_), DbConn::Postgres(c)) => AnsiTransactionManager::rollback_transaction(&mut **c),
        };
        match (result, ended) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(err)) => Err(err.into()),
            // The body's error says more than a failed rollback would.
            (Err(err), _) => Err(err),
        }
    }

    /// Runs `f`, which only reads, on one snapshot of the database: a
    /// `REPEATABLE READ READ ONLY` transaction on PostgreSQL (every
    /// statement sees the same moment), a deferred transaction on SQLite
    /// (a WAL reader keeps its snapshot until it ends; no write lock is
    /// taken). Inside a transaction already, `f` runs in a savepoint of it,
    /// on that transaction's snapshot.
    pub fn snapshot_read<T, E>(
        &mut self,
        f: impl FnOnce(&mut DbConn) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<diesel::result::Error>,
    {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        match self {
            DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction(&mut **c)?,
            #[cfg(feature = "postgres")]
            DbConn::Postgres(c) => {
                let nested = AnsiTransactionManager::transaction_manager_status_mut(&mut **c)
                    .transaction_depth()?
                    .is_some();
                if nested {
                    AnsiTransactionManager::begin_transaction(&mut **c)?
                } else {
                    AnsiTransactionManager::begin_transaction_sql(
                        &mut **c,
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    )?
                }
            }
        }
        let result = f(self);
        let ended = match &mut *self {
            DbConn::Sqlite(c) => AnsiTransactionManager::commit_transaction(&mut **c),
            #[cfg(feature = "postgres")]
            DbConn::Postgres(c) => AnsiTransactionManager::commit_transaction(&mut **c),
        };
        match (result, ended) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(err)) => Err(err.into()),
            (Err(err), _) => Err(err),
        }
    }

    /// Makes sure this PostgreSQL connection has the server-side prepared
    /// statement `name` (`PREPARE name (types) AS sql`), preparing it on
    /// first use. Returns false where that cannot be done (SQLite, or a
    /// connection not made by [`PgManager`]): the caller then runs its
    /// statement as plain SQL.
    ///
    /// Why: the hot-path statements are planned by PostgreSQL anew on every
    /// run otherwise, and parsing and planning them costs more than running
    /// them. Their plans are safe to reuse: the reservation's pick has one
    /// index in its order, and its update goes through the primary key.
    pub fn ensure_prepared(
        &mut self,
        name: &'static str,
        types: &str,
        sql: &str,
    ) -> std::result::Result<bool, diesel::result::Error> {
        // Without PostgreSQL support there is nothing to prepare.
        #[cfg(not(feature = "postgres"))]
        let _ = (name, types, sql);
        match self {
            DbConn::Sqlite(_) => Ok(false),
            #[cfg(feature = "postgres")]
            DbConn::Postgres(c) => {
                use diesel::Connection;
                let known = match c.instrumentation().downcast_ref::<BrokenWatch>() {
                    Some(watch) => watch.prepared.contains(name),
                    None => return Ok(false),
                };
                if known {
                    return Ok(true);
                }
                c.batch_execute(&format!("PREPARE {name} ({types}) AS {sql}"))?;
                if let Some(watch) = c.instrumentation().downcast_mut::<BrokenWatch>() {
                    watch.prepared.insert(name);
                }
                Ok(true)
            }
        }
    }

    /// Which database this connection talks to.
    pub fn backend(&self) -> Backend {
        match self {
            DbConn::Sqlite(_) => Backend::Sqlite,
            #[cfg(feature = "postgres")]
            DbConn::Postgres(_) => Backend::Postgres,
        }
    }
}

/// Runs `$body` with `$c` bound to the concrete `&mut` connection, compiled
/// once per backend.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite($c) => {
                let $c: &mut ::diesel::sqlite::SqliteConnection = &mut *$c;
                $body
            }
            #[cfg(feature = "postgres")]
            $crate::db::DbConn::Postgres($c) => {
                let $c: &mut ::diesel::pg::PgConnection = &mut *$c;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

/// Runs `$body` in a write transaction: `BEGIN IMMEDIATE` on SQLite, so the
/// write lock is taken up front and concurrent writers queue on the busy
/// timeout instead of failing half-way; an ordinary transaction on PostgreSQL,
/// where row locks do that job. `$body` returns `Result<_, E>` with
/// `E: From<diesel::result::Error>`.
macro_rules! write_tx {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite(conn) => {
                let conn: &mut ::diesel::sqlite::SqliteConnection = &mut *conn;
                conn.immediate_transaction(|$c| $body)
            }
            #[cfg(feature = "postgres")]
            $crate::db::DbConn::Postgres(conn) => {
                let conn: &mut ::diesel::pg::PgConnection = &mut *conn;
                ::diesel::Connection::transaction(conn, |$c| $body)
            }
        }
    };
}
pub(crate) use write_tx;

/// Settings applied to every SQLite connection: WAL so readers don't block
/// the writer, a busy timeout so writers wait their turn, foreign keys on.
#[derive(Debug, Clone, Copy)]
struct SqliteSetup;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "PRAGMA busy_timeout = 30000; PRAGMA synchronous = NORMAL; \
             PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// How long a request waits for a database connection unless told
/// otherwise (`falconerid --db-wait`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// True when `err` says the connection to the database was lost (the server
/// restarted, or the backend was terminated): trying again on another
/// connection is the cure.
pub fn is_closed_connection(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
    )
}

/// True when a connection that failed with `err` must not be used again.
/// Besides a closed connection, libpq reports a dead socket as a command it
/// could not send; that kind has one other cause (too many bind
/// parameters), after which dropping a healthy connection costs only a
/// reconnect.
#[cfg(feature = "postgres")]
fn breaks_connection(err: &DieselError) -> bool {
    is_closed_connection(err)
        || matches!(
            err,
            DieselError::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _)
        )
}

/// Remembers, inside a PostgreSQL connection, whether one of its statements
/// failed because the connection is gone. diesel's own
/// `ConnectionManager::has_broken` only looks at the transaction state, so a
/// connection whose plain query met a terminated backend would otherwise go
/// back to the pool and fail every request that drew it. Events are passed
/// on to the process's default instrumentation, if any (a benchmark counts
/// statements with it), which this one would otherwise replace.
#[cfg(feature = "postgres")]
#[derive(Default)]
struct BrokenWatch {
    broken: bool,
    inner: Option<Box<dyn diesel::connection::Instrumentation>>,
    /// The server-side prepared statements this connection has (see
    /// [`DbConn::ensure_prepared`]); kept here, the one per-connection
    /// state diesel lets us attach.
    prepared: std::collections::HashSet<&'static str>,
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for BrokenWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokenWatch")
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(feature = "postgres")]
impl diesel::connection::Instrumentation for BrokenWatch {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        if let diesel::connection::InstrumentationEvent::FinishQuery {
            error: Some(err), ..
        } = &event
            && breaks_connection(err)
        {
            self.broken = true;
        }
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}

/// diesel's PostgreSQL connection manager, plus [`BrokenWatch`]: a
/// connection that lost its server is dropped when it returns to the pool
/// instead of being handed to the next request.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PgManager(ConnectionManager<PgConnection>);

#[cfg(feature = "postgres")]
impl diesel::r2d2::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<PgConnection, diesel::r2d2::Error> {
        use diesel::Connection;
        let mut conn = self.0.connect()?;
        conn.set_instrumentation(BrokenWatch {
            broken: false,
            inner: diesel::connection::get_default_instrumentation(),
            prepared: Default::default(),
        });
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        self.0.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        use diesel::Connection;
        self.0.has_broken(conn)
            || conn
                .instrumentation()
                .downcast_ref::<BrokenWatch>()
                .is_some_and(|watch| watch.broken)
    }
}

/// `url` with libpq's `connect_timeout` set to about `wait` (libpq counts
/// whole seconds and treats less than 2 as 2), unless the URL sets one: a
/// server that does not answer (a host that drops packets) then fails a
/// connection attempt as soon as a request would stop waiting for it.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn with_connect_timeout(url: &str, wait: Duration) -> String {
    if url.contains("connect_timeout=") {
        return url.to_owned();
    }
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout={}", seconds.max(2))
}

impl DbPool {
    /// Connects to `url` (see [`Backend::for_url`]) with up to `max_size`
    /// connections, waiting [`DEFAULT_WAIT`] for one.
    pub fn connect(url: &str, max_size: u32) -> Result<DbPool> {
        DbPool::connect_waiting(url, max_size, DEFAULT_WAIT)
    }

    /// Connects to `url` with up to `max_size` connections. Getting a
    /// connection fails after `wait`, and so does opening the pool if the
    /// database does not answer.
    pub fn connect_waiting(url: &str, max_size: u32, wait: Duration) -> Result<DbPool> {
        match Backend::for_url(url) {
            Backend::Sqlite => {
                let path = url.strip_prefix("sqlite://").unwrap_or(url);
                if let Some(parent) = std::path::Path::new(path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).with_context(|| {
                        format!("cannot create database directory {}", parent.display())
                    })?;
                }
                // WAL is a property of the database file: set it once, on one
                // connection, before the pool opens several at the same time
                // (switching modes needs the file to itself).
                {
                    use diesel::Connection;
                    let mut conn = SqliteConnection::establish(path)
                        .with_context(|| format!("cannot open SQLite database {path}"))?;
                    conn.batch_execute("PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL;")
                        .with_context(|| format!("cannot enable WAL on {path}"))?;
                }
                let pool = Pool::builder()
                    .max_size(max_size)
                    .connection_timeout(wait)
                    .event_handler(Box::new(PoolEventHandler))
                    // An SQLite connection cannot lose its server.
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(SqliteSetup))
                    .build(ConnectionManager::<SqliteConnection>::new(path))
                    .with_context(|| format!("cannot open SQLite database {path}"))?;
                Ok(DbPool {
                    kind: PoolKind::Sqlite(pool),
                })
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let url = with_connect_timeout(url, wait);
                let pool = Pool::builder()
                    .max_size(max_size)
                    .connection_timeout(wait)
                    .event_handler(Box::new(PoolEventHandler))
                    // No `SELECT 1` per request: a lost connection is found
                    // by the statement that meets it (see `PgManager`).
                    .test_on_check_out(false)
                    .build(PgManager(ConnectionManager::<PgConnection>::new(url)))
                    .context("cannot connect to PostgreSQL")?;
                Ok(DbPool {
                    kind: PoolKind::Postgres(pool),
                })
            }
            #[cfg(not(feature = "postgres"))]
            Backend::Postgres => {
                bail!("this build of falconerid has no PostgreSQL support (feature `postgres`)")
            }
        }
    }

    /// Which database this pool talks to.
    pub fn backend(&self) -> Backend {
        match &self.kind {
            PoolKind::Sqlite(_) => Backend::Sqlite,
            #[cfg(feature = "postgres")]
            PoolKind::Postgres(_) => Backend::Postgres,
        }
    }

    /// A connection from the pool.
    pub fn get(&self) -> Result<DbConn> {
        Ok(match &self.kind {
            PoolKind::Sqlite(pool) => DbConn::Sqlite(pool.get().context("no database connection")?),
            #[cfg(feature = "postgres")]
            PoolKind::Postgres(pool) => {
                DbConn::Postgres(pool.get().context("no database connection")?)
            }
        })
    }

    /// Applies every pending migration (they are compiled into the binary).
    pub fn run_migrations(&self) -> Result<()> {
        let mut conn = self.get()?;
        let applied = match &mut conn {
            DbConn::Sqlite(c) => c
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|versions| versions.len()),
            #[cfg(feature = "postgres")]
            DbConn::Postgres(c) => run_postgres_migrations(c),
        };
        match applied {
            Ok(n) => {
                tracing::info!(applied = n, "database migrations up to date");
                Ok(())
            }
            Err(err) => bail!("cannot migrate the database: {err}"),
        }
    }

    /// True when the database answers a trivial query within `budget`,
    /// however long the pool itself would wait. A pooled connection that
    /// fails the query (its server went away) is dropped and the next one
    /// tried, so after a database restart the probe answers for the
    /// database, not for one stale connection. The database may still hang
    /// a query on a half-open socket; callers bound the whole call too.
    pub fn is_ready(&self, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        // Every pooled connection may be stale, plus one fresh one.
        for _ in 0..=self.max_size() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let Ok(mut conn) = self.get_timeout(left) else {
                return false;
            };
            if with_conn!(&mut conn, c => c.batch_execute("SELECT 1").is_ok()) {
                return true;
            }
        }
        false
    }

    fn max_size(&self) -> u32 {
        match &self.kind {
            PoolKind::Sqlite(pool) => pool.max_size(),
            #[cfg(feature = "postgres")]
            PoolKind::Postgres(pool) => pool.max_size(),
        }
    }

    /// How the pool's connections are used now.
    pub fn stats(&self) -> PoolStats {
        let state = match &self.kind {
            PoolKind::Sqlite(pool) => pool.state(),
            #[cfg(feature = "postgres")]
            PoolKind::Postgres(pool) => pool.state(),
        };
        PoolStats {
            connections: state.connections,
            idle: state.idle_connections,
            max_size: self.max_size(),
        }
    }

    /// A connection from the pool, waiting at most `wait`.
    pub fn get_timeout(&self, wait: Duration) -> Result<DbConn> {
        Ok(match &self.kind {
            PoolKind::Sqlite(pool) => {
                DbConn::Sqlite(pool.get_timeout(wait).context("no database connection")?)
            }
            #[cfg(feature = "postgres")]
            PoolKind::Postgres(pool) => {
                DbConn::Postgres(pool.get_timeout(wait).context("no database connection")?)
            }
        })
    }
}

/// Runs the pending PostgreSQL migrations under the advisory lock
/// `falconeri migrate` takes too: diesel's `CREATE TABLE IF NOT EXISTS` for
/// its bookkeeping table races on a fresh database, so replicas starting
/// together (or with a `migrate`) would otherwise fail. The lock is the
/// session's; it is released before the connection goes back to the pool.
#[cfg(feature = "postgres")]
fn run_postgres_migrations(
    c: &mut diesel::PgConnection,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    use diesel::{RunQueryDsl, sql_types::BigInt};
    let lock = crate::migrations::MIGRATE_LOCK;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(lock)
        .execute(c)?;
    let applied = c
        .run_pending_migrations(POSTGRES_MIGRATIONS)
        .map(|v| v.len());
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(lock)
        .execute(c);
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_stats_count_connections_in_use_and_idle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("stats.sqlite3").display());
        let pool = DbPool::connect(&url, 3).expect("open SQLite");
        let held = pool.get().expect("a connection");
        let stats = pool.stats();
        assert_eq!(stats.max_size, 3);
        assert!(stats.connections >= 1);
        assert_eq!(stats.idle, stats.connections - 1, "{stats:?}");
        drop(held);
        let stats = pool.stats();
        assert_eq!(stats.idle, stats.connections, "{stats:?}");
    }

    #[test]
    fn connect_timeout_follows_the_wait_unless_set() {
        let wait = Duration::from_secs(5);
        assert_eq!(
            with_connect_timeout("postgres://u@h/db", wait),
            "postgres://u@h/db?connect_timeout=5"
        );
        assert_eq!(
            with_connect_timeout(
                "postgres://u@h/db?sslmode=disable",
                Duration::from_millis(2500)
            ),
            "postgres://u@h/db?sslmode=disable&connect_timeout=3"
        );
        // libpq's minimum.
        assert_eq!(
            with_connect_timeout("postgres://u@h/db", Duration::from_millis(300)),
            "postgres://u@h/db?connect_timeout=2"
        );
        let own = "postgres://u@h/db?connect_timeout=30";
        assert_eq!(with_connect_timeout(own, wait), own);
    }
}
