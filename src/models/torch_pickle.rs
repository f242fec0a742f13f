//! Reader for `torch.save` checkpoints, e.g. Hugging Face `pytorch_model.bin` or torchvision's
//! `.pth` files: a small pickle VM rebuilds the saved object, then tensors are copied out of
//! their storages, honouring storage offsets and strides.
//!
//! - The zip format (PyTorch >= 1.6): the object is `<prefix>/data.pkl`, each storage an entry
//!   `<prefix>/data/<key>`.
//! - The legacy format (older PyTorch, `_use_new_zipfile_serialization=False`): five pickles
//!   in a row (magic number, protocol version 1001, system info, the object, the list of
//!   storage keys), then each storage in that order as its element count (little-endian
//!   `u64`) followed by its bytes.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 64-bit float.
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half-precision float.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 16-bit signed integer.
    I16,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer (also used for untyped storages).
    U8,
    /// Boolean, one byte per element.
    Bool,
}

impl Dtype {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    fn from_storage_class(module: &str, name: &str) -> Result<Self> {
        Ok(match name {
            "DoubleStorage" => Dtype::F64,
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            // torch itself loads an untyped storage as bytes.
            "ByteStorage" | "UntypedStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => bail!("unsupported storage type {module}.{name}"),
        })
    }
}

/// One tensor of the file, its data made contiguous (row-major, little-endian bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Dotted key path in the saved dict, e.g. `encoder.layer.0.output.dense.weight`.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape; empty for a 0-dim scalar.
    pub shape: Vec<usize>,
    /// `shape.iter().product() * dtype.size()` bytes, row-major, little-endian.
    pub data: Vec<u8>,
}

/// Reads every tensor of a torch.save file (zip or legacy format) holding a (possibly nested) dict of tensors,
/// e.g. a state dict. Keys of nested dicts are joined with '.'.
///
/// Lists and tuples are walked too (their indices become keys); non-tensor leaves such as
/// numbers, strings or `None` are skipped. Tensors are returned in pickle order.
pub fn read(path: &Path) -> Result<Vec<RawTensor>> {
    read_inner(path)
        .map_err(|e| anyhow!("cannot read PyTorch checkpoint {}: {e:#}", path.display()))
}

/// The first pickle of a legacy file after its PROTO opcode: the magic number
/// `0x1950a86a20f9469cfc6c` as a LONG1, then STOP.
const LEGACY_MAGIC: &[u8] = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// The protocol version a legacy file's second pickle holds.
const LEGACY_PROTOCOL: i64 = 1001;

fn read_inner(path: &Path) -> Result<Vec<RawTensor>> {
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(2 + LEGACY_MAGIC.len() as u64)
        .read_to_end(&mut head)?;
    if head.len() > 2 && head[0] == 0x80 && head[2..] == *LEGACY_MAGIC {
        return read_legacy(&std::fs::read(path)?).context("legacy torch.save format");
    }
    let mut archive = match zip::ZipArchive::new(std::fs::File::open(path)?) {
        Ok(archive) => archive,
        Err(err) => bail!("not a zip archive (truncated or not a torch.save file): {err}"),
    };
    let pkl_name = archive
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_owned)
        .context("zip archive has no '<prefix>/data.pkl' entry; not a torch.save file")?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let mut read_entry = |name: &str| -> Result<Option<Vec<u8>>> {
        match archive.by_name(name) {
            Ok(mut entry) => {
                let mut buf =
                    Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 30));
                entry
                    .read_to_end(&mut buf)
                    .with_context(|| format!("reading entry {name}"))?;
                Ok(Some(buf))
            }
            Err(zip::result::ZipError::FileNotFound) => Ok(None),
            Err(e) => Err(anyhow!("reading entry {name}: {e}")),
        }
    };
    if let Some(order) = read_entry(&format!("{prefix}byteorder"))?
        && order.trim_ascii() != b"little"
    {
        bail!(
            "unsupported byte order {:?}",
            String::from_utf8_lossy(&order)
        );
    }
    let pkl = read_entry(&pkl_name)?.context("data.pkl vanished")?;
    let root = Vm::new(&pkl)
        .run()
        .with_context(|| format!("unpickling {pkl_name}"))?;
    let mut found = Vec::new();
    collect(String::new(), root, &mut found)?;
    materialize_all(found, |key| {
        let entry = format!("{prefix}data/{key}");
        read_entry(&entry)?.with_context(|| format!("missing storage entry {entry} in the archive"))
    })
}

