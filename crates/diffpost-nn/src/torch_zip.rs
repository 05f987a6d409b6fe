//! PyTorch zip checkpoints (`torch.save`, PyTorch >= 1.6) read without executing code and
//! without trusting the file.
//!
//! The archive holds `<name>/data.pkl` (a pickle describing the objects, tensors as calls to
//! `torch._utils._rebuild_tensor_v2` on persistent storage ids) and `<name>/data/<key>` (the raw
//! bytes of each storage). The pickle is interpreted by a small stack machine that knows only the
//! opcodes state dicts use; it never imports or calls anything. Against hostile files it bounds
//! nesting depth (no stack overflow when results are dropped), total work (no exponential growth
//! through the memo), and checks every length against the bytes present; a tensor's extent
//! (offset, sizes, strides) is checked against its storage entry, and the memory it needs
//! against the machine's, before anything is allocated.
//!
//! Storage types read: Float, Double, Half, BFloat16, Byte, Bool (as u8), Short, Int, Long.
//! Tensors of other storage types are skipped (they then show up as missing when a network is
//! built from the file).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use zip::ZipArchive;

/// Deepest nesting of pickle objects accepted (state dicts nest a handful of levels).
const MAX_DEPTH: u32 = 64;
/// Most element copies the stack machine may do (bounds time on hostile memo games).
const MAX_WORK: u64 = 50_000_000;
/// Largest `data.pkl` read (a state dict's pickle is kilobytes to a few megabytes).
const MAX_PICKLE: u64 = 1 << 30;

type R<T> = std::result::Result<T, String>;

#[derive(Debug, Clone)]
enum Obj {
    Mark,
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Class(Rc<(String, String)>),
    Tuple(Rc<Node>),
    List(Rc<Node>),
    /// Flattened key, value, key, value ...
    Dict(Rc<Node>),
    /// `callable(*args)` (REDUCE, NEWOBJ): items `[callable, args]`.
    Call(Rc<Node>),
    /// `obj.__setstate__(state)` (BUILD): items `[obj, state]`.
    Build(Rc<Node>),
    /// A persistent id (BINPERSID): items `[id]`.
    PersId(Rc<Node>),
}

#[derive(Debug, Clone)]
struct Node {
    depth: u32,
    items: Vec<Obj>,
}

impl Obj {
    fn depth(&self) -> u32 {
        match self {
            Obj::Tuple(n)
            | Obj::List(n)
            | Obj::Dict(n)
            | Obj::Call(n)
            | Obj::Build(n)
            | Obj::PersId(n) => n.depth,
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Obj::Mark => "mark",
            Obj::None => "None",
            Obj::Bool => "bool",
            Obj::Int(_) => "int",
            Obj::Float => "float",
            Obj::Str(_) => "str",
            Obj::Bytes => "bytes",
            Obj::Class(_) => "class",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Call(_) => "call",
            Obj::Build(_) => "build",
            Obj::PersId(_) => "persistent id",
        }
    }

    fn is_class(&self, module: &str, name: &str) -> bool {
        matches!(self, Obj::Class(c) if c.0 == module && c.1 == name)
    }
}

