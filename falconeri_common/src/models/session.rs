//! Dashboard sessions: who signed in with the admin token, until when.
//!
//! A row is keyed by the SHA-256 of the session's random id, never the id
//! itself, so reading the table does not let anyone sign in; the id lives
//! only in the browser's cookie. Each session has its own CSRF token, which
//! the dashboard must send back with every action. Rows live in the
//! database, like all shared state, so every replica accepts them.

use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, RunQueryDsl};

use super::ModelResult;
use crate::{
    Millis,
    db::{DbConn, schema::dashboard_sessions, with_conn},
};

/// A signed-in dashboard session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The hex SHA-256 of the cookie's session id.
    pub id_hash: String,
    /// What every action of this session must carry.
    pub csrf_token: String,
    pub expires_at: Millis,
}

impl Session {
    /// Records a new session valid until `expires_at`, and deletes every
    /// session that expired before `now` (sign-ins are rare, so they are
    /// the sweep).
    #[tracing::instrument(skip_all)]
    pub fn create(conn: &mut DbConn, session: &Session, now: Millis) -> ModelResult<()> {
        with_conn!(conn, c => {
            diesel::delete(dashboard_sessions::table.filter(dashboard_sessions::expires_at.le(now)))
                .execute(c)?;
            diesel::insert_into(dashboard_sessions::table)
                .values((
                    dashboard_sessions::id_hash.eq(&session.id_hash),
                    dashboard_sessions::csrf_token.eq(&session.csrf_token),
                    dashboard_sessions::created_at.eq(now),
                    dashboard_sessions::expires_at.eq(session.expires_at),
                ))
                .execute(c)?;
        });
        Ok(())
    }

    /// The session of `id_hash` if it has not expired at `now`.
    #[tracing::instrument(skip_all)]
    pub fn find_valid(
        conn: &mut DbConn,
        id_hash: &str,
        now: Millis,
    ) -> ModelResult<Option<Session>> {
        let row: Option<(String, String, Millis)> = with_conn!(conn, c => dashboard_sessions::table
            .filter(dashboard_sessions::id_hash.eq(id_hash))
            .filter(dashboard_sessions::expires_at.gt(now))
            .select((
                dashboard_sessions::id_hash,
                dashboard_sessions::csrf_token,
                dashboard_sessions::expires_at,
            ))
            .first(c)
            .optional())?;
        Ok(row.map(|(id_hash, csrf_token, expires_at)| Session {
            id_hash,
            csrf_token,
            expires_at,
        }))
    }

    /// Ends the session of `id_hash` (sign-out); nothing if there is none.
    #[tracing::instrument(skip_all)]
    pub fn delete(conn: &mut DbConn, id_hash: &str) -> ModelResult<()> {
        with_conn!(conn, c => diesel::delete(
            dashboard_sessions::table.filter(dashboard_sessions::id_hash.eq(id_hash))
        )
        .execute(c))?;
        Ok(())
    }

    /// Moves the expiry of `id_hash` (for tests of expired sessions, and
    /// for an operator who wants to end one at a given time).
    #[tracing::instrument(skip_all)]
    pub fn set_expiry(conn: &mut DbConn, id_hash: &str, expires_at: Millis) -> ModelResult<()> {
        with_conn!(conn, c => diesel::update(
            dashboard_sessions::table.filter(dashboard_sessions::id_hash.eq(id_hash))
        )
        .set(dashboard_sessions::expires_at.eq(expires_at))
        .execute(c))?;
        Ok(())
    }
}
