//! Reading and writing weights in Hugging Face layout: `model.safetensors`, a sharded
//! `model.safetensors.index.json`, or a (zip-format) `pytorch_model.bin`, keys as Hugging Face
//! names them.

use super::layers::Initialisation;
use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, Metadata};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
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

/// Where each model parameter comes from.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadPlan {
    /// (model parameter, checkpoint key) pairs to copy.
    pub copies: Vec<(String, String)>,
    pub report: LoadReport,
}

/// How a task model's parameter names relate to a checkpoint's keys.
#[derive(Clone, Copy)]
pub struct Naming<'a> {
    /// Prefix of the base model inside the task model (`bert.`, `roberta.`); a base-model
    /// checkpoint lacks it, a task-model checkpoint has it.
    pub base_prefix: &'a str,
    /// Parameters that keep their initialisation when the checkpoint lacks them or has them
    /// with another shape (a classification head, a pooler), as Hugging Face does.
    pub may_be_fresh: &'a dyn Fn(&str) -> bool,
}

/// Names a checkpoint may use for the model parameter `name`: the name itself, with the
/// base-model prefix removed or added, and each with the TensorFlow-era LayerNorm names
/// `gamma` / `beta`.
fn candidates(name: &str, base_prefix: &str) -> Vec<String> {
    let mut names = vec![name.to_string()];
    if !base_prefix.is_empty() {
        match name.strip_prefix(base_prefix) {
            Some(rest) => names.push(rest.to_string()),
            None => names.push(format!("{base_prefix}{name}")),
        }
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

/// Matches model parameters (name, shape) against checkpoint tensors (key, shape). A missing
/// tensor or a shape mismatch on a parameter that may not be fresh is an error naming the
/// tensor (as the checkpoint would name it) and both shapes.
pub fn plan(
    params: &[(String, Vec<i64>)],
    tensors: &HashMap<String, Vec<i64>>,
    naming: Naming,
    file: &str,
) -> Result<LoadPlan> {
    let prefix = naming.base_prefix;
    // a base-model checkpoint has no key with the task model's prefix
    let base_checkpoint = !prefix.is_empty() && !tensors.keys().any(|k| k.starts_with(prefix));
    let mut out = LoadPlan::default();
    let mut used = HashSet::new();
    for (name, shape) in params {
        let names = candidates(name, prefix);
        let Some(key) = names.iter().find(|n| tensors.contains_key(*n)) else {
            if (naming.may_be_fresh)(name) {
                out.report.fresh.push(name.clone());
                continue;
            }
            let expected = match name.strip_prefix(prefix) {
                Some(rest) if base_checkpoint => rest,
                _ => name.as_str(),
            };
            bail!("{file} has no tensor `{expected}`, which the model needs");
        };
        used.insert(key.clone());
        if &tensors[key] != shape {
            if (naming.may_be_fresh)(name) {
                out.report.fresh.push(name.clone());
                continue;
            }
            bail!(
                "{file}: tensor `{key}` has shape {:?}, the config implies {:?}",
                tensors[key],
                shape
            );
        }
        out.copies.push((name.clone(), key.clone()));
    }
    out.report.unused = tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    out.report.unused.sort();
    Ok(out)
}

/// The weight files of a checkpoint folder, in the order Hugging Face prefers them:
/// `model.safetensors`, the shards of `model.safetensors.index.json`, `pytorch_model.bin`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).context("model.safetensors.index.json is not JSON")?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .context("model.safetensors.index.json has no `weight_map`")?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|f| dir.join(f))
            .collect();
        files.dedup();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            bail!(
                "shard {} listed in model.safetensors.index.json is missing",
                missing.display()
            );
        }
        return Ok(files);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(vec![bin]);
    }
    bail!(
        "no weights: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )
}

fn is_safetensors(f: &Path) -> bool {
    f.extension().is_some_and(|e| e == "safetensors")
}

