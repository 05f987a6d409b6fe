//! A `.npy` parser that trusts nothing in the file: format versions 1.0, 2.0 and 3.0, the header
//! dict (`descr`, `fortran_order`, `shape`) parsed as the small Python-literal subset numpy
//! writes, the byte count computed with checked arithmetic and compared with the bytes actually
//! present *before* any buffer is allocated, and the memory the result needs checked against
//! the machine's ([`crate::limits`]).
//!
//! Dtype policy (one for every array diffpost reads): bool, int8/16/32/64, uint8/16/32/64,
//! float16/32/64 in any byte order (`<`, `>`, `|`, `=`) are read and converted to f64; complex,
//! object, string, datetime and structured dtypes are refused. Fortran-ordered arrays are
//! transposed into C (row-major) order, so the values land at the same indices as in numpy.
//!
//! Errors are plain reason strings; the callers in [`crate::io`] add the file and the array.

use std::io::Read;

/// The 6 bytes every `.npy` starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The longest header accepted (numpy's own loader refuses more than 10 000 bytes by default).
pub const MAX_HEADER_LEN: usize = 1 << 20;

/// Nesting depth of the header's Python literal (a structured dtype nests a few levels).
const MAX_DEPTH: usize = 16;

/// Element kinds diffpost reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Uint,
    Float,
}

/// An accepted element type: kind, size in bytes and byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NpyDtype {
    pub kind: Kind,
    pub size: usize,
    pub big_endian: bool,
}

impl NpyDtype {
    /// numpy's name: `float32`, `int64`, `bool`, ...
    pub fn name(&self) -> String {
        let bits = 8 * self.size;
        match self.kind {
            Kind::Bool => "bool".into(),
            Kind::Int => format!("int{bits}"),
            Kind::Uint => format!("uint{bits}"),
            Kind::Float => format!("float{bits}"),
        }
    }

    /// Whether reading converts the values (anything but float64).
    pub fn is_f64(&self) -> bool {
        self.kind == Kind::Float && self.size == 8
    }

    /// Parses a numpy type string (`'<f8'`, `'|b1'`, `'>i4'`, `'u1'` ...); refusals name the dtype.
    pub fn from_descr(descr: &str) -> Result<Self, String> {
        let native_big = cfg!(target_endian = "big");
        let (big_endian, rest) = match descr.as_bytes().first() {
            Some(b'<') => (false, &descr[1..]),
            Some(b'>') => (true, &descr[1..]),
            Some(b'|') | Some(b'=') => (native_big, &descr[1..]),
            _ => (native_big, descr),
        };
        let accepted = "accepted: bool, int8/16/32/64, uint8/16/32/64, float16/32/64";
        let refuse = |what: String| {
            Err(format!(
                "dtype {what} ('{descr}') is not supported; {accepted}"
            ))
        };
        let mut chars = rest.chars();
        let kind = match chars.next() {
            Some(c) => c,
            None => return Err(format!("empty dtype '{descr}'")),
        };
        let tail = chars.as_str();
        let size: Option<usize> = if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            tail.parse().ok()
        } else {
            None
        };
        let sized = |k: Kind, ok: &[usize]| -> Result<Self, String> {
            match size {
                Some(s) if ok.contains(&s) => Ok(NpyDtype {
                    kind: k,
                    size: s,
                    big_endian,
                }),
                _ => Err(format!(
                    "invalid or unsupported dtype '{descr}'; {accepted}"
                )),
            }
        };
        match kind {
            'b' | '?' if tail.is_empty() || size == Some(1) => Ok(NpyDtype {
                kind: Kind::Bool,
                size: 1,
                big_endian,
            }),
            'i' => sized(Kind::Int, &[1, 2, 4, 8]),
            'u' => sized(Kind::Uint, &[1, 2, 4, 8]),
            'f' if matches!(size, Some(12) | Some(16)) => {
                refuse(format!("float{} (long double)", 8 * size.unwrap_or(0)))
            }
            'f' => sized(Kind::Float, &[2, 4, 8]),
            'c' => refuse(match size {
                Some(s) => format!("complex{}", 8 * s),
                None => "complex".into(),
            }),
            'O' => refuse("object".into()),
            'U' => refuse("unicode string".into()),
            'S' | 'a' => refuse("byte string".into()),
            'V' => refuse("void (raw bytes or structured)".into()),
            'M' => refuse("datetime64".into()),
            'm' => refuse("timedelta64".into()),
            _ => Err(format!(
                "invalid or unsupported dtype '{descr}'; {accepted}"
            )),
        }
    }
}

