//! Integration tests, one binary so the crate links once.

mod auth;
mod checkpoints;
mod compare;
mod dataset_pages;
mod datasets_api;
mod end_to_end;
mod formats;
mod helpers;
mod leaderboard;
mod metrics;
mod mlflow;
mod pages;
mod parity;
mod parity_clip;
mod parity_flava;
mod parity_mobilenet;
mod parity_vilt;
mod preprocessing;
mod python_client;
mod queue;
mod runs_api;
mod stats;
mod studies;
mod submit;
mod training;
mod xss;