/// Reads the legacy format from the whole file's bytes.
fn read_legacy(bytes: &[u8]) -> Result<Vec<RawTensor>> {
    let mut vm = Vm::new(bytes);
    vm.pos = 2 + LEGACY_MAGIC.len(); // checked by the caller
    match vm.run().context("the protocol version")? {
        Val::Int(LEGACY_PROTOCOL) => {}
        other => bail!("unsupported protocol version {other:?} (expected {LEGACY_PROTOCOL})"),
    }
    let Val::Dict(info) = vm.run().context("the system info")? else {
        bail!("the system info is not a dict");
    };
    let little = info
        .iter()
        .any(|(k, v)| matches!((k, v), (Val::Str(k), Val::Int(1)) if k == "little_endian"));
    if !little {
        bail!("only little-endian files are supported");
    }
    let root = vm.run().context("unpickling the saved object")?;
    let Val::List(keys) = vm.run().context("the storage keys")? else {
        bail!("the storage keys are not a list");
    };
    let mut found = Vec::new();
    collect(String::new(), root, &mut found)?;
    let dtypes: HashMap<&str, Dtype> = found
        .iter()
        .map(|(_, t)| (t.storage.key.as_str(), t.storage.dtype))
        .collect();
    // the storages follow the pickles, in the order of the key list
    let mut at = vm.pos;
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let Val::Str(key) = key else {
            bail!("a storage key is not a string: {key:?}");
        };
        let dtype = *dtypes
            .get(key.as_str())
            .with_context(|| format!("storage {key} is not used by any tensor"))?;
        let truncated = || anyhow!("file truncated in storage {key}");
        let count: [u8; 8] = bytes.get(at..at + 8).ok_or_else(truncated)?.try_into()?;
        let len = usize::try_from(u64::from_le_bytes(count))?
            .checked_mul(dtype.size())
            .ok_or_else(truncated)?;
        let start = at + 8;
        let end = start.checked_add(len).ok_or_else(truncated)?;
        let data = bytes.get(start..end).ok_or_else(truncated)?;
        storages.insert(key, data);
        at = end;
    }
    materialize_all(found, |key| {
        storages
            .get(key)
            .map(|b| b.to_vec())
            .with_context(|| format!("storage {key} is missing from the file"))
    })
}

