//! Hand-written statements for the datum lifecycle, one text for both
//! databases.
//!
//! The hot-path transitions need SQL that diesel's DSL does not express
//! (conditional `SET`s, `UPDATE … FROM (VALUES …)`, a reservation that hands
//! back a held datum or claims new ones in one statement). [`Stmt`] builds
//! such a statement: integers are written into the text (they are ours, never
//! a user's, and a fresh text also gets PostgreSQL a plan for these exact
//! values instead of a generic one), text is always bound, and placeholders
//! follow the backend (`$1` on PostgreSQL, `?1` on SQLite).

use diesel::{QueryableByName, RunQueryDsl, sql_types::Nullable, sql_types::Text};

use super::ModelResult;
use crate::{
    Millis,
    db::{Backend, DbConn, with_conn},
};

/// Where a statement takes "now" from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The database's clock, read inside the statement itself (no extra
    /// round trip), moved by `skew_ms` (tests jump past leases with it).
    Database { skew_ms: i64 },
    /// A fixed instant (tests, and callers that already read the clock).
    At(Millis),
}

impl Clock {
    /// The database clock, unskewed.
    pub const DB: Clock = Clock::Database { skew_ms: 0 };

    /// An SQL expression of type BIGINT for this instant.
    pub fn sql(self, backend: Backend) -> String {
        match self {
            Clock::At(ms) => format!("({ms})"),
            Clock::Database { skew_ms } => {
                let now = match backend {
                    Backend::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
                    Backend::Postgres => {
                        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
                    }
                };
                format!("({now} + {skew_ms})")
            }
        }
    }
}

impl From<Millis> for Clock {
    fn from(ms: Millis) -> Clock {
        Clock::At(ms)
    }
}

/// One statement being built: its text and its bound text values.
#[derive(Debug)]
pub(crate) struct Stmt {
    pub backend: Backend,
    pub sql: String,
    texts: Vec<Option<String>>,
}

impl Stmt {
    pub fn new(backend: Backend) -> Stmt {
        Stmt {
            backend,
            sql: String::new(),
            texts: Vec::new(),
        }
    }

    /// Binds a text value and returns its placeholder.
    pub fn text(&mut self, value: Option<&str>) -> String {
        self.texts.push(value.map(str::to_owned));
        let n = self.texts.len();
        match self.backend {
            Backend::Postgres => format!("${n}"),
            Backend::Sqlite => format!("?{n}"),
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: &str) -> &mut Stmt {
        self.sql.push_str(sql);
        self
    }

    /// Runs the statement and loads its rows.
    pub fn load<R>(&self, conn: &mut DbConn) -> ModelResult<Vec<R>>
    where
        R: QueryableByName<diesel::sqlite::Sqlite> + 'static,
        R: PgRow,
    {
        Ok(with_conn!(conn, c => {
            let mut query = diesel::sql_query(&self.sql).into_boxed();
            for text in &self.texts {
                query = query.bind::<Nullable<Text>, _>(text.clone());
            }
            query.load::<R>(c)
        })?)
    }

    /// Runs the statement and returns how many rows it changed.
    pub fn execute(&self, conn: &mut DbConn) -> ModelResult<usize> {
        Ok(with_conn!(conn, c => {
            let mut query = diesel::sql_query(&self.sql).into_boxed();
            for text in &self.texts {
                query = query.bind::<Nullable<Text>, _>(text.clone());
            }
            query.execute(c)
        })?)
    }
}

/// Rows loadable from PostgreSQL too (a no-op bound without the feature).
#[cfg(feature = "postgres")]
pub(crate) trait PgRow: QueryableByName<diesel::pg::Pg> {}
#[cfg(feature = "postgres")]
impl<T: QueryableByName<diesel::pg::Pg>> PgRow for T {}
#[cfg(not(feature = "postgres"))]
pub(crate) trait PgRow {}
#[cfg(not(feature = "postgres"))]
impl<T> PgRow for T {}

/// A list of integers for `IN (…)`.
pub(crate) fn int_list<I: IntoIterator<Item = i64>>(values: I) -> String {
    let mut list = String::new();
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            list.push_str(", ");
        }
        list.push_str(&value.to_string());
    }
    if list.is_empty() {
        // `IN ()` is a syntax error; `IN (NULL)` matches nothing.
        list.push_str("NULL");
    }
    list
}

/// `template` with each `{name}` replaced by its SQL text, in the order
/// given (a value may itself hold a later placeholder).
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut sql = template.to_owned();
    for (name, value) in values {
        sql = sql.replace(&format!("{{{name}}}"), value);
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend() {
        let mut pg = Stmt::new(Backend::Postgres);
        assert_eq!(pg.text(Some("a")), "$1");
        assert_eq!(pg.text(None), "$2");
        let mut lite = Stmt::new(Backend::Sqlite);
        assert_eq!(lite.text(Some("a")), "?1");
    }

    #[test]
    fn integer_lists() {
        assert_eq!(int_list([1, 2, 3]), "1, 2, 3");
        assert_eq!(int_list([]), "NULL");
    }

    #[test]
    fn fixed_clocks_are_literals() {
        assert_eq!(Clock::At(42).sql(Backend::Postgres), "(42)");
        assert!(
            Clock::Database { skew_ms: 5 }
                .sql(Backend::Sqlite)
                .ends_with("+ 5)")
        );
    }
}
