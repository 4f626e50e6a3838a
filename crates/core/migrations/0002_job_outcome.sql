-- A job's outcome is stored when it happens: the counts at completion (so reading a finished job
-- never counts its ledger rows again), and an index for the jobs still being settled.
ALTER TABLE accrual_jobs
    ADD COLUMN written INT UNSIGNED NULL,
    ADD COLUMN dead_lettered INT UNSIGNED NULL,
    ADD KEY ix_accrual_jobs_status (status, created_at);

-- A dead letter recorded ahead of time (the last receive SQS allows before it moves the message
-- to the dead-letter queue) counts only from this instant, and never once its point is in the
-- ledger. NULL: counts at once.
ALTER TABLE accrual_dead_letters
    ADD COLUMN counts_from DATETIME(6) NULL;
