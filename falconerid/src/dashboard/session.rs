//! Dashboard sessions and the checks every dashboard action passes.
//!
//! - The cookie holds a random 256-bit session id; the database holds its
//!   SHA-256 and the session's own CSRF token ([`Session`]). The admin
//!   token is never put in the cookie, so a leaked cookie ends with its
//!   session (sign-out or expiry), and the token need not change.
//! - The cookie is `HttpOnly` (scripts cannot read it), `SameSite=Strict`
//!   (no other site's page makes the browser send it) and `Secure` when the
//!   dashboard is reached over TLS.
//! - Every action (a POST) must carry the session's CSRF token, in the
//!   `X-CSRF-Token` header or a `csrf` form field, and an `Origin` naming
//!   this server. Either alone would stop a forged request from another
//!   site; both together also cover old browsers without SameSite.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use falconeri_common::models::{db_now, session::Session};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    error::{AppError, AppResult},
    state::AppState,
};

/// The name of the session cookie.
pub const SESSION_COOKIE: &str = "falconeri_session";

/// The header a dashboard script sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Starts a session; returns the cookie's id and how long it lasts.
pub async fn create(state: &AppState) -> AppResult<(String, Duration)> {
    let cookie_id = hex::encode(rand::random::<[u8; 32]>());
    let csrf_token = hex::encode(rand::random::<[u8; 32]>());
    let ttl = state.config().dashboard_session_ttl;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let id_hash = hash(&cookie_id);
    state
        .db(move |conn| {
            let now = db_now(conn)?;
            let session = Session {
                id_hash,
                csrf_token,
                expires_at: now.saturating_add(ttl_ms),
            };
            conn.write_transaction(|conn| Session::create(conn, &session, now))
        })
        .await?;
    Ok((cookie_id, ttl))
}

/// The browser's live session, if its cookie names one.
pub async fn current(state: &AppState, headers: &HeaderMap) -> AppResult<Option<Session>> {
    let Some(cookie_id) = cookie_value(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    // Anything but our own 64 hex digits cannot be a session: no look-up.
    if cookie_id.len() != 64 || !cookie_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let id_hash = hash(&cookie_id);
    state
        .db(move |conn| {
            let now = db_now(conn)?;
            Session::find_valid(conn, &id_hash, now)
        })
        .await
}

/// The browser's live session, or 401.
pub async fn require(state: &AppState, headers: &HeaderMap) -> AppResult<Session> {
    current(state, headers).await?.ok_or(AppError::Unauthorized)
}

/// Ends `session`.
pub async fn delete(state: &AppState, session: Session) -> AppResult<()> {
    state
        .db(move |conn| conn.write_transaction(|conn| Session::delete(conn, &session.id_hash)))
        .await
}

/// Refuses (403) an action whose `Origin` is not this server or whose CSRF
/// token (header, else `form_token`) is not the session's.
pub fn check_action(
    headers: &HeaderMap,
    session: &Session,
    form_token: Option<&str>,
) -> AppResult<()> {
    check_origin(headers)?;
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .or(form_token)
        .unwrap_or("");
    if sent.is_empty() || !bool::from(sent.as_bytes().ct_eq(session.csrf_token.as_bytes())) {
        return Err(AppError::Forbidden(
            "missing or wrong CSRF token: reload the dashboard page".to_owned(),
        ));
    }
    Ok(())
}

/// Refuses (403) a request whose `Origin` header is missing or names
/// another host than the one the request was sent to. Browsers send
/// `Origin` with every POST, so only a forged or non-browser request lacks
/// it.
pub fn check_origin(headers: &HeaderMap) -> AppResult<()> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok());
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) if origin_matches(origin, host) => Ok(()),
        (None, _) => Err(AppError::Forbidden(
            "a dashboard action needs an Origin header".to_owned(),
        )),
        _ => Err(AppError::Forbidden(
            "the request comes from another site than this dashboard".to_owned(),
        )),
    }
}

/// True when `origin` (`scheme://host[:port]`) is `host` over HTTP(S).
fn origin_matches(origin: &str, host: &str) -> bool {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// Whether the cookie gets `Secure`: configured, or the request came
/// through a TLS-terminating proxy.
pub fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.config().dashboard_secure_cookie
        || headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value for session `id` lasting `max_age` seconds
/// (0 and an empty id clear it).
pub fn cookie(id: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// The hex SHA-256 of a cookie id: what the database stores.
fn hash(cookie_id: &str) -> String {
    hex::encode(Sha256::digest(cookie_id.as_bytes()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; falconeri_session=abc ; b=2")]);
        assert_eq!(cookie_value(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "falconeri_session=x")]);
        assert_eq!(cookie_value(&h, SESSION_COOKIE).as_deref(), Some("x"));
        assert_eq!(cookie_value(&headers(&[]), SESSION_COOKIE), None);
    }

    #[test]
    fn an_origin_must_name_the_host_the_request_was_sent_to() {
        assert!(origin_matches("http://127.0.0.1:8089", "127.0.0.1:8089"));
        assert!(origin_matches(
            "https://Falconeri.example",
            "falconeri.example"
        ));
        assert!(!origin_matches("http://evil.example", "127.0.0.1:8089"));
        assert!(!origin_matches("http://127.0.0.1:8090", "127.0.0.1:8089"));
        assert!(!origin_matches("null", "127.0.0.1:8089"));
        assert!(check_origin(&headers(&[("host", "h:1")])).is_err());
        assert!(check_origin(&headers(&[("host", "h:1"), ("origin", "http://h:1")])).is_ok());
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        assert_eq!(
            cookie("ab", 60, false),
            "falconeri_session=ab; Path=/; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        assert!(cookie("ab", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn the_database_holds_a_hash_not_the_id() {
        let id = "00".repeat(32);
        assert_eq!(hash(&id).len(), 64);
        assert_ne!(hash(&id), id);
    }

    #[test]
    fn actions_need_the_sessions_csrf_token() {
        let session = Session {
            id_hash: String::new(),
            csrf_token: "secret".to_owned(),
            expires_at: 0,
        };
        let base = [("host", "h"), ("origin", "http://h")];
        assert!(check_action(&headers(&base), &session, None).is_err());
        assert!(check_action(&headers(&base), &session, Some("secret")).is_ok());
        assert!(check_action(&headers(&base), &session, Some("wrong")).is_err());
        let with_header = [
            ("host", "h"),
            ("origin", "http://h"),
            ("x-csrf-token", "secret"),
        ];
        assert!(check_action(&headers(&with_header), &session, None).is_ok());
        let foreign = [
            ("host", "h"),
            ("origin", "http://x"),
            ("x-csrf-token", "secret"),
        ];
        assert!(check_action(&headers(&foreign), &session, None).is_err());
    }
}
