//! Reading and writing weights in Hugging Face layout (`model.safetensors`, keys as Hugging Face
//! names them).

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;
use tch::nn::VarStore;

/// What loading did besides copying tensors one to one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Model parameters the checkpoint did not provide (or provided with another shape) and
    /// that keep their fresh initialisation, such as a new classification head.
    pub fresh: Vec<String>,
    /// Checkpoint tensors the model does not use (pre-training heads, buffers).
    pub unused: Vec<String>,
}

/// Names a checkpoint may use for the model parameter `name`: the name itself, without the
/// task-model prefix (a base-model checkpoint loaded into `*ForSequenceClassification`), and
/// the legacy TensorFlow-era LayerNorm names `gamma` / `beta`.
fn candidates(name: &str, base_prefix: &str) -> Vec<String> {
    let mut names = vec![name.to_string()];
    if let Some(rest) = name.strip_prefix(base_prefix) {
        names.push(rest.to_string());
    }
    let legacy: Vec<String> = names
        .iter()
        .filter_map(|n| {
            n.strip_suffix("LayerNorm.weight")
                .map(|s| format!("{s}LayerNorm.gamma"))
                .or_else(|| {
                    n.strip_suffix("LayerNorm.bias")
                        .map(|s| format!("{s}LayerNorm.beta"))
                })
        })
        .collect();
    names.extend(legacy);
    names
}

/// Copies the tensors of `file` into the variables of `vs`.
///
/// `base_prefix` is the sub-module the base model lives under in the task model (`bert.`).
/// Parameters for which `may_be_fresh` holds (a classification head) keep their
/// initialisation when the checkpoint lacks them or has them with another shape; any other
/// missing tensor or shape mismatch is an error naming the tensor.
pub fn load_safetensors(
    vs: &mut VarStore,
    file: &Path,
    base_prefix: &str,
    may_be_fresh: impl Fn(&str) -> bool,
) -> Result<LoadReport> {
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(file)
        .with_context(|| format!("reading {}", file.display()))?
        .into_iter()
        .collect();
    let fname = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    // a checkpoint saved from the base model has no task-model prefix on any key
    let is_base_checkpoint =
        !base_prefix.is_empty() && !tensors.keys().any(|k| k.starts_with(base_prefix));
    let mut report = LoadReport::default();
    let mut used = std::collections::HashSet::new();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        let names = candidates(&name, base_prefix);
        let Some((key, src)) = names.iter().find_map(|n| tensors.get(n).map(|t| (n, t))) else {
            if may_be_fresh(&name) {
                report.fresh.push(name);
                continue;
            }
            let expected = match name.strip_prefix(base_prefix) {
                Some(rest) if is_base_checkpoint => rest,
                _ => name.as_str(),
            };
            bail!("{fname} has no tensor `{expected}`, which the model needs");
        };
        if src.size() != var.size() {
            if may_be_fresh(&name) {
                report.fresh.push(name);
                used.insert(key.clone());
                continue;
            }
            bail!(
                "{fname}: tensor `{key}` has shape {:?}, the config implies {:?}",
                src.size(),
                var.size()
            );
        }
        tch::no_grad(|| var.copy_(&src.to_kind(var.kind())));
        used.insert(key.clone());
    }
    report.unused = tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    report.unused.sort();
    Ok(report)
}

/// Writes every variable of `vs` to `file` under its path name (the Hugging Face key).
pub fn save_safetensors(vs: &VarStore, file: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, file).with_context(|| format!("writing {}", file.display()))
}

/// Shapes of the tensors in a safetensors file, read from its header only.
pub fn tensor_shapes(file: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", file.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        bail!(
            "{}: not a safetensors file (header of {n} bytes)",
            file.display()
        );
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: truncated header", file.display()))?;
    let meta: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .with_context(|| format!("{}: header is not JSON", file.display()))?;
    let mut out = Vec::new();
    for (k, v) in meta {
        if k == "__metadata__" {
            continue;
        }
        let shape = v
            .get("shape")
            .and_then(|s| s.as_array())
            .with_context(|| format!("{}: tensor `{k}` has no shape", file.display()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{}: tensor `{k}` has a bad shape", file.display()))?;
        out.push((k, shape));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_may_come_from_a_base_model_or_a_legacy_name() {
        assert_eq!(
            candidates("bert.embeddings.LayerNorm.weight", "bert."),
            vec![
                "bert.embeddings.LayerNorm.weight",
                "embeddings.LayerNorm.weight",
                "bert.embeddings.LayerNorm.gamma",
                "embeddings.LayerNorm.gamma"
            ]
        );
        assert_eq!(
            candidates("classifier.bias", "bert."),
            vec!["classifier.bias"]
        );
    }
}