/// What a `.npy` header says.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// Format version (major, minor).
    pub version: (u8, u8),
    pub dtype: NpyDtype,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Bytes before the data: magic, version, length field and the header text.
    pub data_offset: u64,
    /// Number of elements.
    pub count: u64,
    /// Bytes of data the shape and dtype imply.
    pub data_bytes: u64,
}

/// A decoded array: values as f64 in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub header: NpyHeader,
    pub data: Vec<f64>,
}

/// Reads exactly `buf.len()` bytes; a short read is `Err(bytes read)`.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), String> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Err(format!("truncated: ended after {n} of {} bytes", buf.len())),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
    Ok(())
}

/// Reads and checks the preamble and header from `r`, whose total length is `available` bytes
/// (the file's length, or the zip entry's declared size): the data must fill the rest exactly.
pub fn read_header<R: Read>(r: &mut R, available: u64) -> Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    if available < 10 {
        return Err(format!("not a .npy file: only {available} bytes"));
    }
    fill(r, &mut pre).map_err(|e| format!("not a .npy file ({e})"))?;
    if pre[..6] != MAGIC[..] {
        return Err("not a .npy file (no \\x93NUMPY magic at the start)".into());
    }
    let version = (pre[6], pre[7]);
    let len_bytes = match version.0 {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(format!(
                "unsupported .npy format version {}.{} (1.0, 2.0 and 3.0 are read)",
                version.0, version.1
            ))
        }
    };
    let mut lb = [0u8; 4];
    fill(r, &mut lb[..len_bytes]).map_err(|e| format!("header length: {e}"))?;
    let header_len = u32::from_le_bytes(lb) as u64;
    let data_offset = 8 + len_bytes as u64 + header_len;
    if data_offset > available {
        return Err(format!(
            "header length {header_len} runs past the end of the data ({available} bytes)"
        ));
    }
    if header_len as usize > MAX_HEADER_LEN {
        return Err(format!(
            "header length {header_len} exceeds the limit of {MAX_HEADER_LEN} bytes"
        ));
    }
    let mut text = vec![0u8; header_len as usize];
    fill(r, &mut text).map_err(|e| format!("header: {e}"))?;
    if version.0 == 3 && std::str::from_utf8(&text).is_err() {
        return Err("header (format 3.0) is not valid UTF-8".into());
    }
    let (descr, fortran_order, shape) = parse_header_dict(&text)?;
    let dtype = NpyDtype::from_descr(&descr)?;
    let dims = |s: &[usize]| format!("{s:?}");
    // Element count, and the product of the non-zero dims (strides of an empty array must fit
    // too), with checked arithmetic: a hostile shape must not wrap around.
    let mut count: u64 = 1;
    let mut nonzero: u64 = 1;
    for &d in &shape {
        let d64 = d as u64;
        count = count.saturating_mul(d64);
        if d != 0 {
            nonzero = nonzero.checked_mul(d64).ok_or_else(|| {
                format!("shape {} overflows a 64-bit element count", dims(&shape))
            })?;
        }
    }
    // Raw bytes and the f64 result (8 bytes an element, the widest dtype) must both fit.
    nonzero.checked_mul(8).ok_or_else(|| {
        format!(
            "shape {} of {} overflows a 64-bit byte count",
            dims(&shape),
            dtype.name()
        )
    })?;
    let data_bytes = count * dtype.size as u64;
    let present = available - data_offset;
    if data_bytes != present {
        let what = if data_bytes > present {
            "truncated or corrupt"
        } else {
            "corrupt (extra bytes after the data)"
        };
        return Err(format!(
            "{what}: the header's shape {} of {} needs {data_bytes} data bytes, {present} are present",
            dims(&shape),
            dtype.name()
        ));
    }
    Ok(NpyHeader {
        version,
        dtype,
        fortran_order,
        shape,
        data_offset,
        count,
        data_bytes,
    })
}

