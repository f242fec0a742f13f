-- A run is resolved once, when it is submitted: the checkpoint folder and the dataset's source
-- (format, folder, options) it will use, as JSON {"model_dir", "dataset"}. The supervisor
-- makes the worker's job from it without looking the names up again. NULL for runs queued
-- before this column existed.
ALTER TABLE runs ADD COLUMN resolved TEXT;
