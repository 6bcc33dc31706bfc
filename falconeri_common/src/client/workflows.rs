//! The client's workflow and schedule calls (kept apart from the job and
//! worker calls of `client.rs`).

use std::time::Duration;

use reqwest::Method;

use super::{Client, ClientError, JOB_START_WAIT, encode_segment, millis};
use crate::{
    api::{ProgressQuery, WorkflowListQuery},
    workflow::{
        WorkflowListResponse, WorkflowProgressResponse, WorkflowResponse, WorkflowSpec, paths,
    },
};

impl Client {
    /// Runs a workflow (every step's spec inline).
    pub async fn run_workflow(
        &self,
        workflow: &WorkflowSpec,
    ) -> Result<WorkflowResponse, ClientError> {
        self.send::<(), _, _>(
            Method::POST,
            paths::WORKFLOWS,
            None,
            Some(workflow),
            JOB_START_WAIT,
        )
        .await
    }

    /// The newest workflow runs.
    pub async fn list_workflows(
        &self,
        limit: Option<i64>,
    ) -> Result<WorkflowListResponse, ClientError> {
        let query = WorkflowListQuery { limit };
        self.send::<_, (), _>(
            Method::GET,
            paths::WORKFLOWS,
            Some(&query),
            None,
            Duration::ZERO,
        )
        .await
    }

    /// Retries run `id`'s failed steps (`workflow retry`).
    pub async fn retry_workflow(&self, id: i64) -> Result<WorkflowResponse, ClientError> {
        self.post(&paths::workflow_retry(id), &()).await
    }

    /// A workflow run named by a user: a name, or a number meaning an id.
    pub async fn find_workflow(&self, name_or_id: &str) -> Result<WorkflowResponse, ClientError> {
        match self
            .get(&paths::workflow_by_name(&encode_segment(name_or_id)))
            .await
        {
            Err(err) if err.is_not_found() => match name_or_id.parse::<i64>() {
                Ok(id) => self.get(&paths::workflow(id)).await,
                Err(_) => Err(err),
            },
            other => other,
        }
    }

    /// Waits (long-poll) until a job or step changed after `since`, or
    /// `wait` passes.
    pub async fn workflow_progress(
        &self,
        id: i64,
        since: Option<u64>,
        wait: Duration,
    ) -> Result<WorkflowProgressResponse, ClientError> {
        let query = ProgressQuery {
            since,
            wait_ms: Some(millis(wait)),
        };
        self.send::<_, (), _>(
            Method::GET,
            &paths::workflow_progress(id),
            Some(&query),
            None,
            wait,
        )
        .await
    }
}
