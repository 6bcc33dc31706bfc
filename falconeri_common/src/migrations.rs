//! falconerid's PostgreSQL migrations as plain text, with no database code,
//! for `falconeri migrate`: the CLI applies them over a pure-Rust connection
//! because it must build without libpq. falconerid applies the same files
//! through diesel (`db::DbPool::run_migrations`). Both take the advisory lock
//! [`MIGRATE_LOCK`] for the whole run, so a `migrate` and any number of
//! starting replicas apply each migration once.

/// The PostgreSQL advisory lock key held while migrating (any constant will
/// do; this one is "falc" "mig" in ASCII).
pub const MIGRATE_LOCK: i64 = 0x6661_6c63_006d_6967;

/// One migration: its directory's name and its `up.sql`.
#[derive(Debug)]
pub struct Migration {
    pub name: &'static str,
    pub up: &'static str,
}

impl Migration {
    /// The version diesel records: the name up to its first `_`, without
    /// dashes (`2026-11-25-000000_init` → `20261125000000`).
    pub fn version(&self) -> String {
        let prefix = self.name.split('_').next().unwrap_or(self.name);
        prefix.replace('-', "")
    }
}

macro_rules! postgres_migrations {
    ($($name:literal),* $(,)?) => {
        &[$(Migration {
            name: $name,
            up: include_str!(concat!("../migrations/postgres/", $name, "/up.sql")),
        }),*]
    };
}

/// The PostgreSQL migrations, oldest first. A test checks this list against
/// the directory, so a new migration cannot be forgotten here.
pub const POSTGRES: &[Migration] = postgres_migrations![
    "2026-11-25-000000_init",
    "2026-11-25-100000_datum_pod_failures",
    "2026-11-25-200000_job_planning_lease",
    "2026-12-06-000000_datum_lifecycle_v2",
    "2026-12-08-000000_attempt_logs",
    "2026-12-09-000000_attempt_stats",
    "2026-12-10-000000_dashboard_sessions",
    "2026-12-11-000000_failure_policies",
    "2026-12-12-000000_incremental_runs",
    "2026-12-13-000000_workflows_schedules",
    "2026-12-14-000000_skipped_runs",
    "2026-12-16-000000_crash_gaps",
    "2026-12-17-000000_log_objects",
    "2026-12-18-000000_skipped_datum_ids",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_diesel() {
        let migration = Migration {
            name: "2026-11-25-000000_init",
            up: "",
        };
        assert_eq!(migration.version(), "20261125000000");
    }

    /// The list is exactly the directory diesel embeds for falconerid.
    #[test]
    fn every_postgres_migration_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations directory")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        let listed: Vec<&str> = POSTGRES.iter().map(|m| m.name).collect();
        assert_eq!(names, listed);
        for migration in POSTGRES {
            // Every migration runs in a transaction, as diesel's default.
            assert!(!dir.join(migration.name).join("metadata.toml").exists());
        }
    }
}
