-- Runs become one skipped `done` row per datum again.
INSERT INTO datums (id, job_id, seq, status, attempt, max_tries, created_at, updated_at,
    finished_at, skipped_from, skipped_from_job, fingerprint, input_key)
SELECT r.first_id + o.i, r.job_id, r.first_seq + o.i, 'done', 0, j.datum_tries, r.skipped_at,
    r.skipped_at, r.skipped_at, r.from_first_id + o.i, r.from_job_id, d.fingerprint, d.input_key
FROM skipped_runs r
JOIN jobs j ON j.id = r.job_id
CROSS JOIN LATERAL generate_series(0, r.len - 1) AS o(i)
LEFT JOIN datums d ON d.id = r.from_first_id + o.i;
DROP TABLE skipped_runs;