/// Copies each tensor out of its storage, reading each storage once.
fn materialize_all(
    found: Vec<(String, TensorRef)>,
    mut storage: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<Vec<RawTensor>> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, t)) in found.iter().enumerate() {
        by_key.entry(t.storage.key.as_str()).or_default().push(i);
    }
    let mut out: Vec<Option<RawTensor>> = found.iter().map(|_| None).collect();
    for (key, idxs) in by_key {
        let bytes = storage(key)?;
        for i in idxs {
            let (name, t) = &found[i];
            let data = t
                .materialize(&bytes)
                .with_context(|| format!("tensor {name}"))?;
            out[i] = Some(RawTensor {
                name: name.clone(),
                dtype: t.storage.dtype,
                shape: t.shape.clone(),
                data,
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}

#[derive(Debug, Clone)]
struct Storage {
    dtype: Dtype,
    key: String,
    numel: usize,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: Storage,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorRef {
    fn new(storage: Storage, offset: usize, shape: Vec<usize>, stride: Vec<usize>) -> Self {
        TensorRef {
            storage,
            offset,
            shape,
            stride,
        }
    }

    fn materialize(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let es = self.storage.dtype.size();
        let overflow = || anyhow!("size/stride overflow");
        let mut numel = 1usize;
        let mut last = self.offset;
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            numel = numel.checked_mul(d).ok_or_else(overflow)?;
            let reach = d.saturating_sub(1).checked_mul(s).ok_or_else(overflow)?;
            last = last.checked_add(reach).ok_or_else(overflow)?;
        }
        if numel == 0 {
            return Ok(Vec::new());
        }
        let have = bytes.len() / es;
        if last >= have {
            bail!(
                "needs element {last} of storage {} which holds only {have} elements",
                self.storage.key
            );
        }
        let (mut expected, mut contiguous) = (1usize, true);
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            contiguous &= d == 1 || s == expected;
            expected = expected.saturating_mul(d);
        }
        if contiguous {
            return Ok(bytes[self.offset * es..(self.offset + numel) * es].to_vec());
        }
        let mut out = Vec::with_capacity(numel * es);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..numel {
            let off = self.offset
                + idx
                    .iter()
                    .zip(&self.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.extend_from_slice(&bytes[off * es..(off + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
enum Val {
    None,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Val>),
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global(String, String),
    Storage(Storage),
    Tensor(TensorRef),
}

fn collect(prefix: String, v: Val, out: &mut Vec<(String, TensorRef)>) -> Result<()> {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Val::Dict(items) => {
            for (k, v) in items {
                let key = match k {
                    Val::Str(s) => s,
                    Val::Int(i) => i.to_string(),
                    other => bail!("unsupported dict key {other:?} under '{prefix}'"),
                };
                collect(join(&key), v, out)?;
            }
        }
        Val::List(items) | Val::Tuple(items) => {
            for (i, v) in items.into_iter().enumerate() {
                collect(join(&i.to_string()), v, out)?;
            }
        }
        Val::Tensor(t) => out.push((prefix, t)),
        Val::Storage(s) => out.push((prefix, TensorRef::new(s.clone(), 0, vec![s.numel], vec![1]))),
        _ => {}
    }
    Ok(())
}

fn to_usize(v: &Val, what: &str) -> Result<usize> {
    match v {
        Val::Int(i) => usize::try_from(*i).map_err(|_| anyhow!("negative {what}: {i}")),
        other => bail!("expected an integer {what}, found {other:?}"),
    }
}

fn to_usizes(v: &Val, what: &str) -> Result<Vec<usize>> {
    match v {
        Val::Tuple(items) | Val::List(items) => items.iter().map(|i| to_usize(i, what)).collect(),
        other => bail!("expected a tuple for {what}, found {other:?}"),
    }
}

/// Applies a callable (from REDUCE or NEWOBJ) to its arguments; only the globals a
/// tensor state dict needs are supported.
fn call(callable: Val, args: Val) -> Result<Val> {
    let Val::Global(module, name) = callable else {
        bail!("cannot call non-global {callable:?}");
    };
    let Val::Tuple(args) = args else {
        bail!("arguments of {module}.{name} are not a tuple: {args:?}");
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Val::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") if args.len() >= 4 => {
            let Val::Storage(storage) = args[0].clone() else {
                bail!("_rebuild_tensor_v2 expects a storage, found {:?}", args[0]);
            };
            let offset = to_usize(&args[1], "storage offset")?;
            let shape = to_usizes(&args[2], "size")?;
            let stride = to_usizes(&args[3], "stride")?;
            if shape.len() != stride.len() {
                bail!("size {shape:?} and stride {stride:?} differ in rank");
            }
            Ok(Val::Tensor(TensorRef::new(storage, offset, shape, stride)))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match args.into_iter().next() {
                Some(t @ Val::Tensor(_)) => Ok(t),
                other => bail!("{name} expects a tensor, found {other:?}"),
            }
        }
        _ => bail!(
            "unsupported global {module}.{name} called with {} argument(s); only (nested) \
             dicts of tensors can be read",
            args.len()
        ),
    }
}

#[derive(Default)]
struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<usize, Val>,
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            data,
            ..Vm::default()
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| anyhow!("pickle truncated at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into()?)
    }

    /// Reads an unsigned little-endian integer of `width` (<= 8) bytes.
    fn uint(&mut self, width: usize) -> Result<u64> {
        let mut buf = [0u8; 8];
        buf[..width].copy_from_slice(self.take(width)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("pickle truncated in a GLOBAL line at byte {}", self.pos))?;
        let s = std::str::from_utf8(self.take(n + 1)?)?;
        Ok(s[..n].to_owned())
    }

    fn pop(&mut self) -> Result<Val> {
        self.stack.pop().context("pickle stack underflow")
    }

    fn split_top(&mut self, n: usize) -> Result<Vec<Val>> {
        let at = self.stack.len().checked_sub(n);
        Ok(self.stack.split_off(at.context("pickle stack underflow")?))
    }

    fn pop_mark(&mut self) -> Result<Vec<Val>> {
        let mark = self.marks.pop().context("pickle MARK missing")?;
        self.split_top(
            self.stack
                .len()
                .checked_sub(mark)
                .context("MARK beyond the stack")?,
        )
    }

    fn top(&mut self) -> Result<&mut Val> {
        self.stack.last_mut().context("pickle stack underflow")
    }

    /// Runs one pickle from the current position to its STOP; `pos` is then just past it.
    fn run(&mut self) -> Result<Val> {
        loop {
            let at = self.pos;
            let op = self.arr::<1>()?[0];
            self.step(op)
                .with_context(|| format!("opcode 0x{op:02x} at byte {at}"))?;
            if op == b'.' {
                return self.pop();
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<()> {
        // Width of the inline argument (integer or length prefix) of most opcodes.
        let width = match op {
            b'K' | b'U' | 0x8c | b'C' | b'q' | b'h' => 1,
            b'M' => 2,
            b'X' | b'T' | b'B' | b'r' | b'j' => 4,
            _ => 8,
        };
        let v = match op {
            0x80 => return self.take(1).map(drop), // PROTO
            0x95 => return self.take(8).map(drop), // FRAME
            b'.' => return Ok(()),                 // STOP
            b'(' => {
                self.marks.push(self.stack.len());
                return Ok(());
            }
            b'0' => return self.pop().map(drop),
            b'1' => return self.pop_mark().map(drop),
            b'2' => self.top()?.clone(),
            b'N' => Val::None,
            0x88 | 0x89 => Val::Int(i64::from(op == 0x88)), // NEWTRUE, NEWFALSE
            b'J' => Val::Int(i32::from_le_bytes(self.arr()?).into()),
            b'K' | b'M' => Val::Int(i64::try_from(self.uint(width)?)?),
            0x8a => {
                let n = usize::from(self.arr::<1>()?[0]);
                let bytes = self.take(n)?;
                if n > 8 {
                    bail!("LONG1 of {n} bytes does not fit in 64 bits");
                }
                let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
                let mut buf = [if negative { 0xff } else { 0 }; 8];
                buf[..n].copy_from_slice(bytes);
                Val::Int(i64::from_le_bytes(buf))
            }
            b'G' => self.take(8).map(|_| Val::Float)?,
            b'U' | b'T' | 0x8c | b'X' | 0x8d => {
                let len = usize::try_from(self.uint(width)?)?;
                Val::Str(String::from_utf8_lossy(self.take(len)?).into_owned())
            }
            b'C' | b'B' | 0x8e => {
                let len = usize::try_from(self.uint(width)?)?;
                self.take(len).map(|_| Val::Bytes)?
            }
            b')' => Val::Tuple(Vec::new()),
            b't' => Val::Tuple(self.pop_mark()?),
            0x85..=0x87 => Val::Tuple(self.split_top(usize::from(op - 0x84))?),
            b']' => Val::List(Vec::new()),
            b'l' => Val::List(self.pop_mark()?),
            b'a' | b'e' => {
                let items = if op == b'a' {
                    self.split_top(1)?
                } else {
                    self.pop_mark()?
                };
                let Val::List(list) = self.top()? else {
                    bail!("APPEND(S) on a non-list")
                };
                list.extend(items);
                return Ok(());
            }
            b'}' => Val::Dict(Vec::new()),
            b'd' => Val::Dict(pairs(self.pop_mark()?)?),
            b's' | b'u' => {
                let items = if op == b's' {
                    self.split_top(2)?
                } else {
                    self.pop_mark()?
                };
                let items = pairs(items)?;
                let Val::Dict(dict) = self.top()? else {
                    bail!("SETITEM(S) on a non-dict")
                };
                dict.extend(items);
                return Ok(());
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    0x94 => self.memo.len(),
                    _ => usize::try_from(self.uint(width)?)?,
                };
                let top = self.top()?.clone();
                self.memo.insert(idx, top);
                return Ok(());
            }
            b'h' | b'j' => {
                let idx = usize::try_from(self.uint(width)?)?;
                let v = self.memo.get(&idx).cloned();
                v.with_context(|| format!("memo entry {idx} missing"))?
            }
            b'c' => Val::Global(self.line()?, self.line()?),
            0x93 => match (self.pop()?, self.pop()?) {
                (Val::Str(name), Val::Str(module)) => Val::Global(module, name),
                other => bail!("STACK_GLOBAL expects two strings, found {other:?}"),
            },
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                call(callable, args)?
            }
            // BUILD: the state (e.g. an OrderedDict's `_metadata`) is not needed.
            b'b' => return self.pop().and(self.top().map(drop)),
            b'Q' => persistent_load(self.pop()?)?,
            _ => bail!("unknown or unsupported pickle opcode 0x{op:02x}"),
        };
        self.stack.push(v);
        Ok(())
    }
}

fn pairs(items: Vec<Val>) -> Result<Vec<(Val, Val)>> {
    if !items.len().is_multiple_of(2) {
        bail!("odd number of dict items");
    }
    let mut it = items.into_iter();
    Ok(std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect())
}

/// Resolves `('storage', <storage class>, key, location, numel)`, and the legacy format's
/// `(..., numel, None)` (a storage that is not a view of another).
fn persistent_load(pid: Val) -> Result<Val> {
    match pid {
        Val::Tuple(items) => match items.as_slice() {
            [
                Val::Str(tag),
                Val::Global(module, name),
                Val::Str(key),
                _location,
                numel,
                ..,
            ] if tag == "storage"
                && matches!(items.get(5), None | Some(Val::None))
                && items.len() <= 6 =>
            {
                let dtype = Dtype::from_storage_class(module, name)?;
                let numel = to_usize(numel, "storage numel")?;
                let key = key.clone();
                Ok(Val::Storage(Storage { dtype, key, numel }))
            }
            _ => bail!("unsupported persistent id {items:?}"),
        },
        other => bail!("unsupported persistent id {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// `data.pkl` written by torch 2.11 for
    /// `OrderedDict(w=torch.tensor([1.0, 2.0]), i=torch.tensor([[3, 4]]))`.
    const TINY_PKL: &[u8] =
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00wq\x02\
ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\n\
q\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x02tq\x08QK\x00K\x02\x85q\tK\x01\x85q\n\
\x89h\x00)Rq\x0btq\x0cRq\rX\x01\x00\x00\x00iq\x0eh\x03((h\x04ctorch\nLongStorage\nq\x0f\
X\x01\x00\x00\x001q\x10h\x07K\x02tq\x11QK\x00K\x01K\x02\x86q\x12K\x02K\x01\x86q\x13\x89h\x00\
)Rq\x14tq\x15Rq\x16u.";
    const F32S: &[u8] = b"\x00\x00\x80\x3f\x00\x00\x00\x40"; // [1.0, 2.0]
    const I64S: &[u8] = b"\x03\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00";

    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (entry, data) in entries {
            w.start_file(*entry, opts).expect("zip entry");
            w.write_all(data).expect("zip data");
        }
        w.finish().expect("zip").into_inner()
    }

    /// Writes `bytes` to a temp file, reads it back, removes the file.
    fn read_bytes(name: &str, bytes: &[u8]) -> Result<Vec<RawTensor>> {
        let path = std::env::temp_dir().join(format!("torch_pickle_{}_{name}", std::process::id()));
        std::fs::write(&path, bytes)?;
        let result = read(&path);
        std::fs::remove_file(&path)?;
        if let Err(e) = &result {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        result
    }

    fn tiny(with_long: bool) -> Vec<(&'static str, &'static [u8])> {
        let mut entries = vec![
            ("tiny/data.pkl", TINY_PKL),
            ("tiny/byteorder", b"little"),
            ("tiny/data/0", F32S),
            ("tiny/version", b"3\n"),
        ];
        if with_long {
            entries.push(("tiny/data/1", I64S));
        }
        entries
    }

    fn err(result: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", result.expect_err("expected an error"))
    }

    /// `OrderedDict(w=torch.tensor([1.0, 2.0]), i=torch.tensor([[3, 4]]))`, as read.
    fn assert_is_the_tiny_dict(tensors: &[RawTensor]) {
        let got: Vec<_> = tensors
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.dtype,
                    t.shape.as_slice(),
                    t.data.as_slice(),
                )
            })
            .collect();
        let want: [(&str, Dtype, &[usize], &[u8]); 2] = [
            ("w", Dtype::F32, &[2], F32S),
            ("i", Dtype::I64, &[1, 2], I64S),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn reads_torch_written_state_dict() {
        assert_eq!(TINY_PKL.len(), 246);
        let tensors = read_bytes("tiny.bin", &zip_bytes(&tiny(true))).expect("read tiny.bin");
        assert_is_the_tiny_dict(&tensors);
    }

    /// `torch.save(same dict, f, _use_new_zipfile_serialization=False)` by torch 2.11.
    const LEGACY: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03X\x0d\x00\x00\x00little_endianq\x02\x88X\x0a\x00\x00\x00type_sizesq\x03}q\x04(X\x05\x00\x00\x00shortq\x05K\x02X\x03\x00\x00\x00intq\x06K\x04X\x04\x00\x00\x00longq\x07K\x04uu.\x80\x02ccollections\x0aOrderedDict\x0aq\x00)Rq\x01(X\x01\x00\x00\x00wq\x02ctorch._utils\x0a_rebuild_tensor_v2\x0aq\x03((X\x07\x00\x00\x00storageq\x04ctorch\x0aFloatStorage\x0aq\x05X\x0e\x00\x00\x0094788052204496q\x06X\x03\x00\x00\x00cpuq\x07K\x02Ntq\x08QK\x00K\x02\x85q\x09K\x01\x85q\x0a\x89h\x00)Rq\x0btq\x0cRq\x0dX\x01\x00\x00\x00iq\x0eh\x03((h\x04ctorch\x0aLongStorage\x0aq\x0fX\x0e\x00\x00\x0094787948938656q\x10h\x07K\x02Ntq\x11QK\x00K\x01K\x02\x86q\x12K\x02K\x01\x86q\x13\x89h\x00)Rq\x14tq\x15Rq\x16u.\x80\x02]q\x00(X\x0e\x00\x00\x0094787948938656q\x01X\x0e\x00\x00\x0094788052204496q\x02e.\x02\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@";

    #[test]
    fn reads_the_legacy_format() {
        let tensors = read_bytes("legacy.pt", LEGACY).expect("read legacy.pt");
        assert_is_the_tiny_dict(&tensors);
    }

    #[test]
    fn reports_bad_files() {
        let msg = err(read_bytes("nolong.bin", &zip_bytes(&tiny(false))));
        assert!(msg.contains("missing storage entry tiny/data/1"), "{msg}");
        let cut_pickle = zip_bytes(&[("a/data.pkl", &TINY_PKL[..100])]);
        let msg = err(read_bytes("cutpkl.bin", &cut_pickle));
        assert!(msg.contains("pickle truncated"), "{msg}");
        let msg = err(read_bytes("legacy.bin", &LEGACY[..LEGACY.len() - 3]));
        assert!(msg.contains("legacy torch.save format"), "{msg}");
        assert!(
            msg.contains("file truncated in storage 94788052204496"),
            "{msg}"
        );
        let msg = err(read_bytes("legacy-cut.bin", &LEGACY[..40]));
        assert!(msg.contains("pickle truncated"), "{msg}");
        let full = zip_bytes(&tiny(true));
        let msg = err(read_bytes("cutzip.bin", &full[..full.len() / 2]));
        assert!(msg.contains("not a zip archive"), "{msg}");
        let msg = err(read_bytes("garbage.bin", b"definitely not a checkpoint"));
        assert!(msg.contains("not a zip archive"), "{msg}");
        let path = std::env::temp_dir().join("torch_pickle_no_such_file.bin");
        assert!(err(read(&path)).contains("torch_pickle_no_such_file.bin"));
    }

    #[test]
    fn vm_opcodes_and_errors() {
        let msg = err(Vm::new(b"\x80\x02}\xff.").run());
        assert!(msg.contains("opcode 0xff at byte 3"), "{msg}");
        let msg = err(Vm::new(b"\x80\x02cos\nsystem\n)R.").run());
        assert!(msg.contains("unsupported global os.system"), "{msg}");
        // pickle.dumps({"a": [1, -2, 3.5, None, True, 2**40], "b": ("x", b"y")}, protocol=4)
        let pkl = b"\x80\x04\x955\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\
\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88\x8a\x06\x00\x00\x00\x00\x00\x01e\x8c\x01b\x94\
\x8c\x01x\x94C\x01y\x94\x86\x94u.";
        let v = Vm::new(pkl).run().expect("protocol 4");
        let dbg = format!("{v:?}");
        let want = concat!(
            r#"Dict([(Str("a"), List([Int(1), Int(-2), Float, None, Int(1), Int(1099511627776)])), "#,
            r#"(Str("b"), Tuple([Str("x"), Bytes]))])"#
        );
        assert_eq!(dbg, want);
        let v = Vm::new(b"(X\x01\x00\x00\x00kK\x07d.").run().expect("DICT");
        assert_eq!(format!("{v:?}"), r#"Dict([(Str("k"), Int(7))])"#);
    }

    #[test]
    fn strided_views_are_made_contiguous() {
        let bytes: Vec<u8> = (0..12).flat_map(|v: i32| v.to_le_bytes()).collect();
        let view = |offset, shape: &[usize], stride: &[usize]| {
            let (key, numel) = ("0".to_owned(), 12);
            let storage = Storage {
                dtype: Dtype::I32,
                key,
                numel,
            };
            let t = TensorRef::new(storage, offset, shape.into(), stride.into());
            let data = t.materialize(&bytes)?;
            let ints = data
                .chunks(4)
                .map(|c| c.iter().rev().fold(0, |a, &b| a * 256 + i32::from(b)));
            Ok::<_, anyhow::Error>(ints.collect::<Vec<_>>())
        };
        let transposed = [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11];
        assert_eq!(view(0, &[4, 3], &[1, 4]).expect("transpose"), transposed);
        assert_eq!(view(6, &[2, 2], &[4, 1]).expect("slice"), [6, 7, 10, 11]);
        assert_eq!(view(5, &[], &[]).expect("scalar"), [5]);
        assert!(view(0, &[0, 3], &[3, 1]).expect("empty").is_empty());
        assert!(err(view(6, &[2, 4], &[4, 1])).contains("holds only 12 elements"));
    }
}