/// A node over `items`, refused beyond [`MAX_DEPTH`].
fn node(items: Vec<Obj>) -> R<Rc<Node>> {
    let depth = 1 + items.iter().map(Obj::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("pickle nests deeper than {MAX_DEPTH} levels"));
    }
    Ok(Rc::new(Node { depth, items }))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Obj>,
    memo: HashMap<u32, Obj>,
    work: u64,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "pickle truncated: needs {n} bytes at offset {}, {} remain",
                    self.pos,
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .take(1024)
            .position(|&b| b == b'\n')
            .ok_or("pickle: GLOBAL name without a newline (or longer than 1024 bytes)")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn charge(&mut self, n: usize) -> R<()> {
        self.work = self.work.saturating_add(n as u64 + 1);
        if self.work > MAX_WORK {
            return Err("pickle too complex (work limit reached)".into());
        }
        Ok(())
    }

    fn pop(&mut self) -> R<Obj> {
        match self.stack.pop() {
            Some(Obj::Mark) => Err("pickle: unexpected mark on the stack".into()),
            Some(o) => Ok(o),
            None => Err("pickle: pop from an empty stack".into()),
        }
    }

    fn pop_mark(&mut self) -> R<Vec<Obj>> {
        let at = self
            .stack
            .iter()
            .rposition(|o| matches!(o, Obj::Mark))
            .ok_or("pickle: no mark on the stack")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        self.charge(items.len())?;
        Ok(items)
    }

    fn push(&mut self, o: Obj) -> R<()> {
        if self.stack.len() >= 1 << 20 {
            return Err("pickle: stack deeper than 2^20 entries".into());
        }
        self.stack.push(o);
        Ok(())
    }

    fn string(&mut self, n: usize) -> R<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "pickle: string is not UTF-8".to_string())?;
        self.charge(n / 64)?;
        self.push(Obj::Str(Rc::from(s)))
    }

    /// Adds `new` items to the list or dict on top of the stack (copy on write when shared).
    fn extend_top(&mut self, new: Vec<Obj>, dict: bool) -> R<()> {
        if dict && !new.len().is_multiple_of(2) {
            return Err("pickle: SETITEMS with an odd number of objects".into());
        }
        let add_depth = 1 + new.iter().map(Obj::depth).max().unwrap_or(0);
        if add_depth > MAX_DEPTH {
            return Err(format!("pickle nests deeper than {MAX_DEPTH} levels"));
        }
        let top = self
            .stack
            .last_mut()
            .ok_or("pickle: append to an empty stack")?;
        let n = match (top, dict) {
            (Obj::List(n), false) | (Obj::Dict(n), true) => n,
            (other, _) => {
                return Err(format!(
                    "pickle: {} onto a {}",
                    if dict { "SETITEM" } else { "APPEND" },
                    other.kind()
                ))
            }
        };
        let copied = if Rc::strong_count(n) > 1 {
            n.items.len()
        } else {
            0
        };
        let n = Rc::make_mut(n);
        n.depth = n.depth.max(add_depth);
        let added = new.len();
        n.items.extend(new);
        self.charge(copied + added)
    }

    /// Runs to STOP; returns the object left on the stack.
    fn run(mut self) -> R<Obj> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.take(8)?; // FRAME (protocol 4): just a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.push(Obj::Mark)?,
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool)?,
                0x89 => self.push(Obj::Bool)?,
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i64))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Obj::Int(v as i64))?
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Obj::Int(v as i64))?
                }
                0x8a => {
                    // LONG1: n-byte little-endian two's complement.
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(format!("pickle: {n}-byte integer (at most 8 are read)"));
                    }
                    let b = self.take(n)?;
                    let mut a = [0u8; 8];
                    a[..n].copy_from_slice(b);
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        a[n..].fill(0xff);
                    }
                    self.push(Obj::Int(i64::from_le_bytes(a)))?
                }
                b'G' => {
                    self.take(8)?; // BINFLOAT: no float matters to a state dict's tensors
                    self.push(Obj::Float)?
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    self.string(n)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.string(n)?
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let n = usize::try_from(n).map_err(|_| "pickle: string too long")?;
                    self.string(n)?
                }
                b'B' | b'C' => {
                    let n = if op == b'B' {
                        u32::from_le_bytes(self.le()?) as usize
                    } else {
                        self.u8()? as usize
                    };
                    self.take(n)?;
                    self.push(Obj::Bytes)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Obj::Class(Rc::new((module, name))))?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Obj::Str(m), Obj::Str(n)) => {
                            self.push(Obj::Class(Rc::new((m.to_string(), n.to_string()))))?
                        }
                        _ => return Err("pickle: STACK_GLOBAL needs two strings".into()),
                    }
                }
                b')' => self.push(Obj::Tuple(node(vec![])?))?,
                b']' => self.push(Obj::List(node(vec![])?))?,
                b'}' => self.push(Obj::Dict(node(vec![])?))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(node(items)?))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(node(items)?))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err("pickle: DICT with an odd number of objects".into());
                    }
                    self.push(Obj::Dict(node(items)?))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle: TUPLE from too few objects".into());
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(node(items)?))?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], false)?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, false)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(vec![k, v], true)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, true)?
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    // OrderedDict() and defaultdict() start the dicts state dicts are.
                    let o = if callable.is_class("collections", "OrderedDict")
                        || callable.is_class("collections", "defaultdict")
                    {
                        Obj::Dict(node(vec![])?)
                    } else {
                        Obj::Call(node(vec![callable, args])?)
                    };
                    self.push(o)?
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    // A dict's state is more items (OrderedDict with attributes like _metadata
                    // arrives as a dict followed by BUILD).
                    let o = match (obj, state) {
                        (Obj::Dict(d), Obj::Dict(s)) => {
                            let mut items = d.items.clone();
                            items.extend(s.items.iter().cloned());
                            self.charge(items.len())?;
                            Obj::Dict(node(items)?)
                        }
                        (obj, state) => Obj::Build(node(vec![obj, state])?),
                    };
                    self.push(o)?
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Obj::PersId(node(vec![id])?))?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?);
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        u32::from_le_bytes(self.le()?)
                    };
                    let o = self
                        .memo
                        .get(&k)
                        .cloned()
                        .ok_or_else(|| format!("pickle: memo entry {k} is missing"))?;
                    self.charge(0)?;
                    self.push(o)?
                }
                b'0' => {
                    self.stack.pop().ok_or("pickle: POP from an empty stack")?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let o = self.stack.last().cloned().ok_or("pickle: DUP of nothing")?;
                    self.push(o)?
                }
                other => {
                    return Err(format!(
                        "pickle: opcode 0x{other:02x} at offset {} is not one a state dict uses",
                        self.pos - 1
                    ))
                }
            }
        }
    }

    fn memo_put(&mut self, k: u32) -> R<()> {
        let o = self
            .stack
            .last()
            .cloned()
            .ok_or("pickle: PUT from an empty stack")?;
        if matches!(o, Obj::Mark) {
            return Err("pickle: PUT of a mark".into());
        }
        self.charge(0)?;
        self.memo.insert(k, o);
        Ok(())
    }
}

