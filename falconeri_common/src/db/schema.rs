//! Diesel table definitions, shared by both backends (hand-written to match
//! `migrations/`).

diesel::table! {
    jobs (id) {
        id -> BigInt,
        name -> Text,
        pipeline_name -> Text,
        spec -> Text,
        status -> Text,
        datum_count -> BigInt,
        parallelism -> Integer,
        datum_tries -> Integer,
        datum_timeout_ms -> Nullable<BigInt>,
        egress_uri -> Text,
        worker_token -> Text,
        created_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        deadline_at -> Nullable<BigInt>,
        error_message -> Nullable<Text>,
        retry_of -> Nullable<BigInt>,
        planning_lease_until -> Nullable<BigInt>,
        max_failed_datums -> Nullable<BigInt>,
        failed_datums -> Nullable<BigInt>,
        incremental -> Bool,
        skipped_count -> BigInt,
        previous_job_id -> Nullable<BigInt>,
        vanished_count -> Nullable<BigInt>,
        run_key -> Nullable<Text>,
    }
}

diesel::table! {
    datums (id) {
        id -> BigInt,
        job_id -> BigInt,
        seq -> BigInt,
        status -> Text,
        attempt -> Integer,
        interrupted -> Integer,
        max_tries -> Integer,
        owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        deadline_at -> Nullable<BigInt>,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        output -> Nullable<Text>,
        error_message -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        pod_failures -> Integer,
        ready_order -> Nullable<BigInt>,
        fingerprint -> Nullable<Text>,
        input_key -> Nullable<Text>,
        skipped_from -> Nullable<BigInt>,
        skipped_from_job -> Nullable<BigInt>,
    }
}

diesel::table! {
    skipped_runs (id) {
        id -> BigInt,
        job_id -> BigInt,
        first_seq -> BigInt,
        first_id -> BigInt,
        len -> BigInt,
        from_job_id -> BigInt,
        from_first_id -> BigInt,
        skipped_at -> BigInt,
    }
}

diesel::table! {
    input_files (id) {
        id -> BigInt,
        job_id -> BigInt,
        datum_id -> BigInt,
        uri -> Text,
        local_path -> Text,
    }
}

diesel::table! {
    output_files (id) {
        id -> BigInt,
        job_id -> BigInt,
        datum_id -> BigInt,
        uri -> Text,
        size -> BigInt,
        created_at -> BigInt,
        attempt -> Integer,
        staged_path -> Text,
    }
}

diesel::table! {
    attempts (id) {
        id -> BigInt,
        job_id -> BigInt,
        datum_id -> BigInt,
        number -> Integer,
        worker_id -> Text,
        started_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        outcome -> Nullable<Text>,
        exit_code -> Nullable<Integer>,
        signal -> Nullable<Integer>,
        error_message -> Nullable<Text>,
        download_files -> Nullable<BigInt>,
        download_bytes -> Nullable<BigInt>,
        download_ms -> Nullable<BigInt>,
        command_ms -> Nullable<BigInt>,
        user_cpu_ms -> Nullable<BigInt>,
        system_cpu_ms -> Nullable<BigInt>,
        max_rss_bytes -> Nullable<BigInt>,
        upload_files -> Nullable<BigInt>,
        upload_bytes -> Nullable<BigInt>,
        upload_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    log_chunks (datum_id, attempt, seq) {
        datum_id -> BigInt,
        attempt -> Integer,
        seq -> BigInt,
        job_id -> BigInt,
        start_offset -> BigInt,
        end_offset -> BigInt,
        created_at -> BigInt,
        data -> Binary,
        object -> Nullable<Text>,
    }
}

diesel::table! {
    dashboard_sessions (id_hash) {
        id_hash -> Text,
        csrf_token -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    schedules (id) {
        id -> BigInt,
        name -> Text,
        cron -> Text,
        timezone -> Text,
        target_kind -> Text,
        target -> Text,
        incremental -> Bool,
        paused -> Bool,
        next_run_at -> Nullable<BigInt>,
        last_run_at -> Nullable<BigInt>,
        last_run -> Nullable<Text>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        pending_tick -> Nullable<BigInt>,
        pending_token -> Nullable<Text>,
        pending_until -> Nullable<BigInt>,
    }
}

diesel::table! {
    workflows (id) {
        id -> BigInt,
        name -> Text,
        workflow_name -> Text,
        spec -> Text,
        created_at -> BigInt,
        schedule_id -> Nullable<BigInt>,
        incremental -> Bool,
        run_key -> Nullable<Text>,
    }
}

diesel::table! {
    workflow_steps (id) {
        id -> BigInt,
        workflow_id -> BigInt,
        position -> Integer,
        name -> Text,
        spec -> Text,
        upstream -> Text,
        state -> Text,
        job_id -> Nullable<BigInt>,
        claim_token -> Nullable<Text>,
        claim_until -> Nullable<BigInt>,
        reason -> Nullable<Text>,
        updated_at -> BigInt,
    }
}

diesel::joinable!(datums -> jobs (job_id));
diesel::joinable!(input_files -> datums (datum_id));
diesel::joinable!(output_files -> datums (datum_id));
diesel::table! {
    job_stop_requests (job_id) {
        job_id -> BigInt,
        reason -> Text,
        created_at -> BigInt,
    }
}

diesel::joinable!(attempts -> datums (datum_id));
diesel::joinable!(log_chunks -> datums (datum_id));
diesel::allow_tables_to_appear_in_same_query!(
    jobs,
    datums,
    input_files,
    output_files,
    attempts,
    log_chunks,
    schedules,
    workflows,
    workflow_steps
);
diesel::joinable!(workflow_steps -> workflows (workflow_id));
diesel::joinable!(workflow_steps -> jobs (job_id));

diesel::table! {
    /// The counter skipped datums' id blocks come from (one row).
    skipped_datum_ids (id) {
        id -> Integer,
        next_id -> BigInt,
    }
}
