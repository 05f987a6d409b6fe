//! Reading the weight files users already have: `.safetensors`, and PyTorch `.pt`/`.pth`/`.bin`
//! state dicts in the zip format of `torch.save` (PyTorch >= 1.6), through our own pickle reader
//! ([`super::torch_zip`], bounded against hostile files).
//!
//! The pickle reader only interprets the opcodes that describe tensors and dicts: **no Python code
//! from the file is executed** (unlike `torch.load` without `weights_only=True`). The legacy
//! pre-1.6 format (a bare pickle stream, not a zip archive) is detected and refused with the
//! one-line conversion to run in Python.
//!
//! [`build_checked`] then builds a network from the tensors and reports, in one error, every
//! tensor the architecture needs that the file lacks, every tensor of the file it did not use
//! and every shape mismatch — the usual symptom of a config (preset) that does not match the
//! checkpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use diffpost_core::{Error, Result};

/// The container of a weight file, told by its first bytes (not its extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `safetensors`: an 8-byte little-endian header length, then a JSON header.
    Safetensors,
    /// PyTorch >= 1.6 `torch.save`: a zip archive with `*/data.pkl`.
    TorchZip,
    /// PyTorch < 1.6 (or `_use_new_zipfile_serialization=False`): a bare pickle stream.
    TorchLegacy,
}

/// Python to turn a legacy `.pt` into one diffpost reads (run once where PyTorch is installed).
pub const LEGACY_CONVERSION: &str = "convert it once in Python: \
     `import torch; torch.save(torch.load('old.pt', map_location='cpu'), 'new.pt')` \
     (or save it as safetensors with `safetensors.torch.save_file`)";

/// Detects the container of `path` from its first bytes.
pub fn detect_format(path: &Path) -> Result<WeightFormat> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| ferr(format!("cannot open: {e}")))?;
    let mut head = [0u8; 9];
    let mut n = 0;
    while n < head.len() {
        let k = f
            .read(&mut head[n..])
            .map_err(|e| ferr(format!("cannot read: {e}")))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(WeightFormat::TorchZip);
    }
    // A pickle stream starts with PROTO (0x80) and a protocol number 2..=5.
    if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(WeightFormat::TorchLegacy);
    }
    if n == 9 {
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        // Checked: a hostile length near u64::MAX must not wrap around (or panic in debug builds).
        if head[8] == b'{' && len.checked_add(8).is_some_and(|n| n <= size) {
            return Ok(WeightFormat::Safetensors);
        }
    }
    Err(ferr(
        "not a weight file diffpost reads: expected safetensors or a PyTorch zip \
         (torch.save, PyTorch >= 1.6)"
            .into(),
    ))
}

/// Keys under which training scripts commonly nest the state dict of a `.pt` file.
const NESTED_KEYS: [&str; 4] = ["state_dict", "model", "ema", "module"];

