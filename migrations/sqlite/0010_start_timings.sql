-- When a run's worker began, finished loading and logged its first step
-- (`protocol::StartTimings` as JSON; the latest attempt's).
ALTER TABLE runs ADD COLUMN timings TEXT;