/// Runs a pickle; the top object at STOP.
fn unpickle(data: &[u8]) -> R<Obj> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        work: 0,
    }
    .run()
}

/// Where a tensor's data lies.
#[derive(Debug)]
struct TensorSpec {
    dtype: DType,
    elem_size: usize,
    /// Storage entry key (`data/<key>`).
    key: String,
    storage_numel: u64,
    offset: u64,
    size: Vec<usize>,
    stride: Vec<u64>,
}

fn int(o: &Obj, what: &str) -> R<u64> {
    match o {
        Obj::Int(v) if *v >= 0 => Ok(*v as u64),
        // Only the kind: printing a hostile object could take exponential time.
        Obj::Int(v) => Err(format!("{what} is negative ({v})")),
        other => Err(format!("{what} is a {}, not an int", other.kind())),
    }
}

fn ints(o: &Obj, what: &str) -> R<Vec<u64>> {
    match o {
        Obj::Tuple(n) | Obj::List(n) => n.items.iter().map(|v| int(v, what)).collect(),
        other => Err(format!("{what} is a {}, not a tuple", other.kind())),
    }
}

/// The tensor a state-dict value describes: `Ok(None)` for values that are not tensors (or of a
/// storage type not read).
fn tensor_spec(value: &Obj) -> R<Option<TensorSpec>> {
    let Obj::Call(call) = value else {
        return Ok(None);
    };
    let (mut callable, mut args) = (&call.items[0], &call.items[1]);
    if callable.is_class("torch._tensor", "_rebuild_from_type_v2") {
        // (func, type, args, state)
        match args {
            Obj::Tuple(t) if t.items.len() >= 3 => {
                callable = &t.items[0];
                args = &t.items[2];
            }
            _ => return Err("_rebuild_from_type_v2 needs (func, type, args, ...)".into()),
        }
    } else if callable.is_class("torch._utils", "_rebuild_parameter") {
        // (data, requires_grad, backward_hooks), data a _rebuild_tensor_v2 call.
        match args {
            Obj::Tuple(t) if !t.items.is_empty() => match &t.items[0] {
                Obj::Call(c) => {
                    callable = &c.items[0];
                    args = &c.items[1];
                }
                other => return Err(format!("_rebuild_parameter of a {}", other.kind())),
            },
            _ => return Err("_rebuild_parameter needs (data, ...)".into()),
        }
    }
    if !callable.is_class("torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks)
    let a = match args {
        Obj::Tuple(t) if t.items.len() >= 4 => &t.items,
        _ => return Err("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)".into()),
    };
    let storage = match &a[0] {
        Obj::PersId(p) => match &p.items[0] {
            Obj::Tuple(t) if t.items.len() >= 5 => &t.items,
            _ => return Err("a storage id must be ('storage', type, key, location, numel)".into()),
        },
        other => {
            return Err(format!(
                "the storage is a {}, not a persistent id",
                other.kind()
            ))
        }
    };
    let class = match &storage[1] {
        Obj::Class(c) => c.1.as_str(),
        other => return Err(format!("the storage type is a {}", other.kind())),
    };
    let dtype = match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" | "BoolStorage" => DType::U8,
        "ShortStorage" => DType::I16,
        "IntStorage" => DType::I32,
        "LongStorage" => DType::I64,
        _ => return Ok(None),
    };
    let key = match &storage[2] {
        Obj::Str(s) => s.to_string(),
        other => return Err(format!("the storage key is a {}", other.kind())),
    };
    let size: Vec<usize> = ints(&a[2], "a size")?
        .into_iter()
        .map(|v| usize::try_from(v).map_err(|_| "a size is too large".to_string()))
        .collect::<R<_>>()?;
    let stride = ints(&a[3], "a stride")?;
    if size.len() != stride.len() {
        return Err(format!(
            "size {size:?} and stride {stride:?} have different lengths"
        ));
    }
    Ok(Some(TensorSpec {
        dtype,
        elem_size: dtype.size_in_bytes(),
        key,
        storage_numel: int(&storage[4], "the storage size")?,
        offset: int(&a[1], "the storage offset")?,
        size,
        stride,
    }))
}