/// The tensors of a `torch.save` file such as `pytorch_model.bin` (read by [`torch_pickle`],
/// not libtorch, whose loader does not take the `OrderedDict` a state dict pickles as).
pub fn read_torch_bin(f: &Path) -> Result<Vec<(String, Tensor)>> {
    use crate::models::torch_pickle::{self, Dtype};
    torch_pickle::read(f)?
        .into_iter()
        .map(|t| {
            let kind = match t.dtype {
                Dtype::F64 => tch::Kind::Double,
                Dtype::F32 => tch::Kind::Float,
                Dtype::F16 => tch::Kind::Half,
                Dtype::BF16 => tch::Kind::BFloat16,
                Dtype::I64 => tch::Kind::Int64,
                Dtype::I32 => tch::Kind::Int,
                Dtype::I16 => tch::Kind::Int16,
                Dtype::I8 => tch::Kind::Int8,
                Dtype::U8 => tch::Kind::Uint8,
                Dtype::Bool => tch::Kind::Bool,
            };
            let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            let tensor = Tensor::f_from_data_size(&t.data, &shape, kind)
                .with_context(|| format!("{}: tensor `{}`", f.display(), t.name))?;
            Ok((t.name, tensor))
        })
        .collect()
}

/// Every tensor of a checkpoint folder, by key.
pub fn read_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for f in weight_files(dir)? {
        let named = if is_safetensors(&f) {
            Tensor::read_safetensors(&f).with_context(|| format!("reading {}", f.display()))?
        } else {
            read_torch_bin(&f)?
        };
        out.extend(named);
    }
    Ok(out)
}

/// Key and shape of every tensor of a checkpoint folder; safetensors files are read from their
/// header only.
pub fn read_shapes(dir: &Path) -> Result<HashMap<String, Vec<i64>>> {
    let mut out = HashMap::new();
    for f in weight_files(dir)? {
        if is_safetensors(&f) {
            out.extend(tensor_shapes(&f)?);
        } else {
            for t in crate::models::torch_pickle::read(&f)? {
                out.insert(t.name, t.shape.iter().map(|&d| d as i64).collect());
            }
        }
    }
    Ok(out)
}

/// The file name shown in errors about a checkpoint's weights.
pub fn weights_label(dir: &Path) -> String {
    match weight_files(dir) {
        Ok(files) => label_of(&files),
        Err(_) => "the checkpoint".into(),
    }
}

/// [`weights_label`] of the weight files `files`.
fn label_of(files: &[PathBuf]) -> String {
    match files {
        [one] => one
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        _ => "model.safetensors.index.json".into(),
    }
}

/// Fills the variables of `vs`, built uninitialised ([`layers::uninitialised`], which gave
/// `inits`): each the checkpoint folder `dir` provides with its tensor, as [`plan`] matches
/// them, and each other one with its initialisation, in the order the model created them.
/// Safetensors tensors are read straight into the variables where the types agree.
pub fn load(
    vs: &mut VarStore,
    dir: &Path,
    naming: Naming,
    inits: &[(String, Initialisation)],
) -> Result<LoadReport> {
    let weights = Weights::open(dir)?;
    let vars = vs.variables();
    let mut params: Vec<(String, Vec<i64>)> =
        vars.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    params.sort();
    let plan = plan(&params, &weights.shapes(), naming, &weights.label)?;
    tch::no_grad(|| -> Result<()> {
        for (name, key) in &plan.copies {
            weights.copy_into(key, &mut vars[name].shallow_clone())?;
        }
        Ok(())
    })?;
    let copied: HashSet<&str> = plan.copies.iter().map(|(n, _)| n.as_str()).collect();
    let initialised: HashSet<&str> = inits.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(name) = vars
        .keys()
        .find(|n| !copied.contains(n.as_str()) && !initialised.contains(n.as_str()))
    {
        bail!("model parameter `{name}` has neither a checkpoint tensor nor an initialisation");
    }
    for (name, how) in inits {
        if !copied.contains(name.as_str())
            && let Some(var) = vars.get(name)
        {
            how.apply(&mut var.shallow_clone());
        }
    }
    Ok(plan.report)
}

