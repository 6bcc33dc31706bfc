//! The web dashboard through `app()`: sign-in and its cookie, sessions that
//! end, CSRF and origin checks on every action, worker tokens refused, the
//! REST API untouched by cookies, the HTML pages and assets, and the REST
//! routes the dashboard added (datum paging by status and outcome, a job's
//! attempts, one datum retried, jobs by state and name) on both databases.

#![allow(clippy::unwrap_used)]

mod common;

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use common::{ADMIN, TestServer};
use falconeri_common::models::session::Session;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const HOST: &str = "dash.test:8089";
const ORIGIN: &str = "http://dash.test:8089";

/// A raw answer: status, headers, body text.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("{}: not JSON: {}", self.status, self.body))
    }
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap())
            .unwrap_or("")
    }
}

/// A browser-like request to the app: Host always, the rest as given.
async fn send(
    server: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, HOST);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = server.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Signs in with `token`; answers the raw answer.
async fn sign_in_with(server: &TestServer, token: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("origin", ORIGIN)];
    headers.extend_from_slice(extra);
    let form = format!("token={token}");
    send(server, Method::POST, "/login", &headers, Some(&form)).await
}

/// A signed-in browser: its cookie header and the page's CSRF token.
struct Browser {
    cookie: String,
    id: String,
    csrf: String,
}

