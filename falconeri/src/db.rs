//! A deployment's PostgreSQL from the user's machine: `db url` (through a
//! running `falconeri proxy`), `db console` (psql) and `migrate`. Both of the
//! latter open their own port-forward for as long as they run, so they need
//! no proxy.
//!
//! The URL is the deployment's own `database-url` from its Secret (read
//! through the Kubernetes API), pointed at the local end of the forward; the
//! password leaves this process only where the user asked for it (`db url`
//! prints it) or in psql's environment (`PGPASSWORD`, never its arguments,
//! which any user on the machine can read).
//!
//! `migrate` applies the same SQL files falconerid embeds
//! (`falconeri_common/migrations/postgres`) over tokio-postgres, a pure-Rust
//! client, and records them in diesel's own table, so falconerid's start-up
//! migration sees them as applied. Why not diesel itself: diesel's PostgreSQL
//! backend links libpq, and the CLI must build with nothing but cargo.
//! Building libpq from source (pq-sys `bundled`) cost only ~25 s, but
//! without OpenSSL, and a workspace build would unify that feature into
//! falconerid, whose libpq would lose TLS; with OpenSSL it needs the system's
//! headers or a vendored OpenSSL build. A second runner of a few lines is the
//! smaller price.

use std::{ffi::OsString, net::SocketAddr};

use anyhow::{Context, Result, anyhow, bail};
use falconeri_common::migrations::{self, MIGRATE_LOCK, Migration};
use tokio_postgres::NoTls;
use url::Url;

use crate::{
    cli::{DbCommand, MigrateArgs},
    cluster::{self, ClusterArgs},
    config::Config,
    output,
    proxy::{self, BackgroundForward, Forward, PodDialer},
};

/// The table diesel's migration harness keeps applied versions in, with
/// the definition diesel creates it with.
const MIGRATIONS_TABLE: &str = "__diesel_schema_migrations";
const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\
     version VARCHAR(50) PRIMARY KEY NOT NULL, \
     run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

/// `falconeri db …`.
pub async fn run(config: &Config, command: DbCommand) -> Result<()> {
    match command {
        DbCommand::Url {
            cluster,
            postgres_port,
        } => url(config, &cluster, postgres_port).await,
        DbCommand::Console { cluster, args } => console(&cluster, args).await,
    }
}

/// `db url`: the URL through a running proxy's PostgreSQL port.
async fn url(config: &Config, cluster: &ClusterArgs, port: u16) -> Result<()> {
    let client = cluster.client().await?;
    let url = database_url(
        &client,
        &cluster.namespace,
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
    .await?;
    // A hint, not an error: the URL is right whether or not the proxy runs yet.
    if tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        eprintln!(
            "note: nothing listens on 127.0.0.1:{port} yet; start `falconeri proxy` to use this URL"
        );
    }
    if config.json() {
        output::print_json(&serde_json::json!({ "url": url.as_str() }))
    } else {
        println!("{url}");
        Ok(())
    }
}

/// `db console`: psql on the deployment's database, through a port-forward
/// of its own.
async fn console(cluster: &ClusterArgs, args: Vec<OsString>) -> Result<()> {
    let client = cluster.client().await?;
    let forward = forward_postgres(&client, &cluster.namespace).await?;
    let mut url = database_url(&client, &cluster.namespace, forward.addr).await?;
    let password = password(&url)?;
    url.set_password(None)
        .map_err(|()| anyhow!("cannot remove the password from the database URL"))?;

    let mut psql = tokio::process::Command::new("psql");
    psql.arg(url.as_str()).args(args);
    match password {
        Some(password) => psql.env("PGPASSWORD", password),
        None => psql.env_remove("PGPASSWORD"),
    };
    // Ctrl-C reaches psql and us alike; psql uses it to cancel a query, and
    // we must keep forwarding, so we take the signal and ignore it.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle Ctrl-C")?;
    let mut child = psql
        .spawn()
        .context("cannot run psql (the PostgreSQL client); is it installed and on PATH?")?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("cannot wait for psql")?,
            _ = interrupts.recv() => {}
        }
    };
    drop(forward);
    if !status.success() {
        bail!("psql failed ({status})");
    }
    Ok(())
}

