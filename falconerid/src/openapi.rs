//! The OpenAPI 3.1 document of falconerid's API, generated from the code
//! and served at `GET /v1/openapi.json` without authentication.
//!
//! Each handler carries a `#[utoipa::path]` attribute (method, path,
//! parameters, body, every status it answers) and each body type derives
//! `utoipa::ToSchema` (in `falconeri_common::api`). The routes are
//! registered with utoipa-axum's `routes!` (see [`crate::routes::api`]), which
//! takes a route's method and path from that same attribute: the list of
//! `routes!` calls is the one table of routes, and the router and this
//! document are both built from it, so a route cannot be served without
//! being documented, nor documented at a path it is not served on.
//!
//! The pipeline spec, the body of `POST /v1/jobs`, already has a JSON Schema
//! (schemars, `falconeri_common::pipeline::json_schema`, the one editors use);
//! [`document`] adds it to the components rather than describe the spec
//! twice. The document is checked in as `guide/src/openapi.json`; the test
//! `openapi_document_matches_the_committed_copy` fails when the two differ
//! (`FALCONERI_UPDATE_OPENAPI=1` rewrites the copy).

use std::sync::LazyLock;

use axum::{Json, http::HeaderValue, response::IntoResponse};
use falconeri_common::api::ErrorBody;
use serde_json::{Map, Value};
use utoipa::{
    IntoResponses, Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// The document's frame: title, the bearer scheme, tags. The paths come
/// from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "falconeri",
        description = "The REST API of falconerid, falconeri's server. Every route but the \
            health checks, `/metrics` and this document needs a bearer token: the admin \
            token, or (for the worker routes of its own job) a job's worker token. Every \
            error answers with an `ErrorBody`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    // `LogEvent` is the `data` of each event of the log streams, which the
    // document can only describe as text.
    components(schemas(ErrorBody, falconeri_common::api::LogEvent)),
    tags(
        (name = "jobs", description = "Jobs: start, list, follow, retry, cancel."),
        (name = "datums", description = "Datums as users see them."),
        (name = "workers", description = "The worker protocol: reserve, heartbeat, report."),
        (name = "health", description = "Liveness, readiness and version."),
        (name = "metrics", description = "Prometheus metrics."),
        (name = "openapi", description = "This document."),
        (name = "workflows", description = "Workflows: pipeline specs run as a chain."),
        (name = "schedules", description = "Schedules: runs started at the ticks of a cron expression."),
    )
)]
pub struct ApiDoc;

/// One server-sent event of a log stream, as the document describes it
/// (the log routes answer `text/event-stream`, a sequence of these).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LogStreamEvent {
    /// The `kind` of the `LogEvent` in `data`.
    event: String,
    /// A `LogEvent`, in JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Adds the `bearer` security scheme every operation names.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`--token`), or a job's worker token.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The name under which the pipeline spec's schema is a component.
pub const PIPELINE_SPEC_SCHEMA: &str = "PipelineSpec";

/// The document, built once per process.
static DOCUMENT: LazyLock<Value> = LazyLock::new(build);

/// The OpenAPI document as JSON.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// The document, pretty-printed with a final newline, as the committed
/// copy is stored.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(document()).unwrap_or_default();
    text.push('\n');
    text
}

fn build() -> Value {
    let (_, doc) = crate::routes::api().split_for_parts();
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    add_pipeline_spec(&mut doc, falconeri_common::pipeline::json_schema());
    doc
}

/// Puts the spec's JSON Schema into the components: its `$defs` become
/// components of their own (a `$ref` in an OpenAPI document resolves
/// against the document, not against the schema holding it), and its
/// references are rewritten to match. A definition whose name is taken
/// keeps the API's, and the spec's is stored as `PipelineSpec.Name`.
fn add_pipeline_spec(doc: &mut Value, mut spec: Value) {
    let defs = spec
        .as_object_mut()
        .and_then(|spec| {
            spec.remove("$schema");
            spec.remove("$defs")
        })
        .and_then(|defs| match defs {
            Value::Object(defs) => Some(defs),
            _ => None,
        })
        .unwrap_or_default();
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let renamed: Map<String, Value> = defs
        .keys()
        .map(|name| {
            let new = if schemas.contains_key(name) || name == PIPELINE_SPEC_SCHEMA {
                format!("{PIPELINE_SPEC_SCHEMA}.{name}")
            } else {
                name.clone()
            };
            (name.clone(), Value::String(new))
        })
        .collect();
    let mut add = |name: String, mut schema: Value| {
        rewrite_refs(&mut schema, &renamed);
        schemas.insert(name, schema);
    };
    for (name, schema) in defs {
        let new = renamed
            .get(&name)
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_owned();
        add(new, schema);
    }
    add(PIPELINE_SPEC_SCHEMA.to_owned(), spec);
}

