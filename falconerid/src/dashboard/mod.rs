//! The web dashboard, served at `/`: HTML pages for jobs, a job and a
//! datum, sign-in and sign-out, the embedded assets, and the gateway
//! through which the pages call the REST API.
//!
//! The pages are static shells plus one script (`assets/app.js`); every
//! number they show comes from the same REST API the CLI uses, called
//! through `/ui/api/…` ([`gateway`]). That gateway is the only place a
//! session cookie is accepted: the REST API under `/v1` reads bearer tokens
//! only, so a browser that holds a cookie can do nothing there, and the CLI
//! and workers are unaffected by the dashboard.
//!
//! These routes are not part of the REST API, so they are plain axum
//! routes, not in the OpenAPI document.

mod assets;
mod gateway;
mod session;

use axum::{
    Extension, Form, Router,
    extract::{Path, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{any, get},
};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::{
    error::{AppError, AppResult},
    state::AppState,
};
pub use session::SESSION_COOKIE;

/// The dashboard's routes; `api` is the REST API's router, which the
/// gateway calls in-process.
pub fn router(api: Router) -> Router<AppState> {
    Router::new()
        .route("/", get(jobs_page))
        .route("/jobs/{id}", get(job_page))
        .route("/datums/{id}", get(datum_page))
        .route("/login", get(login_page).post(sign_in))
        .route("/logout", axum::routing::post(sign_out))
        .route("/ui/assets/{name}", get(assets::serve))
        .route(
            "/ui/api/{*path}",
            any(gateway::forward).layer(Extension(gateway::Gateway { api })),
        )
}

async fn jobs_page(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Response> {
    page(&state, &headers, assets::Page::Jobs).await
}

async fn job_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(_id): Path<String>,
) -> AppResult<Response> {
    page(&state, &headers, assets::Page::Job).await
}

async fn datum_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(_id): Path<String>,
) -> AppResult<Response> {
    page(&state, &headers, assets::Page::Datum).await
}

/// A page for a signed-in browser, else a redirect to the sign-in page.
/// The page's script reads its ids from the address itself.
async fn page(state: &AppState, headers: &HeaderMap, page: assets::Page) -> AppResult<Response> {
    match session::current(state, headers).await? {
        Some(session) => Ok(assets::html(
            StatusCode::OK,
            page.render(&session.csrf_token),
        )),
        None => Ok(Redirect::to("/login").into_response()),
    }
}

async fn login_page() -> Response {
    assets::html(StatusCode::OK, assets::login(None))
}

#[derive(Deserialize)]
struct SignInForm {
    /// Missing is the same as wrong: the form again, with a 401.
    #[serde(default)]
    token: String,
}

/// Signs in with the admin token: a new server-side session, its id in an
/// HttpOnly, SameSite=Strict cookie. Only the admin token signs in; a
/// worker's job token, like any other, gets the form back with a 401.
async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> AppResult<Response> {
    session::check_origin(&headers)?;
    let Form(form) = form.map_err(bad_form)?;
    let admin = state.config().token.as_bytes();
    if !bool::from(form.token.trim().as_bytes().ct_eq(admin)) {
        return Ok(assets::html(
            StatusCode::UNAUTHORIZED,
            assets::login(Some(
                "That token cannot sign in. Use the server's admin token (a job's worker \
                 token cannot sign in).",
            )),
        ));
    }
    let (cookie_id, ttl) = session::create(&state).await?;
    let cookie = session::cookie(&cookie_id, ttl.as_secs(), session::secure(&state, &headers));
    Ok(see_other("/", cookie))
}

#[derive(Deserialize)]
struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

/// Ends the session (it is deleted on the server, not just forgotten by
/// the browser) and clears the cookie.
async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignOutForm>, FormRejection>,
) -> AppResult<Response> {
    let current = session::require(&state, &headers).await?;
    let Form(form) = form.map_err(bad_form)?;
    session::check_action(&headers, &current, Some(&form.csrf))?;
    session::delete(&state, current).await?;
    let cookie = session::cookie("", 0, session::secure(&state, &headers));
    Ok(see_other("/login", cookie))
}

/// A form that is not one (wrong content type, unreadable body) is a 400
/// with the usual JSON error, like any other bad request.
fn bad_form(rejection: FormRejection) -> AppError {
    AppError::BadRequest(format!("bad form: {}", rejection.body_text()))
}

/// A 303 to `to` that sets `cookie`.
fn see_other(to: &str, cookie: String) -> Response {
    let mut response = Redirect::to(to).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