/// The `(name, tensor description)` pairs of the state dict in `top` (under `key` if given).
fn state_dict_specs(top: Obj, key: Option<&str>) -> R<Vec<(String, TensorSpec)>> {
    // A TorchScript-style module: BUILD(Module(), state).
    let top = match &top {
        Obj::Build(b) => match &b.items[0] {
            Obj::Call(c) if c.items[0].is_class("__torch__", "Module") => b.items[1].clone(),
            _ => top.clone(),
        },
        _ => top,
    };
    let top = match (key, &top) {
        (Some(k), Obj::Dict(d)) => d
            .items
            .chunks_exact(2)
            .find(|kv| matches!(&kv[0], Obj::Str(s) if &**s == k))
            .map(|kv| kv[1].clone())
            .ok_or_else(|| format!("key {k} not found"))?,
        _ => top,
    };
    let mut out = Vec::new();
    if let Obj::Dict(d) = &top {
        for kv in d.items.chunks_exact(2) {
            let Obj::Str(name) = &kv[0] else { continue };
            if let Some(spec) = tensor_spec(&kv[1]).map_err(|e| format!("tensor `{name}`: {e}"))? {
                out.push((name.to_string(), spec));
            }
        }
    }
    Ok(out)
}

/// Reads the tensor `spec` from its storage entry, checking its extent first.
fn read_tensor(
    zip: &mut ZipArchive<BufReader<File>>,
    archive_len: u64,
    entry_name: &str,
    spec: &TensorSpec,
) -> R<Tensor> {
    let es = spec.elem_size as u64;
    let numel: u64 = spec
        .size
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("size {:?} overflows", spec.size))?;
    // The last element's index within the storage, with checked arithmetic.
    let mut last = spec.offset;
    if numel > 0 {
        for (&d, &s) in spec.size.iter().zip(&spec.stride) {
            last = (d as u64 - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| {
                    format!(
                        "size {:?} with stride {:?} overflows",
                        spec.size, spec.stride
                    )
                })?;
        }
    }
    let end = if numel == 0 { spec.offset } else { last + 1 };
    if end > spec.storage_numel {
        return Err(format!(
            "size {:?}, stride {:?} and offset {} reach element {end} of a storage of {}",
            spec.size, spec.stride, spec.offset, spec.storage_numel
        ));
    }
    let i = zip
        .index_for_name(entry_name)
        .ok_or_else(|| format!("storage entry {entry_name} is missing"))?;
    let (size, packed, method, encrypted) = {
        let e = zip
            .by_index_data(i)
            .map_err(|e| format!("{entry_name}: {e}"))?;
        (
            e.size(),
            e.compressed_size(),
            e.compression(),
            e.encrypted(),
        )
    };
    if let Some(p) =
        diffpost_core::io::npz::entry_problem(size, packed, method, encrypted, archive_len)
    {
        return Err(format!("{entry_name}: {p}"));
    }
    let storage_bytes = spec
        .storage_numel
        .checked_mul(es)
        .ok_or("the storage size overflows")?;
    if storage_bytes > size {
        return Err(format!(
            "{entry_name} holds {size} bytes, the pickle says {} elements of {es} bytes",
            spec.storage_numel
        ));
    }
    let (start, stop) = (spec.offset * es, end * es);
    let need = (stop - start) as u128 + numel as u128 * es as u128;
    if let Some(p) = diffpost_core::limits::alloc_problem(need) {
        return Err(format!("tensor of size {:?} {p}", spec.size));
    }
    let mut entry = zip.by_index(i).map_err(|e| format!("{entry_name}: {e}"))?;
    std::io::copy(&mut (&mut entry).take(start), &mut std::io::sink())
        .map_err(|e| format!("{entry_name}: {e}"))?;
    let mut raw = vec![0u8; (stop - start) as usize];
    entry
        .read_exact(&mut raw)
        .map_err(|e| format!("{entry_name}: {e}"))?;
    // Row-major strides (size-1 dims may have any stride): the bytes are the tensor as is.
    let mut contiguous = true;
    let mut expect = 1u64;
    for (&d, &s) in spec.size.iter().zip(&spec.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect = expect.saturating_mul(d as u64);
    }
    let bytes = if contiguous || numel == 0 {
        raw.truncate((numel * es) as usize);
        raw
    } else {
        gather(
            &raw,
            &spec.size,
            &spec.stride,
            spec.elem_size,
            numel as usize,
        )
    };
    Tensor::from_raw_buffer(&bytes, spec.dtype, &spec.size, &Device::Cpu).map_err(|e| e.to_string())
}

