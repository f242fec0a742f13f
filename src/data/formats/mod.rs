//! Readers for the on-disk layouts datasets are published in.

pub mod hateful_memes;
