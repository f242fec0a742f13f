//! Evaluation metrics.

pub mod metrics;
pub mod vqa;
