-- What a finished run cost, beside its scores for the leaderboard (the whole cost, and the
-- rest of the summary, is in `summary`): the worker's peak memory (the GPU allocator's peak
-- where the run had GPUs, else the peak resident memory), the device-hours it held, and the
-- estimated training FLOPs.
ALTER TABLE runs ADD COLUMN peak_memory_bytes INTEGER;
ALTER TABLE runs ADD COLUMN device_hours REAL;
ALTER TABLE runs ADD COLUMN train_flops REAL;
