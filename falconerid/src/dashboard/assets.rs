//! The dashboard's files, embedded in the binary with `include_str!`: one
//! HTML shell for the three pages, the sign-in page, a stylesheet and a
//! script. Nothing is fetched from elsewhere, and nothing needs building.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::error::AppError;

const SHELL: &str = include_str!("../../assets/page.html");
const LOGIN: &str = include_str!("../../assets/login.html");
const STYLE: &str = include_str!("../../assets/style.css");
const SCRIPT: &str = include_str!("../../assets/app.js");

/// The pages behind sign-in; the script draws each from `data-page`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Jobs,
    Job,
    Datum,
}

impl Page {
    /// The page's HTML for a session whose CSRF token is `csrf` (hex, so
    /// it needs no escaping; it is escaped anyway).
    pub fn render(self, csrf: &str) -> String {
        let name = match self {
            Page::Jobs => "jobs",
            Page::Job => "job",
            Page::Datum => "datum",
        };
        SHELL
            .replace("{{page}}", name)
            .replace("{{csrf}}", &escape(csrf))
    }
}

/// The sign-in page, with `message` (an error) above the form.
pub fn login(message: Option<&str>) -> String {
    let message = match message {
        Some(text) => format!(
            "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
            escape(text)
        ),
        None => String::new(),
    };
    LOGIN.replace("{{message}}", &message)
}

/// An HTML answer with the headers every dashboard page carries: a
/// Content-Security-Policy that allows only this server's own script and
/// stylesheet (so injected markup could run nothing), no framing, no
/// caching of pages that hold a CSRF token.
pub fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// `GET /ui/assets/{name}`: the stylesheet and the script.
pub async fn serve(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return AppError::NotFound(format!("dashboard asset {name}")).into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Assets change with the binary; a restart must not leave stale ones.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_their_name_and_the_csrf_token() {
        let html = Page::Job.render("abc123");
        assert!(html.contains("data-page=\"job\""));
        assert!(html.contains("content=\"abc123\""));
        assert!(!html.contains("{{"));
        assert!(html.contains("name=\"viewport\""));
    }

    #[test]
    fn login_messages_are_escaped() {
        let html = login(Some("<script>x</script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!login(None).contains("{{"));
    }
}
