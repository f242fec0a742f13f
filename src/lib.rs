//! modalbench: when does adding the image improve text classification, and when is it only
//! compute overhead? A service that queues fine-tuning jobs, runs them in worker processes with
//! libtorch, keeps their metrics in SQLite and renders leaderboards.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod http;
pub mod live;
pub mod models;
pub mod protocol;
pub mod queue;
pub mod runs;
pub mod secret;
pub mod store;
pub mod studies;
pub mod train;
pub mod verdict;
pub mod worker;
