-- How often the pods running a datum were ended by the infrastructure
-- (evicted, preempted, OOM-killed, node lost). Such attempts count as
-- interrupted, not as tries; this count bounds them
-- (FALCONERI_KUBERNETES_MAX_POD_FAILURES).
ALTER TABLE datums ADD COLUMN pod_failures INTEGER NOT NULL DEFAULT 0;