/// Reads every tensor of a weight file (on the CPU, in the file's dtype). `key` selects a nested
/// state dict of a `.pt` file (`checkpoint[key]`); without it, a file whose top level holds no
/// tensors is searched under `state_dict`, `model`, `ema` and `module`. A `module.` prefix on every
/// name (from `nn.DataParallel`) is removed.
pub fn load_state_dict(path: &Path, key: Option<&str>) -> Result<HashMap<String, Tensor>> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    diffpost_core::io::file_len(path).map_err(|r| ferr(format!("model weights: {r}")))?;
    let mut tensors: HashMap<String, Tensor> = match detect_format(path)? {
        WeightFormat::Safetensors => {
            if key.is_some() {
                return Err(ferr("`key` applies to .pt files, not safetensors".into()));
            }
            candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| ferr(format!("cannot read safetensors: {e}")))?
        }
        WeightFormat::TorchLegacy => {
            return Err(ferr(format!(
                "a legacy (pre-1.6) PyTorch file, which diffpost does not read; {LEGACY_CONVERSION}"
            )))
        }
        WeightFormat::TorchZip => {
            let read = |k: Option<&str>| -> Result<Vec<(String, Tensor)>> {
                super::torch_zip::read_state_dict(path, k)
                    .map_err(|e| ferr(format!("cannot read the PyTorch state dict: {e}")))
            };
            let mut found = read(key)?;
            if found.is_empty() && key.is_none() {
                for k in NESTED_KEYS {
                    // A missing key is an error from the reader: try the next one.
                    if let Ok(v) = super::torch_zip::read_state_dict(path, Some(k)) {
                        if !v.is_empty() {
                            found = v;
                            break;
                        }
                    }
                }
            }
            if found.is_empty() {
                return Err(ferr(format!(
                    "no tensors found{}; if the state dict is nested, name its key (tried {})",
                    key.map(|k| format!(" under key `{k}`")).unwrap_or_default(),
                    NESTED_KEYS.join(", ")
                )));
            }
            found.into_iter().collect()
        }
    };
    if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
        tensors = tensors
            .into_iter()
            .map(|(k, v)| (k["module.".len()..].to_string(), v))
            .collect();
    }
    Ok(tensors)
}

/// What [`build_checked`] found wrong with a state dict.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WeightReport {
    /// Names the architecture needs that the file lacks.
    pub missing: Vec<String>,
    /// Names in the file the architecture never asked for.
    pub unexpected: Vec<String>,
    /// `(name, expected shape, shape in the file)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl WeightReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// One readable paragraph: counts, then up to `max` names of each kind.
    pub fn describe(&self, max: usize) -> String {
        let list = |v: &[String]| -> String {
            let mut s = v.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > max {
                s.push_str(&format!(", ... ({} more)", v.len() - max));
            }
            s
        };
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing tensor(s): {}",
                self.missing.len(),
                list(&self.missing)
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected tensor(s): {}",
                self.unexpected.len(),
                list(&self.unexpected)
            ));
        }
        if !self.mismatched.is_empty() {
            let v: Vec<String> = self
                .mismatched
                .iter()
                .map(|(n, want, got)| format!("{n} (expected {want:?}, file has {got:?})"))
                .collect();
            parts.push(format!("{} shape mismatch(es): {}", v.len(), list(&v)));
        }
        parts.join("; ")
    }
}

#[derive(Default)]
struct Record {
    used: HashSet<String>,
    missing: BTreeMap<String, ()>,
    mismatched: BTreeMap<String, (Vec<usize>, Vec<usize>)>,
}

/// A `VarBuilder` backend over a name -> tensor map that records what the architecture asks for
/// instead of failing at the first problem (absent or mis-shaped tensors are replaced by zeros
/// so that construction runs to the end and every problem is reported at once).
struct CheckingBackend {
    tensors: Arc<HashMap<String, Tensor>>,
    record: Arc<Mutex<Record>>,
}

