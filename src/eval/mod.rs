//! Evaluation metrics.

pub mod metrics;