/// `falconeri migrate`.
pub async fn migrate(config: &Config, args: MigrateArgs) -> Result<()> {
    let (url, _forward) = match args.database_url {
        Some(url) => (url, None),
        None => {
            let client = args.cluster.client().await?;
            let forward = forward_postgres(&client, &args.cluster.namespace).await?;
            let url = database_url(&client, &args.cluster.namespace, forward.addr).await?;
            (url.to_string(), Some(forward))
        }
    };
    let report = run_migrations(&url, migrations::POSTGRES).await?;
    if config.json() {
        return output::print_json(&serde_json::json!({
            "applied": report.applied,
            "unknown": report.unknown,
        }));
    }
    if report.applied.is_empty() {
        println!(
            "The database is up to date ({}).",
            migrations(migrations::POSTGRES.len())
        );
    } else {
        println!("Applied {}:", migrations(report.applied.len()));
        for name in &report.applied {
            println!("  {name}");
        }
    }
    if !report.unknown.is_empty() {
        eprintln!(
            "note: the database has migrations this falconeri does not know ({}); \
             it was migrated by a newer version",
            report.unknown.join(", ")
        );
    }
    Ok(())
}

/// "1 migration", "2 migrations".
fn migrations(n: usize) -> String {
    format!("{n} migration{}", if n == 1 { "" } else { "s" })
}

/// What a migration run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// The names of the migrations applied now, in order.
    pub applied: Vec<String>,
    /// Versions recorded in the database that `migrations` lacks.
    pub unknown: Vec<String>,
}