/// The tensors of a checkpoint folder's weight files, by key: those of safetensors files read
/// as they are copied (their headers read and checked up front), those of PyTorch pickles read
/// whole.
struct Weights {
    /// The name errors give the weights ([`weights_label`]).
    label: String,
    files: Vec<SafetensorsFile>,
    /// Key → index into `files`.
    stored: HashMap<String, usize>,
    read: HashMap<String, Tensor>,
}

impl Weights {
    fn open(dir: &Path) -> Result<Weights> {
        let paths = weight_files(dir)?;
        let mut w = Weights {
            label: label_of(&paths),
            files: Vec::new(),
            stored: HashMap::new(),
            read: HashMap::new(),
        };
        for f in paths {
            if is_safetensors(&f) {
                let file = SafetensorsFile::open(&f)?;
                for key in file.meta.tensors().into_keys() {
                    w.read.remove(&key);
                    w.stored.insert(key, w.files.len());
                }
                w.files.push(file);
            } else {
                for (key, t) in read_torch_bin(&f)? {
                    w.stored.remove(&key);
                    w.read.insert(key, t);
                }
            }
        }
        Ok(w)
    }

    fn shapes(&self) -> HashMap<String, Vec<i64>> {
        let stored = self.stored.iter().map(|(k, &i)| {
            let info = self.files[i].meta.info(k).expect("a key of this file");
            (k.clone(), info.shape.iter().map(|&d| d as i64).collect())
        });
        let read = self.read.iter().map(|(k, t)| (k.clone(), t.size()));
        stored.chain(read).collect()
    }

    /// Copies the tensor `key` into `var` (of the same shape, as planned), converting its type.
    fn copy_into(&self, key: &str, var: &mut Tensor) -> Result<()> {
        if let Some(t) = self.read.get(key) {
            var.f_copy_(&t.to_kind(var.kind()))?;
            return Ok(());
        }
        let file = &self.files[*self.stored.get(key).context("no such tensor")?];
        file.copy_into(key, var)
    }
}

/// Tensor kinds and the safetensors dtypes that hold them.
const KINDS: [(tch::Kind, Dtype); 10] = [
    (tch::Kind::Float, Dtype::F32),
    (tch::Kind::Double, Dtype::F64),
    (tch::Kind::Half, Dtype::F16),
    (tch::Kind::BFloat16, Dtype::BF16),
    (tch::Kind::Int64, Dtype::I64),
    (tch::Kind::Int, Dtype::I32),
    (tch::Kind::Int16, Dtype::I16),
    (tch::Kind::Int8, Dtype::I8),
    (tch::Kind::Uint8, Dtype::U8),
    (tch::Kind::Bool, Dtype::BOOL),
];

/// A safetensors file open for reading: its header, checked (offsets contiguous, each
/// tensor's bytes its shape and dtype's size, the data filling the file), and where the data
/// starts.
struct SafetensorsFile {
    path: PathBuf,
    file: std::fs::File,
    data_start: u64,
    meta: Metadata,
}

