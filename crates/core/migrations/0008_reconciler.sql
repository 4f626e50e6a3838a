-- A safety net under the promise (issue #24).
--
-- Settlement looks at every running job, least recently checked first: `checked_at` is the last
-- time a settler counted the job (under its row lock), kept in the table so every replica agrees
-- on the order. The index makes "the running jobs, least recently checked first" one range.
--
-- The reconciler records on the job what it did, so the job view (and `accrualctl job`) can say
-- it: how often it re-sent points that were neither written nor dead-lettered, how many, how many
-- it gave up on (dead-lettered as lost in transit), and when it last compared the job.
ALTER TABLE accrual_jobs
    ADD COLUMN checked_at DATETIME(6) NULL,
    ADD COLUMN reconcile_attempts INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN points_resent INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN points_given_up INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN reconciled_at DATETIME(6) NULL,
    ADD KEY ix_accrual_jobs_checked (status, checked_at);