async fn sign_in(server: &TestServer) -> Browser {
    let answer = sign_in_with(server, ADMIN, &[]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let set = answer.header(header::SET_COOKIE).to_owned();
    let id = set
        .strip_prefix("falconeri_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    let cookie = format!("falconeri_session={id}");
    let page = send(server, Method::GET, "/", &[("cookie", &cookie)], None).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page
        .body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    Browser { cookie, id, csrf }
}

impl Browser {
    /// A dashboard action through the gateway, with the session's token and
    /// this server as the origin.
    async fn act(&self, server: &TestServer, path: &str) -> Answer {
        let headers = [
            ("cookie", self.cookie.as_str()),
            ("origin", ORIGIN),
            ("x-csrf-token", self.csrf.as_str()),
        ];
        send(
            server,
            Method::POST,
            &format!("/ui/api{path}"),
            &headers,
            None,
        )
        .await
    }

    async fn get(&self, server: &TestServer, path: &str) -> Answer {
        send(
            server,
            Method::GET,
            path,
            &[("cookie", self.cookie.as_str())],
            None,
        )
        .await
    }
}

async fn create_job(server: &TestServer, inputs: &[(&str, &str)], extra: Value) -> i64 {
    let spec = server.spec_with_inputs(inputs, extra);
    let (status, job) = server
        .call(Method::POST, "/v1/jobs", Some(ADMIN), Some(spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_i64().unwrap()
}

fn worker_token(server: &TestServer, job_id: i64) -> String {
    server
        .executor
        .launches
        .lock()
        .unwrap()
        .iter()
        .find(|launch| launch.job_id == job_id)
        .map(|launch| launch.worker_token.clone())
        .unwrap()
}

/// Reserves one datum of `job_id` as `worker` and fails it; answers its id.
async fn reserve_and_fail(server: &TestServer, job_id: i64, token: &str, worker: &str) -> i64 {
    let (status, reserved) = server
        .call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/reserve"),
            Some(token),
            Some(json!({ "worker_id": worker, "wait_ms": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reserved}");
    let datum_id = reserved["datum_id"].as_i64().unwrap();
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/v1/datums/{datum_id}/error"),
            Some(token),
            Some(json!({ "claim": reserved["claim"], "output": "", "error": "exit status 3" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    datum_id
}

#[tokio::test]
async fn signing_in_sets_an_http_only_strict_cookie_that_holds_no_token() {
    for server in TestServer::all() {
        let answer = sign_in_with(&server, ADMIN, &[]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.header(header::LOCATION), "/");
        let cookie = answer.header(header::SET_COOKIE);
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(cookie.contains(flag), "{flag} missing: {cookie}");
        }
        assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
        assert!(!cookie.contains(ADMIN), "the token leaked: {cookie}");

        // Behind a TLS-terminating proxy the cookie is Secure.
        let answer = sign_in_with(&server, ADMIN, &[("x-forwarded-proto", "https")]).await;
        assert!(answer.header(header::SET_COOKIE).ends_with("; Secure"));

        // The database holds a hash of the id, not the id.
        let browser = sign_in(&server).await;
        let hash = hex::encode(Sha256::digest(browser.id.as_bytes()));
        let mut conn = server.db.pool.get().unwrap();
        let stored = Session::find_valid(&mut conn, &hash, 0).unwrap().unwrap();
        assert_eq!(stored.csrf_token, browser.csrf);
        assert!(
            Session::find_valid(&mut conn, &browser.id, 0)
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn the_secure_flag_can_be_configured() {
    let mut server = TestServer::new(falconeri_common::db::testing::TestDb::sqlite());
    let mut config = server.state.config().clone();
    config.dashboard_secure_cookie = true;
    let state = falconerid::AppState::new(
        config,
        server.db.pool.clone(),
        server.state.executor().clone(),
    );
    server.app = falconerid::app(state);
    let answer = sign_in_with(&server, ADMIN, &[]).await;
    assert!(answer.header(header::SET_COOKIE).ends_with("; Secure"));
}

#[tokio::test]
async fn worker_tokens_and_wrong_tokens_cannot_sign_in() {
    for server in TestServer::all() {
        let job_id = create_job(&server, &[("a", "1")], json!({})).await;
        let worker = worker_token(&server, job_id);
        for token in [worker.as_str(), "not-the-token-at-all", ""] {
            let answer = sign_in_with(&server, token, &[]).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token}");
            assert!(answer.header(header::SET_COOKIE).is_empty());
            assert!(answer.body.contains("cannot sign in"), "{}", answer.body);
        }
        // A form without the field is a wrong token; a body that is no
        // form is a 400 with the usual JSON error.
        let answer = send(
            &server,
            Method::POST,
            "/login",
            &[("origin", ORIGIN)],
            Some(""),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        let answer = send(
            &server,
            Method::POST,
            "/login",
            &[("origin", ORIGIN), ("content-type", "application/json")],
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert_eq!(answer.json()["error"]["code"], "bad_request");
        // Nor without an Origin naming this server.
        let form = format!("token={ADMIN}");
        let answer = send(&server, Method::POST, "/login", &[], Some(&form)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        let answer = send(
            &server,
            Method::POST,
            "/login",
            &[("origin", "http://elsewhere.test")],
            Some(&form),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.json()["error"]["code"], "forbidden");
    }
}

#[tokio::test]
async fn actions_need_the_csrf_token_and_this_origin() {
    for server in TestServer::all() {
        let job_id = create_job(&server, &[("a", "1"), ("b", "2")], json!({})).await;
        let browser = sign_in(&server).await;
        let path = format!("/ui/api/v1/jobs/{job_id}/cancel");
        let cookie = browser.cookie.as_str();
        let csrf = browser.csrf.as_str();
        let refused: [&[(&str, &str)]; 5] = [
            &[("cookie", cookie), ("origin", ORIGIN)],
            &[
                ("cookie", cookie),
                ("origin", ORIGIN),
                ("x-csrf-token", "0"),
            ],
            &[("cookie", cookie), ("x-csrf-token", csrf)],
            &[
                ("cookie", cookie),
                ("origin", "http://evil.test"),
                ("x-csrf-token", csrf),
            ],
            &[
                ("cookie", cookie),
                ("origin", "null"),
                ("x-csrf-token", csrf),
            ],
        ];
        for headers in refused {
            let answer = send(&server, Method::POST, &path, headers, None).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{headers:?}");
            assert_eq!(answer.json()["error"]["code"], "forbidden");
        }
        let (_, job) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{job_id}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_ne!(
            job["status"], "canceled",
            "a refused action changed nothing"
        );

        let answer = browser
            .act(&server, &format!("/v1/jobs/{job_id}/cancel"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.json()["status"], "canceled");

        // Sign-out is an action too.
        let answer = send(
            &server,
            Method::POST,
            "/logout",
            &[("cookie", cookie), ("origin", ORIGIN)],
            Some("csrf=wrong"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn the_rest_api_ignores_cookies_and_the_gateway_ignores_bearer_tokens() {
    for server in TestServer::all() {
        let browser = sign_in(&server).await;
        let answer = browser.get(&server, "/v1/jobs").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        let answer = send(
            &server,
            Method::GET,
            "/ui/api/v1/jobs",
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json()["error"]["code"], "unauthorized");
        let answer = browser.get(&server, "/ui/api/v1/jobs").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.json()["jobs"].is_array());
        // The path goes on as it was sent: an encoded `/` stays in the name.
        let answer = browser
            .get(&server, "/ui/api/v1/jobs/by-name/no%2Fsuch")
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
        assert!(answer.body.contains("no/such"), "{}", answer.body);

        // Only the dashboard's own routes pass the gateway.
        for path in [
            "/ui/api/metrics",
            "/ui/api/v1/openapi.json",
            "/ui/api/readyz",
        ] {
            assert_eq!(
                browser.get(&server, path).await.status,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        let answer = browser.act(&server, "/v1/jobs/1/reserve").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn an_expired_or_signed_out_session_is_refused() {
    for server in TestServer::all() {
        let browser = sign_in(&server).await;
        let hash = hex::encode(Sha256::digest(browser.id.as_bytes()));
        {
            let mut conn = server.db.pool.get().unwrap();
            Session::set_expiry(&mut conn, &hash, 1).unwrap();
        }
        let answer = browser.get(&server, "/").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.header(header::LOCATION), "/login");
        let answer = browser.get(&server, "/ui/api/v1/jobs").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

        let browser = sign_in(&server).await;
        let form = format!("csrf={}", browser.csrf);
        let answer = send(
            &server,
            Method::POST,
            "/logout",
            &[("cookie", &browser.cookie), ("origin", ORIGIN)],
            Some(&form),
        )
        .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.header(header::LOCATION), "/login");
        assert!(answer.header(header::SET_COOKIE).contains("Max-Age=0"));
        // The old cookie is worthless now, even if a browser kept it.
        assert_eq!(
            browser.get(&server, "/ui/api/v1/jobs").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn pages_and_assets_are_served() {
    let server = TestServer::new(falconeri_common::db::testing::TestDb::sqlite());
    let answer = send(&server, Method::GET, "/", &[], None).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.header(header::LOCATION), "/login");
    let login = send(&server, Method::GET, "/login", &[], None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains("<label for=\"token\">"));
    assert!(login.body.contains("name=\"viewport\""));

    let browser = sign_in(&server).await;
    for (path, page) in [("/", "jobs"), ("/jobs/7", "job"), ("/datums/9", "datum")] {
        let answer = browser.get(&server, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert!(answer.header(header::CONTENT_TYPE).starts_with("text/html"));
        assert!(answer.body.contains(&format!("data-page=\"{page}\"")));
        let policy = answer.header(header::CONTENT_SECURITY_POLICY);
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
    }
    for (name, kind) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
        let answer = send(
            &server,
            Method::GET,
            &format!("/ui/assets/{name}"),
            &[],
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.header(header::CONTENT_TYPE).starts_with(kind));
        assert!(!answer.body.contains("http://") && !answer.body.contains("https://"));
    }
    let answer = send(&server, Method::GET, "/ui/assets/nope.js", &[], None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json()["error"]["code"], "not_found");
}

/// Keyset pages of a job's datums, whole and by status and outcome, meet
/// every datum once, in id order.
#[tokio::test]
async fn datums_page_by_id_with_status_and_outcome_filters() {
    for server in TestServer::all() {
        let inputs: Vec<(String, String)> = (0..7).map(|i| (format!("f{i}"), "x".into())).collect();
        let inputs: Vec<(&str, &str)> = inputs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let job_id = create_job(&server, &inputs, json!({ "datum_tries": 1 })).await;
        let token = worker_token(&server, job_id);
        let failed = reserve_and_fail(&server, job_id, &token, "w1").await;

        let page = |query: String| {
            let server = &server;
            async move {
                let (status, body) = server
                    .call(
                        Method::GET,
                        &format!("/v1/jobs/{job_id}/datums?{query}"),
                        Some(ADMIN),
                        None,
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                body["datums"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].as_i64().unwrap())
                    .collect::<Vec<i64>>()
            }
        };
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let ids = page(format!("limit=3{after}")).await;
            if ids.is_empty() {
                break;
            }
            after = format!("&after={}", ids.last().unwrap());
            seen.extend(ids);
        }
        assert_eq!(seen.len(), 7);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

        let ready = page("status=ready&limit=2".into()).await;
        assert_eq!(ready.len(), 2);
        let rest = page(format!("status=ready&limit=10&after={}", ready[1])).await;
        assert_eq!(ready.len() + rest.len(), 6);
        assert!(!ready.contains(&failed) && !rest.contains(&failed));
        assert_eq!(page("status=error".into()).await, vec![failed]);
        assert_eq!(page("outcome=error".into()).await, vec![failed]);
        assert_eq!(
            page(format!("outcome=error&after={failed}")).await,
            Vec::<i64>::new()
        );
        let (status, body) = server
            .call(
                Method::GET,
                &format!("/v1/jobs/{job_id}/datums?status=lost"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
}

/// A failed datum gets one more try through the dashboard, in a running
/// job or (reopening it) an ended one; its attempts show on the job's
/// timeline.
#[tokio::test]
async fn one_failed_datum_is_retried_and_attempts_are_listed() {
    for server in TestServer::all() {
        let job_id = create_job(
            &server,
            &[("a", "1"), ("b", "2")],
            json!({ "datum_tries": 1 }),
        )
        .await;
        let token = worker_token(&server, job_id);
        let failed = reserve_and_fail(&server, job_id, &token, "w1").await;
        let browser = sign_in(&server).await;

        let answer = browser
            .act(&server, &format!("/v1/datums/{failed}/retry"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.json()["datum"]["status"], "ready");
        assert_eq!(answer.json()["reopened"], false);
        // A datum that is not failed is refused.
        let answer = browser
            .act(&server, &format!("/v1/datums/{failed}/retry"))
            .await;
        assert_eq!(answer.status, StatusCode::CONFLICT);
        // The retried datum comes first, and its second failure is final.
        let again = reserve_and_fail(&server, job_id, &token, "w2").await;
        assert_eq!(again, failed);
        let (_, datum) = server
            .call(
                Method::GET,
                &format!("/v1/datums/{failed}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(datum["datum"]["status"], "error");
        assert_eq!(datum["attempts"].as_array().unwrap().len(), 2);

        let answer = browser
            .get(&server, &format!("/ui/api/v1/jobs/{job_id}/attempts"))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        let attempts = answer.json()["attempts"].as_array().unwrap().clone();
        let workers: Vec<&str> = attempts
            .iter()
            .map(|a| a["worker_id"].as_str().unwrap())
            .collect();
        assert_eq!(workers, vec!["w2", "w1"], "newest first");
        assert_eq!(attempts[0]["outcome"], "error");

        // Once the job is over, retrying a datum reopens the job.
        let (status, _) = server
            .call(
                Method::POST,
                &format!("/v1/jobs/{job_id}/cancel"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{failed}/retry"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["reopened"], true);
        assert_eq!(body["job"]["status"], "running");
        let (status, _) = server
            .call(Method::POST, "/v1/datums/999999/retry", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = server
            .call(
                Method::POST,
                &format!("/v1/datums/{failed}/retry"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "workers cannot retry");
    }
}

#[tokio::test]
async fn jobs_are_listed_by_state_and_name() {
    for server in TestServer::all() {
        let first = create_job(&server, &[("a", "1")], json!({})).await;
        let second = create_job(&server, &[("a", "1")], json!({})).await;
        server
            .call(
                Method::POST,
                &format!("/v1/jobs/{first}/cancel"),
                Some(ADMIN),
                None,
            )
            .await;
        let list = |query: &'static str| {
            let server = &server;
            async move {
                let (status, body) = server
                    .call(Method::GET, &format!("/v1/jobs?{query}"), Some(ADMIN), None)
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                body["jobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j["id"].as_i64().unwrap())
                    .collect::<Vec<i64>>()
            }
        };
        assert_eq!(list("").await, vec![second, first]);
        assert_eq!(list("status=canceled").await, vec![first]);
        assert_eq!(list("name=HTTP-TEST").await, vec![second, first]);
        assert_eq!(list("name=http-test&status=canceled").await, vec![first]);
        assert_eq!(list("name=%25").await, Vec::<i64>::new());
        assert_eq!(list("name=nothing-like-it").await, Vec::<i64>::new());
    }
}