impl SafetensorsFile {
    fn open(path: &Path) -> Result<SafetensorsFile> {
        use std::io::Read;
        let shown = path.display();
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {shown}"))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .with_context(|| format!("{shown}: not a safetensors file"))?;
        let n = u64::from_le_bytes(len);
        if n > 100_000_000 {
            bail!("{shown}: not a safetensors file (header of {n} bytes)");
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("{shown}: truncated header"))?;
        let meta: Metadata = serde_json::from_slice(&header)
            .with_context(|| format!("{shown}: not a valid safetensors header"))?;
        let data_start = 8 + n;
        let size = file.metadata()?.len();
        if data_start + meta.data_len() as u64 != size {
            bail!(
                "{shown}: the header describes {} bytes of tensor data, the file holds {}",
                meta.data_len(),
                size.saturating_sub(data_start)
            );
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            data_start,
            meta,
        })
    }

    /// Reads the tensor `key` into `var`: straight into its memory when it is a contiguous CPU
    /// tensor of the same type and size, else through a tensor of the stored type.
    fn copy_into(&self, key: &str, var: &mut Tensor) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let shown = || format!("{}: tensor `{key}`", self.path.display());
        let info = self.meta.info(key).with_context(shown)?;
        let kind = KINDS
            .iter()
            .find(|(_, d)| *d == info.dtype)
            .map(|(k, _)| *k)
            .with_context(|| format!("{}: dtype {:?} is not supported", shown(), info.dtype))?;
        let (start, end) = info.data_offsets;
        let (at, len) = (self.data_start + start as u64, end - start);
        if kind == var.kind()
            && var.device() == tch::Device::Cpu
            && var.is_contiguous()
            && var.numel() * kind.elt_size_in_bytes() == len
        {
            if len > 0 {
                // SAFETY: `var` is a contiguous CPU tensor of exactly `len` bytes, which
                // nothing else reads or writes while it is filled
                let dst = unsafe { std::slice::from_raw_parts_mut(var.data_ptr() as *mut u8, len) };
                self.file.read_exact_at(dst, at).with_context(shown)?;
            }
            return Ok(());
        }
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, at)
            .with_context(shown)?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(&bytes, &shape, kind).with_context(shown)?;
        var.f_copy_(&t.to_kind(var.kind())).with_context(shown)?;
        Ok(())
    }
}

/// Writes every variable of `vs` to `file` under its path name (the Hugging Face key).
pub fn save_safetensors(vs: &VarStore, file: &Path) -> Result<()> {
    write_safetensors(&named_variables(vs), file)
}

/// The variables of `vs` by path name (the Hugging Face key), in name order, sharing memory.
pub fn named_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    vs.variables()
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect()
}

/// `tensors` on the CPU: those already there shared (`to_device` returns a tensor on its own
/// device as it is), the others copied there.
pub fn on_cpu(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_device(tch::Device::Cpu)))
        .collect()
}

/// Writes `tensors` to `file` in the safetensors format, through a temporary sibling file
/// renamed into place. Each tensor's bytes go to the file straight from its memory (a tensor on
/// another device, or not contiguous, is copied to a contiguous CPU tensor first). tch's writer
/// copies every tensor into a fresh zeroed buffer before writing it, which doubled the memory
/// traffic of a checkpoint and, with the buffers' page faults, made writing a run's resumable
/// checkpoint (weights and AdamW moments, 272 MB for MiniLM-L6) take about 0.45 s on 2 cores.
pub fn write_safetensors(tensors: &[(String, Tensor)], file: &Path) -> Result<()> {
    use std::io::Write;
    const {
        assert!(
            cfg!(target_endian = "little"),
            "safetensors files are little-endian, as this host's memory"
        )
    };
    // (tensor, its length in bytes), contiguous on the CPU
    let contiguous: Vec<(Tensor, usize)> = tensors
        .iter()
        .map(|(_, t)| {
            let t = t.to_device(tch::Device::Cpu).contiguous();
            let len = t.numel() * t.kind().elt_size_in_bytes();
            (t, len)
        })
        .collect();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for ((name, _), (t, len)) in tensors.iter().zip(&contiguous) {
        let entry = serde_json::json!({
            "dtype": safetensors_dtype(t.kind())
                .with_context(|| format!("writing {}: tensor `{name}`", file.display()))?,
            "shape": t.size(),
            "data_offsets": [offset, offset + len],
        });
        if header.insert(name.clone(), entry).is_some() {
            bail!("writing {}: tensor `{name}` given twice", file.display());
        }
        offset += len;
    }
    let mut header = serde_json::to_vec(&header)?;
    // the data starts on an 8-byte boundary, the header padded with spaces as the format allows
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        // past the page cache where the file system allows (see `direct`)
        let mut out = super::direct::DirectFile::create(&tmp)?;
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for &(ref t, len) in &contiguous {
            if len > 0 {
                // SAFETY: a contiguous CPU tensor of `len` bytes, alive and unchanged here
                out.write_all(unsafe {
                    std::slice::from_raw_parts(t.data_ptr() as *const u8, len)
                })?;
            }
        }
        out.finish()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::from(e).context(format!("writing {}", file.display()))
    })
}

