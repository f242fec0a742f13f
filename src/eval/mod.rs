//! Evaluation: metrics, and the keys metric series are reported under.

pub mod keys;
pub mod metrics;
pub mod stats;
pub mod vqa;

pub use keys::{Metric, MetricKey, Scope};
