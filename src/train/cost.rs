//! What a run costs: peak memory of the worker, and an estimate of its training FLOPs (the
//! usual 6 × parameters × tokens of Kaplan et al., 2020: 2 for the forward pass, 4 for the
//! backward, per non-embedding parameter per token; image patches count as tokens).

use crate::train::optim::AdamW;
use serde_json::Value;

/// The worker's peak resident memory so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident memory to the current one (Linux: `5` to `/proc/self/clear_refs`),
/// so a benchmark can measure one phase.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Trainable parameters outside embedding tables (a table lookup costs no multiply-adds).
pub fn non_embedding_parameters(opt: &AdamW) -> u64 {
    opt.params()
        .iter()
        .filter(|p| !p.name.contains("embeddings.") || p.name.contains("patch_embed"))
        .map(|p| p.tensor.numel() as u64)
        .sum()
}

/// Image tokens a text+image model makes of one image: its vision config's patches (and a
/// class token), or 1 for an image tower without patches.
pub fn image_tokens(config: &Value) -> u64 {
    fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
        match v {
            Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|c| find(c, key))),
            _ => None,
        }
    }
    let size = find(config, "image_size").and_then(Value::as_u64);
    let patch = find(config, "patch_size").and_then(Value::as_u64);
    match (size, patch) {
        (Some(s), Some(p)) if p > 0 => (s / p) * (s / p) + 1,
        _ => 1,
    }
}

/// Estimated training FLOPs: 6 × non-embedding parameters × tokens.
pub fn training_flops(non_embedding_parameters: u64, tokens: u64) -> f64 {
    6.0 * non_embedding_parameters as f64 * tokens as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_tokens_come_from_the_vision_config() {
        let clip = json!({"vision_config": {"image_size": 224, "patch_size": 32}});
        assert_eq!(image_tokens(&clip), 50);
        assert_eq!(image_tokens(&json!({"hidden_size": 8})), 1);
        assert_eq!(training_flops(1000, 10), 60_000.0);
    }

    #[test]
    fn peak_memory_is_read_and_grows_with_use() {
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        assert!(peak_rss_bytes().unwrap() >= 64 << 20);
    }
}