/// Reads a whole `.npy` stream of `available` bytes: header, checks, then the data (in chunks,
/// converted to f64 as it comes), then checks that nothing follows.
pub fn read_npy<R: Read>(r: &mut R, available: u64) -> Result<NpyArray, String> {
    let header = read_header(r, available)?;
    // The header's claims were checked against the bytes present; now against memory.
    let copies = if header.fortran_order { 2 } else { 1 };
    let need = header.count as u128 * 8 * copies + CHUNK as u128;
    if let Some(p) = crate::limits::alloc_problem(need) {
        return Err(format!(
            "shape {:?} of {} as float64 {p}",
            header.shape,
            header.dtype.name()
        ));
    }
    let dt = header.dtype;
    let mut data: Vec<f64> = Vec::with_capacity(header.count as usize);
    let per_chunk = (CHUNK / dt.size) * dt.size;
    let mut buf = vec![0u8; per_chunk];
    let mut left = header.data_bytes;
    while left > 0 {
        let n = left.min(per_chunk as u64) as usize;
        fill(r, &mut buf[..n]).map_err(|e| format!("data {e}"))?;
        decode(dt, &buf[..n], &mut data);
        left -= n as u64;
    }
    // A zip entry must end here (this read also makes the zip reader check the CRC).
    let mut probe = [0u8; 1];
    loop {
        match r.read(&mut probe) {
            Ok(0) => break,
            Ok(_) => return Err("corrupt: more bytes after the data than the header says".into()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read error after the data: {e}")),
        }
    }
    if header.fortran_order && header.shape.len() > 1 {
        data = fortran_to_c(&data, &header.shape);
    }
    Ok(NpyArray { header, data })
}

const CHUNK: usize = 1 << 20;

fn decode(dt: NpyDtype, bytes: &[u8], out: &mut Vec<f64>) {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let it = bytes.chunks_exact($n).map(|c| {
                let a: [u8; $n] = c.try_into().unwrap_or([0; $n]);
                if dt.big_endian {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            });
            out.extend(it.map(|v| v as f64));
        }};
    }
    match (dt.kind, dt.size) {
        (Kind::Bool, _) => out.extend(bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })),
        (Kind::Int, 1) => out.extend(bytes.iter().map(|&b| b as i8 as f64)),
        (Kind::Uint, 1) => out.extend(bytes.iter().map(|&b| b as f64)),
        (Kind::Int, 2) => conv!(i16, 2),
        (Kind::Int, 4) => conv!(i32, 4),
        (Kind::Int, 8) => conv!(i64, 8),
        (Kind::Uint, 2) => conv!(u16, 2),
        (Kind::Uint, 4) => conv!(u32, 4),
        (Kind::Uint, 8) => conv!(u64, 8),
        (Kind::Float, 2) => {
            let it = bytes.chunks_exact(2).map(|c| {
                let a = [c[0], c[1]];
                let h = if dt.big_endian {
                    u16::from_be_bytes(a)
                } else {
                    u16::from_le_bytes(a)
                };
                f16_to_f64(h)
            });
            out.extend(it)
        }
        (Kind::Float, 4) => conv!(f32, 4),
        (Kind::Float, 8) => conv!(f64, 8),
        // from_descr admits no other combination.
        _ => {}
    }
}

