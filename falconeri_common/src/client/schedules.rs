//! The client's schedule calls.

use std::time::Duration;

use reqwest::Method;

use super::{Client, ClientError, encode_segment};
use crate::schedule::{ScheduleListResponse, ScheduleRequest, ScheduleResponse, paths};

impl Client {
    /// Creates a schedule.
    pub async fn create_schedule(
        &self,
        request: &ScheduleRequest,
    ) -> Result<ScheduleResponse, ClientError> {
        self.post(paths::SCHEDULES, request).await
    }

    /// Every schedule.
    pub async fn list_schedules(&self) -> Result<ScheduleListResponse, ClientError> {
        self.get(paths::SCHEDULES).await
    }

    /// Deletes a schedule; answers it as it was.
    pub async fn delete_schedule(&self, name: &str) -> Result<ScheduleResponse, ClientError> {
        let path = paths::schedule(&encode_segment(name));
        self.send::<(), (), _>(Method::DELETE, &path, None, None, Duration::ZERO)
            .await
    }

    /// Pauses a schedule.
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleResponse, ClientError> {
        self.post(&paths::schedule_pause(&encode_segment(name)), &())
            .await
    }

    /// Resumes a schedule.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleResponse, ClientError> {
        self.post(&paths::schedule_resume(&encode_segment(name)), &())
            .await
    }
}