impl SimpleBackend for CheckingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut rec = self.record.lock().expect("weight record lock");
        rec.used.insert(name.to_string());
        match self.tensors.get(name) {
            None => {
                rec.missing.insert(name.to_string(), ());
                Tensor::zeros(s, dtype, dev)
            }
            Some(t) if t.dims() != s.dims() => {
                rec.mismatched
                    .insert(name.to_string(), (s.dims().to_vec(), t.dims().to_vec()));
                Tensor::zeros(s, dtype, dev)
            }
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut rec = self.record.lock().expect("weight record lock");
        rec.used.insert(name.to_string());
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => {
                rec.missing.insert(name.to_string(), ());
                candle_core::bail!("missing tensor {name}")
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Builds a network with `build` from `tensors` (converted to f32 on `device`) and checks that
/// the names and shapes match exactly; on any mismatch returns one error naming `path` and
/// listing the missing, unexpected and mis-shaped tensors.
pub fn build_checked<T>(
    tensors: HashMap<String, Tensor>,
    device: &Device,
    path: &Path,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    let (net, report) = build_with_report(tensors, device, build)?;
    if !report.is_ok() {
        return Err(Error::File {
            path: path.to_path_buf(),
            reason: format!(
                "the weights do not match the configured architecture (check the preset or \
                 config): {}",
                report.describe(8)
            ),
        });
    }
    Ok(net)
}

/// [`build_checked`] without the verdict: the network (with zeros where tensors were missing or
/// mis-shaped) and the report.
pub fn build_with_report<T>(
    tensors: HashMap<String, Tensor>,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<(T, WeightReport)> {
    let tensors = Arc::new(tensors);
    let record = Arc::new(Mutex::new(Record::default()));
    let backend = CheckingBackend {
        tensors: tensors.clone(),
        record: record.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let net = build(vb)?;
    let rec = record.lock().expect("weight record lock");
    let mut unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !rec.used.contains(*k))
        .cloned()
        .collect();
    unexpected.sort();
    let report = WeightReport {
        missing: rec.missing.keys().cloned().collect(),
        unexpected,
        mismatched: rec
            .mismatched
            .iter()
            .map(|(k, (a, b))| (k.clone(), a.clone(), b.clone()))
            .collect(),
    };
    Ok((net, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(vb: VarBuilder) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((vb.get((2, 3), "a.weight")?, vb.pp("b").get(4, "bias")?))
    }

    fn weights(shape_a: (usize, usize), extra: bool) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        m.insert(
            "a.weight".to_string(),
            Tensor::ones(shape_a, DType::F64, &Device::Cpu).unwrap(),
        );
        if extra {
            m.insert(
                "c.weight".to_string(),
                Tensor::ones(1, DType::F32, &Device::Cpu).unwrap(),
            );
        }
        m
    }

    #[test]
    fn report_lists_missing_unexpected_and_mismatched() {
        let (_, rep) = build_with_report(weights((3, 2), true), &Device::Cpu, tiny).unwrap();
        assert_eq!(rep.missing, vec!["b.bias".to_string()]);
        assert_eq!(rep.unexpected, vec!["c.weight".to_string()]);
        assert_eq!(
            rep.mismatched,
            vec![("a.weight".into(), vec![2, 3], vec![3, 2])]
        );
        let err = build_checked(weights((3, 2), true), &Device::Cpu, Path::new("m.pt"), tiny)
            .unwrap_err()
            .to_string();
        for needle in [
            "m.pt",
            "b.bias",
            "c.weight",
            "a.weight (expected [2, 3]",
            "1 missing",
        ] {
            assert!(err.contains(needle), "{needle} not in: {err}");
        }
    }

    #[test]
    fn matching_weights_load_as_f32() {
        let mut w = weights((2, 3), false);
        w.insert(
            "b.bias".into(),
            Tensor::zeros(4, DType::F16, &Device::Cpu).unwrap(),
        );
        let (a, b) = build_checked(w, &Device::Cpu, Path::new("m"), tiny).unwrap();
        assert_eq!((a.dtype(), b.dtype()), (DType::F32, DType::F32));
    }

    #[test]
    fn formats_are_told_by_content() {
        let dir = std::env::temp_dir().join(format!("diffpost_ckpt_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = dir.join("w.bin");
        let mut m = HashMap::new();
        m.insert(
            "x".to_string(),
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&m, &st).unwrap();
        assert_eq!(detect_format(&st).unwrap(), WeightFormat::Safetensors);
        let legacy = dir.join("old.pt");
        std::fs::write(
            &legacy,
            [0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9],
        )
        .unwrap();
        assert_eq!(detect_format(&legacy).unwrap(), WeightFormat::TorchLegacy);
        let err = load_state_dict(&legacy, None).unwrap_err().to_string();
        assert!(
            err.contains("legacy") && err.contains("torch.save"),
            "{err}"
        );
        let junk = dir.join("junk.pt");
        std::fs::write(&junk, b"hello world, not weights").unwrap();
        assert!(detect_format(&junk).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