/// IEEE 754 half precision to f64 (exact).
pub fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as f64;
    let mag = match exp {
        0 => man * (2f64).powi(-24),
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + man / 1024.0) * (2f64).powi(e - 15),
    };
    sign * mag
}

/// Column-major (Fortran) data of `shape` to row-major order.
fn fortran_to_c(data: &[f64], shape: &[usize]) -> Vec<f64> {
    let r = shape.len();
    // Fortran strides: the first index moves fastest.
    let mut fstride = vec![1usize; r];
    for k in 1..r {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    for _ in 0..data.len() {
        out.push(data[off]);
        // Advance the row-major multi-index (last index fastest), keeping `off` in step.
        for k in (0..r).rev() {
            idx[k] += 1;
            off += fstride[k];
            if idx[k] < shape[k] {
                break;
            }
            off -= fstride[k] * idx[k];
            idx[k] = 0;
        }
    }
    out
}

/// The Python literals a `.npy` header holds.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(i128),
    None,
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn err(&self, what: &str) -> String {
        let end = (self.i + 20).min(self.s.len());
        let near = String::from_utf8_lossy(&self.s[self.i.min(end)..end]);
        format!(
            "malformed header: {what} at byte {} (near {near:?})",
            self.i
        )
    }

    fn value(&mut self, depth: usize) -> Result<Lit, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                let mut out = Vec::new();
                loop {
                    match self.s.get(self.i) {
                        None => {
                            self.i = start;
                            return Err(self.err("unterminated string"));
                        }
                        Some(&c) if c == q => {
                            self.i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            if let Some(&c) = self.s.get(self.i + 1) {
                                out.push(c);
                            }
                            self.i += 2;
                        }
                        Some(&c) => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
                Ok(Lit::Str(String::from_utf8_lossy(&out).into_owned()))
            }
            Some(open @ (b'(' | b'[' | b'{')) => {
                self.i += 1;
                let close = match open {
                    b'(' => b')',
                    b'[' => b']',
                    _ => b'}',
                };
                let mut items = Vec::new();
                let mut pairs = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.i += 1;
                        break;
                    }
                    let v = self.value(depth + 1)?;
                    if open == b'{' {
                        if self.peek() != Some(b':') {
                            return Err(self.err("expected ':'"));
                        }
                        self.i += 1;
                        let w = self.value(depth + 1)?;
                        pairs.push((v, w));
                    } else {
                        items.push(v);
                    }
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(c) if c == close => {}
                        _ => return Err(self.err("expected ',' or a closing bracket")),
                    }
                }
                Ok(if open == b'{' {
                    Lit::Dict(pairs)
                } else {
                    Lit::Seq(items)
                })
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let neg = c == b'-';
                if neg {
                    self.i += 1;
                }
                let start = self.i;
                let mut v: i128 = 0;
                while let Some(&d) = self.s.get(self.i).filter(|d| d.is_ascii_digit()) {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add((d - b'0') as i128))
                        .ok_or_else(|| self.err("integer too large"))?;
                    self.i += 1;
                }
                if self.i == start {
                    return Err(self.err("expected digits"));
                }
                // Python 2 long literals (`3L`) appear in old files.
                if matches!(self.s.get(self.i), Some(b'L') | Some(b'l')) {
                    self.i += 1;
                }
                Ok(Lit::Int(if neg { -v } else { v }))
            }
            Some(_) => {
                for (word, lit) in [
                    ("True", Lit::Bool(true)),
                    ("False", Lit::Bool(false)),
                    ("None", Lit::None),
                ] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(lit);
                    }
                }
                Err(self.err("unexpected character"))
            }
            None => Err(self.err("unexpected end")),
        }
    }
}