/// The safetensors dtype of a tensor kind.
fn safetensors_dtype(kind: tch::Kind) -> Result<Dtype> {
    match KINDS.iter().find(|(k, _)| *k == kind) {
        Some((_, d)) => Ok(*d),
        None => bail!("a tensor of kind {kind:?} cannot be written to safetensors"),
    }
}

/// Shapes of the tensors in a safetensors file, read from its header only (checked as
/// loading checks it).
pub fn tensor_shapes(file: &Path) -> Result<Vec<(String, Vec<i64>)>> {
    let file = SafetensorsFile::open(file)?;
    Ok(file
        .meta
        .tensors()
        .into_iter()
        .map(|(k, info)| (k, info.shape.iter().map(|&d| d as i64).collect()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tensors_read_back_whole_with_their_kinds_and_shapes() {
        use tch::{Device, Kind};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.safetensors");
        let grid = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]) * 0.5 - 1.0;
        let tensors: Vec<(String, Tensor)> = vec![
            ("grid".into(), grid.shallow_clone()),
            // a transposed view: written as its values in row-major order
            ("grid_t".into(), grid.tr()),
            ("half".into(), grid.to_kind(Kind::BFloat16)),
            ("ids".into(), Tensor::from_slice(&[3i64, -1, 7])),
            ("mask".into(), Tensor::from_slice(&[true, false, true])),
            (
                "empty".into(),
                Tensor::zeros([0, 5], (Kind::Float, Device::Cpu)),
            ),
            ("scalar".into(), Tensor::from(2.5f64)),
        ];
        write_safetensors(&tensors, &file).unwrap();
        assert!(
            !dir.path().join("t.safetensors.tmp").exists(),
            "no temporary file left"
        );
        // read by the safetensors crate tch uses, independent of the writer
        let read: BTreeMap<String, Tensor> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(read.len(), tensors.len());
        for (name, t) in &tensors {
            let r = &read[name];
            assert_eq!((r.kind(), r.size()), (t.kind(), t.size()), "{name}");
            assert!(r.equal(&t.contiguous()), "{name}: values");
        }
        let header = u64::from_le_bytes(std::fs::read(&file).unwrap()[..8].try_into().unwrap());
        assert_eq!(header % 8, 0, "the data starts on an 8-byte boundary");
        let bad = vec![(
            "c".to_string(),
            Tensor::zeros([2], (Kind::ComplexFloat, Device::Cpu)),
        )];
        let err = write_safetensors(&bad, &dir.path().join("c.safetensors")).unwrap_err();
        assert!(format!("{err:#}").contains("`c`"), "{err:#}");
        assert!(!dir.path().join("c.safetensors").exists());
        let twice = vec![
            ("g".to_string(), grid.shallow_clone()),
            ("g".to_string(), grid),
        ];
        let err = write_safetensors(&twice, &dir.path().join("g.safetensors")).unwrap_err();
        assert!(format!("{err:#}").contains("`g` given twice"), "{err:#}");
        assert!(!dir.path().join("g.safetensors").exists());
    }

    #[test]
    fn a_parameter_may_come_from_a_base_model_a_task_model_or_a_legacy_name() {
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
            candidates("pooler.dense.bias", "bert."),
            vec!["pooler.dense.bias", "bert.pooler.dense.bias"]
        );
        assert_eq!(candidates("classifier.bias", ""), vec!["classifier.bias"]);
    }

    fn shapes(v: &[(&str, &[i64])]) -> Vec<(String, Vec<i64>)> {
        v.iter().map(|(k, s)| (k.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn planning_names_the_missing_or_misshapen_tensor_and_tolerates_a_new_head() {
        let params = shapes(&[("bert.a.weight", &[4, 2]), ("classifier.weight", &[3, 4])]);
        let fresh = |n: &str| n.starts_with("classifier.");
        let naming = Naming {
            base_prefix: "bert.",
            may_be_fresh: &fresh,
        };
        let ckpt: HashMap<String, Vec<i64>> = shapes(&[("a.weight", &[4, 2]), ("cls.x", &[1])])
            .into_iter()
            .collect();
        let p = plan(&params, &ckpt, naming, "model.safetensors").unwrap();
        assert_eq!(
            p.copies,
            vec![("bert.a.weight".to_string(), "a.weight".to_string())]
        );
        assert_eq!(p.report.fresh, vec!["classifier.weight"]);
        assert_eq!(p.report.unused, vec!["cls.x"]);

        let wrong: HashMap<String, Vec<i64>> =
            shapes(&[("a.weight", &[4, 3])]).into_iter().collect();
        let e = plan(&params, &wrong, naming, "model.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `a.weight` has shape [4, 3], the config implies [4, 2]"),
            "{e}"
        );
        let none: HashMap<String, Vec<i64>> = shapes(&[("b.weight", &[1])]).into_iter().collect();
        let e = plan(&params, &none, naming, "model.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no tensor `a.weight`"), "{e}");
    }

    /// The tensor a checkpoint holds for the model parameter `name` (a base-model checkpoint
    /// names it without `bert.`).
    fn stored<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> Option<&'a Tensor> {
        tensors
            .get(name)
            .or_else(|| tensors.get(name.strip_prefix("bert.")?))
    }

    #[test]
    fn a_checkpoint_loads_in_any_stored_type_and_the_parameters_it_lacks_are_initialised() {
        use tch::{Device, Kind};
        let dir = tempfile::tempdir().unwrap();
        let f32_dir = dir.path().join("f32");
        crate::models::presets::write_bert_tiny(&f32_dir).unwrap();
        // the file as tch's reader (the safetensors crate) reads it, independent of the loader
        let file = f32_dir.join("model.safetensors");
        let written: HashMap<String, Tensor> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .collect();
        // the same checkpoint stored in float16 and in bfloat16
        let mut dirs = vec![(f32_dir.clone(), Kind::Float)];
        for kind in [Kind::Half, Kind::BFloat16] {
            let d = dir.path().join(format!("{kind:?}"));
            std::fs::create_dir(&d).unwrap();
            for f in std::fs::read_dir(&f32_dir).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), d.join(f.file_name())).unwrap();
            }
            let cast: Vec<(String, Tensor)> = written
                .iter()
                .map(|(k, t)| (k.clone(), t.to_kind(kind)))
                .collect();
            write_safetensors(&cast, &d.join("model.safetensors")).unwrap();
            dirs.push((d, kind));
        }
        for (d, kind) in &dirs {
            let m = crate::models::load(d, Some(3), Device::Cpu).unwrap();
            assert_eq!(m.report.fresh, ["classifier.bias", "classifier.weight"]);
            let vars = m.vs.variables();
            let mut compared = 0;
            for (name, var) in &vars {
                let Some(t) = stored(&written, name) else {
                    continue;
                };
                // what the stored type keeps of each value, as float32
                let expected = t.to_kind(*kind).to_kind(Kind::Float);
                assert!(var.equal(&expected), "{kind:?}: `{name}`");
                compared += 1;
            }
            assert_eq!(
                compared,
                vars.len() - 2,
                "{kind:?}: all but the head loaded"
            );
            // the new head as the model initialises it: zero bias, weights ~ N(0, 0.02)
            assert!(vars["classifier.bias"].equal(&Tensor::zeros([3], (Kind::Float, Device::Cpu))));
            let w = &vars["classifier.weight"];
            let std = f64::try_from(w.std(true)).unwrap();
            assert!(
                (0.017..0.023).contains(&std),
                "{kind:?}: head weights' std {std}"
            );
        }
        // a file shorter than its header says is refused, naming it
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 4]).unwrap();
        let e = format!(
            "{:#}",
            crate::models::load(&f32_dir, Some(3), Device::Cpu)
                .err()
                .unwrap()
        );
        assert!(
            e.contains("model.safetensors") && e.contains("bytes of tensor data"),
            "{e}"
        );
    }
}