/// Copies the elements of a strided view (element strides, relative to `raw`'s start) into
/// row-major order. The caller checked every index is inside `raw`.
fn gather(raw: &[u8], size: &[usize], stride: &[u64], es: usize, numel: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; size.len()];
    for _ in 0..numel {
        let off: u64 = idx.iter().zip(stride).map(|(&i, &s)| i as u64 * s).sum();
        let at = off as usize * es;
        out.extend_from_slice(&raw[at..at + es]);
        for k in (0..size.len()).rev() {
            idx[k] += 1;
            if idx[k] < size[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Reads every tensor of the state dict in the PyTorch zip at `path` (under `key`, a top-level
/// dict entry, if given), on the CPU in the file's dtype. Errors are reasons (no path).
pub fn read_state_dict(path: &Path, key: Option<&str>) -> R<Vec<(String, Tensor)>> {
    let archive_len = diffpost_core::io::file_len(path)?;
    let f = File::open(path).map_err(|e| diffpost_core::io::describe_io_error(&e))?;
    let mut zip =
        ZipArchive::new(BufReader::new(f)).map_err(|e| format!("not a valid zip: {e}"))?;
    let pickles: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.ends_with("data.pkl"))
        .map(|n| n.to_string())
        .collect();
    if pickles.is_empty() {
        return Err("no data.pkl in the archive (not a torch.save file)".into());
    }
    let mut out = Vec::new();
    for pkl in pickles {
        let prefix = &pkl[..pkl.len() - "data.pkl".len()];
        if let Some(i) = zip.index_for_name(&format!("{prefix}byteorder")) {
            let mut b = String::new();
            let e = zip.by_index(i).map_err(|e| e.to_string())?;
            e.take(16)
                .read_to_string(&mut b)
                .map_err(|e| e.to_string())?;
            if b.trim() != "little" {
                return Err(format!(
                    "byte order {:?} is not read (only little)",
                    b.trim()
                ));
            }
        }
        let i = zip.index_for_name(&pkl).ok_or("data.pkl vanished")?;
        let (size, packed, method, encrypted) = {
            let e = zip.by_index_data(i).map_err(|e| format!("{pkl}: {e}"))?;
            (
                e.size(),
                e.compressed_size(),
                e.compression(),
                e.encrypted(),
            )
        };
        if let Some(p) =
            diffpost_core::io::npz::entry_problem(size, packed, method, encrypted, archive_len)
        {
            return Err(format!("{pkl}: {p}"));
        }
        if size > MAX_PICKLE {
            return Err(format!(
                "{pkl}: {size} bytes, more than the {MAX_PICKLE} read"
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        zip.by_index(i)
            .map_err(|e| format!("{pkl}: {e}"))?
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| format!("{pkl}: {e}"))?;
        let top = unpickle(&data)?;
        let specs = state_dict_specs(top, key)?;
        for (name, spec) in specs {
            let entry = format!("{prefix}data/{}", spec.key);
            let t = read_tensor(&mut zip, archive_len, &entry, &spec)
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            out.push((name, t));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_and_work_are_bounded() {
        let mut p = vec![0x80, 2, b']'];
        p.extend(std::iter::repeat_n(0x85u8, 100_000));
        p.push(b'.');
        assert!(unpickle(&p).unwrap_err().contains("deeper"));
        let mut p = vec![0x80, 2, b']'];
        for _ in 0..200 {
            p.extend([b'q', 0, b'h', 0, 0x86]);
        }
        p.push(b'.');
        assert!(unpickle(&p).unwrap_err().contains("deeper"));
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..100_000 {
            p.extend([b'h', 0, b'K', 1, b'a', b'q', 0, b'0']);
        }
        p.extend(b"h\x00.");
        // Each round copies the shared list: quadratic work, stopped by the limit.
        assert!(unpickle(&p).unwrap_err().contains("work limit"));
    }

    #[test]
    fn long1_is_signed() {
        let r = unpickle(&[0x8a, 2, 0xfe, 0xff, b'.']).unwrap();
        assert!(matches!(r, Obj::Int(-2)));
        let r = unpickle(&[0x8a, 1, 0x05, b'.']).unwrap();
        assert!(matches!(r, Obj::Int(5)));
    }

    #[test]
    fn strided_gather() {
        // A 2x3 view with strides (1, 2) of 6 elements (a transpose).
        let raw: Vec<u8> = (0u8..6).collect();
        assert_eq!(gather(&raw, &[2, 3], &[1, 2], 1, 6), vec![0, 2, 4, 1, 3, 5]);
    }
}