/// Parses the header dict; returns `(descr, fortran_order, shape)`.
fn parse_header_dict(text: &[u8]) -> Result<(String, bool, Vec<usize>), String> {
    let mut p = Parser { s: text, i: 0 };
    let v = p.value(0)?;
    if p.peek().is_some() {
        return Err(p.err("trailing characters after the header dict"));
    }
    let pairs = match v {
        Lit::Dict(pairs) => pairs,
        _ => return Err("malformed header: not a dict".into()),
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in pairs {
        let key = match k {
            Lit::Str(s) => s,
            other => return Err(format!("malformed header: key {other:?} is not a string")),
        };
        let slot_taken = match key.as_str() {
            "descr" => descr.replace(v).is_some(),
            "fortran_order" => fortran.replace(v).is_some(),
            "shape" => shape.replace(v).is_some(),
            _ => false, // numpy writes no other keys; extra ones are ignored
        };
        if slot_taken {
            return Err(format!("malformed header: key '{key}' appears twice"));
        }
    }
    let descr = match descr {
        Some(Lit::Str(s)) => s,
        Some(Lit::Seq(_)) | Some(Lit::Dict(_)) => {
            return Err(
                "structured dtype (record array) is not supported; accepted: bool, \
                 int8/16/32/64, uint8/16/32/64, float16/32/64"
                    .into(),
            )
        }
        Some(other) => return Err(format!("malformed header: 'descr' is {other:?}")),
        None => return Err("malformed header: no 'descr' key".into()),
    };
    let fortran = match fortran {
        Some(Lit::Bool(b)) => b,
        Some(other) => return Err(format!("malformed header: 'fortran_order' is {other:?}")),
        None => return Err("malformed header: no 'fortran_order' key".into()),
    };
    let shape = match shape {
        Some(Lit::Seq(items)) => items
            .into_iter()
            .map(|d| match d {
                Lit::Int(n) if n >= 0 => usize::try_from(n)
                    .map_err(|_| format!("malformed header: dimension {n} is too large")),
                other => Err(format!("malformed header: dimension {other:?} in 'shape'")),
            })
            .collect::<Result<Vec<usize>, String>>()?,
        Some(other) => return Err(format!("malformed header: 'shape' is {other:?}")),
        None => return Err("malformed header: no 'shape' key".into()),
    };
    Ok((descr, fortran, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_dict_parses_numpy_output() {
        let (d, f, s) =
            parse_header_dict(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }   \n")
                .unwrap();
        assert_eq!((d.as_str(), f, s), ("<f8", false, vec![3, 4]));
        let (_, _, s) =
            parse_header_dict(b"{\"descr\": \"|u1\", \"fortran_order\": True, \"shape\": ()}")
                .unwrap();
        assert!(s.is_empty());
        let (_, _, s) =
            parse_header_dict(b"{'descr':'<i8','fortran_order':False,'shape':(7L,)}").unwrap();
        assert_eq!(s, vec![7]);
        for bad in [
            &b"{'descr': '<f8', 'fortran_order': False}"[..],
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}",
            b"{'descr': '<f8', 'fortran_order': 0, 'shape': (1,)}",
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,)} x",
            b"{'descr': '<f8",
            b"((((((((((((((((((((((((((((((((((((((((",
            b"",
        ] {
            assert!(
                parse_header_dict(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn fortran_order_is_transposed() {
        // numpy: np.asfortranarray(np.arange(6).reshape(2, 3)) stores 0 3 1 4 2 5.
        let f = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert_eq!(
            fortran_to_c(&f, &[2, 3]),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        // [2, 3, 2]: element (i, j, k) at i + 2 j + 6 k.
        let mut f = vec![0.0; 12];
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..2 {
                    f[i + 2 * j + 6 * k] = (i * 6 + j * 2 + k) as f64;
                }
            }
        }
        let c = fortran_to_c(&f, &[2, 3, 2]);
        assert_eq!(c, (0..12).map(|v| v as f64).collect::<Vec<_>>());
    }

    #[test]
    fn half_precision() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
        assert!(f16_to_f64(0x7e00).is_nan());
        assert_eq!(f16_to_f64(0xfc00), f64::NEG_INFINITY);
    }
}