/// Applies the pending `migrations` to the PostgreSQL at `url`, each in its
/// own transaction with its version, as diesel does. The migrations table is
/// locked in each transaction and the version checked again under the lock,
/// so concurrent runs (another `migrate`, a starting falconerid) apply each
/// migration once: a loser waits, then finds it done or fails whole.
pub async fn run_migrations(url: &str, migrations: &[Migration]) -> Result<MigrationReport> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("cannot connect to PostgreSQL")?;
    let connection = tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "PostgreSQL connection failed");
        }
    });
    let mut report = MigrationReport::default();
    // One `migrate` at a time per database, for the whole run: concurrent
    // `CREATE TABLE IF NOT EXISTS` can fail on a fresh database. The lock
    // is the session's, so it goes with the connection, however this ends.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .context("cannot take the migration lock")?;
    client
        .batch_execute(CREATE_MIGRATIONS_TABLE)
        .await
        .context("cannot create the migrations table")?;
    for migration in migrations {
        let version = migration.version();
        let tx = client.transaction().await.context("cannot begin")?;
        tx.batch_execute(&format!(
            "LOCK TABLE {MIGRATIONS_TABLE} IN SHARE ROW EXCLUSIVE MODE"
        ))
        .await
        .context("cannot lock the migrations table")?;
        let done = tx
            .query_opt(
                &format!("SELECT 1 FROM {MIGRATIONS_TABLE} WHERE version = $1"),
                &[&version],
            )
            .await
            .context("cannot read the applied migrations")?
            .is_some();
        if done {
            tx.rollback().await.context("cannot end a transaction")?;
            continue;
        }
        tx.batch_execute(migration.up)
            .await
            .with_context(|| format!("migration {} failed", migration.name))?;
        tx.execute(
            &format!("INSERT INTO {MIGRATIONS_TABLE} (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .with_context(|| format!("cannot record migration {}", migration.name))?;
        tx.commit()
            .await
            .with_context(|| format!("cannot commit migration {}", migration.name))?;
        tracing::info!(migration = migration.name, "applied");
        report.applied.push(migration.name.to_owned());
    }
    let known: Vec<String> = migrations.iter().map(Migration::version).collect();
    for row in client
        .query(
            &format!("SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version"),
            &[],
        )
        .await
        .context("cannot read the applied migrations")?
    {
        let version: String = row.get(0);
        if !known.contains(&version) {
            report.unknown.push(version);
        }
    }
    drop(client);
    let _ = connection.await;
    Ok(report)
}

/// A port-forward to a ready PostgreSQL pod on a free local port, for as long
/// as the result lives.
async fn forward_postgres(client: &kube::Client, namespace: &str) -> Result<BackgroundForward> {
    let dialer = PodDialer::new(client.clone(), namespace, proxy::POSTGRES);
    Forward::bind(0, dialer).await?.spawn()
}

/// The deployment's database URL from its Secret, pointed at `local`: its
/// `database-url` with the host and port replaced, or else one built from
/// `database-password` and the user and database `deploy` creates.
pub async fn database_url(
    client: &kube::Client,
    namespace: &str,
    local: SocketAddr,
) -> Result<Url> {
    let read = |key| cluster::read_secret(client, namespace, cluster::SECRET, key);
    let mut url = match read(cluster::SECRET_DATABASE_URL).await? {
        Some(url) => Url::parse(url.trim()).with_context(|| {
            format!(
                "key {} of Secret {} is not a URL",
                cluster::SECRET_DATABASE_URL,
                cluster::SECRET
            )
        })?,
        None => {
            let Some(password) = read(cluster::SECRET_DATABASE_PASSWORD).await? else {
                bail!(
                    "Secret {} in namespace {namespace} has neither {} nor {}; \
                     is falconeri deployed there?",
                    cluster::SECRET,
                    cluster::SECRET_DATABASE_URL,
                    cluster::SECRET_DATABASE_PASSWORD
                );
            };
            compose_url(password.trim())?
        }
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        bail!(
            "key {} of Secret {} is not a PostgreSQL URL",
            cluster::SECRET_DATABASE_URL,
            cluster::SECRET
        );
    }
    point_at(&mut url, local)?;
    Ok(url)
}

/// `postgres://falconeri:PASSWORD@localhost/falconeri`, the password escaped.
fn compose_url(password: &str) -> Result<Url> {
    let mut url = Url::parse(&format!(
        "postgres://localhost/{}",
        cluster::POSTGRES_DATABASE
    ))
    .context("cannot build the database URL")?;
    url.set_username(cluster::POSTGRES_USER)
        .and_then(|()| url.set_password(Some(password)))
        .map_err(|()| anyhow!("cannot build the database URL"))?;
    Ok(url)
}

/// Replaces the URL's host and port by `addr`.
fn point_at(url: &mut Url, addr: SocketAddr) -> Result<()> {
    url.set_ip_host(addr.ip())
        .and_then(|()| url.set_port(Some(addr.port())))
        .map_err(|()| anyhow!("cannot point the database URL at {addr}"))
}

/// The URL's password, percent-decoded.
fn password(url: &Url) -> Result<Option<String>> {
    url.password()
        .map(|encoded| {
            percent_encoding::percent_decode_str(encoded)
                .decode_utf8()
                .map(|password| password.into_owned())
                .context("the database password is not UTF-8")
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 15432))
    }

    #[test]
    fn the_secret_url_is_pointed_at_the_local_port() {
        let mut url = Url::parse(
            "postgres://falconeri:p%40ss%2Fw@falconeri-postgres:5432/falconeri?sslmode=disable",
        )
        .expect("url");
        point_at(&mut url, local()).expect("points");
        assert_eq!(
            url.as_str(),
            "postgres://falconeri:p%40ss%2Fw@127.0.0.1:15432/falconeri?sslmode=disable"
        );
        assert_eq!(password(&url).expect("parses").as_deref(), Some("p@ss/w"));
    }

    #[test]
    fn a_composed_url_escapes_the_password() {
        let mut url = compose_url("a:b@c/d e").expect("url");
        point_at(&mut url, local()).expect("points");
        assert_eq!(
            password(&url).expect("parses").as_deref(),
            Some("a:b@c/d e")
        );
        assert_eq!(url.username(), "falconeri");
        assert_eq!(url.path(), "/falconeri");
        assert_eq!(url.port(), Some(15432));
    }
}
