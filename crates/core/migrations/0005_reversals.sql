-- Reversing a whole job: a reversal job writes one compensating row per written point of the
-- original (a negative amount, its own accrual_id). The ledger stays append-only; the unique keys
-- make it impossible to reverse a point, or a job, twice, even with concurrent calls.
ALTER TABLE point_accruals
    ADD COLUMN reverses BINARY(16) NULL,
    ADD UNIQUE KEY uq_point_accruals_reverses (reverses);

ALTER TABLE accrual_jobs
    ADD COLUMN reverses BINARY(16) NULL,
    ADD UNIQUE KEY uq_accrual_jobs_reverses (reverses);