/// Points every `#/$defs/X` reference at its component.
fn rewrite_refs(value: &mut Value, renamed: &Map<String, Value>) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(target)) = object.get_mut("$ref")
                && let Some(name) = target.strip_prefix("#/$defs/")
            {
                let new = renamed.get(name).and_then(Value::as_str).unwrap_or(name);
                *target = format!("#/components/schemas/{new}");
            }
            for child in object.values_mut() {
                rewrite_refs(child, renamed);
            }
        }
        Value::Array(items) => {
            for child in items {
                rewrite_refs(child, renamed);
            }
        }
        _ => {}
    }
}

/// `GET /v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "openapi",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
    security(()),
)]
pub async fn serve() -> impl IntoResponse {
    let mut response = Json(document()).into_response();
    // Generated once per build: clients may keep it for a while.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}

// The error answers, one type per status, named in the handlers'
// `responses(...)`. Each says when falconerid answers it; all carry an
// `ErrorBody`.

/// The request is malformed: a path or query parameter, or the JSON body (missing, not JSON, a wrong type, a NUL byte); the message names the field.
#[derive(IntoResponses)]
#[response(status = 400)]
pub struct BadRequest(pub ErrorBody);

/// No bearer token, or one this server does not know.
#[derive(IntoResponses)]
#[response(status = 401)]
pub struct Unauthorized(pub ErrorBody);

/// The token is valid but not for this route: a worker token on an admin route, or for another job.
#[derive(IntoResponses)]
#[response(status = 403)]
pub struct Forbidden(pub ErrorBody);

/// No such job or datum.
#[derive(IntoResponses)]
#[response(status = 404)]
pub struct NotFound(pub ErrorBody);

/// The request conflicts with the current state: a claim that is no longer current, a job that has already finished (or has not).
#[derive(IntoResponses)]
#[response(status = 409)]
pub struct Conflict(pub ErrorBody);

/// The body is larger than the server accepts (64 MiB).
#[derive(IntoResponses)]
#[response(status = 413)]
pub struct PayloadTooLarge(pub ErrorBody);

/// The database is unreachable or every connection is busy; try again.
#[derive(IntoResponses)]
#[response(status = 503)]
pub struct Unavailable(pub ErrorBody);

/// An unexpected failure; the message gives a request id to find in the server's log.
#[derive(IntoResponses)]
#[response(status = 500)]
pub struct Internal(pub ErrorBody);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn spec_definitions_become_components_and_refs_follow() {
        let mut doc = json!({"components": {"schemas": {"Taken": {"type": "string"}}}});
        let spec = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "a": {"$ref": "#/$defs/Taken"},
                "b": {"items": [{"$ref": "#/$defs/Free"}]}
            },
            "$defs": {"Taken": {"type": "integer"}, "Free": {"type": "boolean"}}
        });
        add_pipeline_spec(&mut doc, spec);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Taken"], json!({"type": "string"}));
        assert_eq!(schemas["PipelineSpec.Taken"], json!({"type": "integer"}));
        assert_eq!(schemas["Free"], json!({"type": "boolean"}));
        let spec = &schemas[PIPELINE_SPEC_SCHEMA];
        assert!(spec.get("$schema").is_none() && spec.get("$defs").is_none());
        assert_eq!(
            spec["properties"]["a"]["$ref"],
            "#/components/schemas/PipelineSpec.Taken"
        );
        assert_eq!(
            spec["properties"]["b"]["items"][0]["$ref"],
            "#/components/schemas/Free"
        );
    }
}
