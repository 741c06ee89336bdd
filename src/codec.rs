//! Block codec: the self-describing envelope every stored block carries, and
//! the choice of encoding per block.
//!
//! Blocks are framed (layout at "framed blocks" below): a header, a table
//! of independently compressed frames with a CRC32C each, then the frames,
//! so a reader can fetch and check a few frames of a compressed block. The
//! first format (magic "VB": codec id, shuffle offset, raw length, CRC32C,
//! one payload) still reads, and the disk cache keeps raw blocks in it. The
//! codec is recorded per block, so a reader never guesses and one volume may
//! mix codecs.
//!
//! Vector data barely compresses byte by byte (float32 mantissas look random)
//! but its exponent bytes and the high bytes of int64 ids are highly
//! repetitive. A byte shuffle (all byte 0s of each element, then all byte 1s,
//! ...) lines those up so lz4/zstd can use them. `auto` samples each block to
//! find the element width (4 or 8) and where elements start within the block
//! (a file header shifts them), and stores the block raw when no encoding
//! saves enough to pay for decoding it.

use thiserror::Error;

pub const HEADER_LEN: usize = 12;
const MAGIC: &[u8; 2] = b"VB";
/// An encoding must save at least this share of the bytes to be kept.
const MIN_SAVING: f64 = 0.03;
const SAMPLE: usize = 16 << 10;

/// Compression chosen at format time; each block may still fall back to raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// Plain lz4 on every block that shrinks.
    Lz4,
    /// Sampled per block: raw, lz4 or byte-shuffle + lz4, whichever pays.
    Auto,
    /// Sampled per block like auto, with zstd at the volume's level.
    Zstd,
}

/// A compression setting with its zstd level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    pub compression: Compression,
    pub zstd_level: i32,
}

impl Codec {
    pub fn new(compression: Compression, zstd_level: i32) -> Codec {
        Codec {
            compression,
            zstd_level,
        }
    }
}

/// Parses `none`, `lz4`, `auto`, `zstd` or `zstd:LEVEL`.
pub fn parse_compression(s: &str) -> Result<Codec, String> {
    let lower = s.to_ascii_lowercase();
    let (name, level) = match lower.split_once(':') {
        Some((n, l)) => (n.to_string(), Some(l.to_string())),
        None => (lower.clone(), None),
    };
    let c = match name.as_str() {
        "none" => Compression::None,
        "lz4" => Compression::Lz4,
        "auto" => Compression::Auto,
        "zstd" => Compression::Zstd,
        other => {
            return Err(format!(
                "unknown compression '{other}': use one of auto, lz4, zstd[:LEVEL], none"
            ))
        }
    };
    let zstd_level = match (c, level) {
        (Compression::Zstd, Some(l)) => {
            let n: i32 = l
                .parse()
                .map_err(|_| format!("zstd level '{l}' is not a number: use 1 to 19"))?;
            if !(1..=19).contains(&n) {
                return Err(format!("zstd level {n} is out of range: use 1 to 19"));
            }
            n
        }
        (_, Some(_)) => return Err(format!("'{s}': only zstd takes a level")),
        (_, None) => 1,
    };
    Ok(Codec::new(c, zstd_level))
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.compression {
            Compression::None => f.write_str("none"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Auto => f.write_str("auto"),
            Compression::Zstd => write!(f, "zstd:{}", self.zstd_level),
        }
    }
}

/// How one block is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Lz4,
    ShuffleLz4 { width: usize, offset: usize },
    Zstd,
    ShuffleZstd { width: usize, offset: usize },
}

impl Encoding {
    fn id(&self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Lz4 => 1,
            Encoding::ShuffleLz4 { width: 4, .. } => 2,
            Encoding::ShuffleLz4 { .. } => 3,
            Encoding::Zstd => 4,
            Encoding::ShuffleZstd { width: 4, .. } => 5,
            Encoding::ShuffleZstd { .. } => 6,
        }
    }

    fn offset(&self) -> usize {
        match self {
            Encoding::ShuffleLz4 { offset, .. } | Encoding::ShuffleZstd { offset, .. } => *offset,
            _ => 0,
        }
    }

    fn from_header(id: u8, offset: u8) -> Option<Encoding> {
        let offset = offset as usize;
        Some(match id {
            0 => Encoding::Raw,
            1 => Encoding::Lz4,
            2 => Encoding::ShuffleLz4 { width: 4, offset },
            3 => Encoding::ShuffleLz4 { width: 8, offset },
            4 => Encoding::Zstd,
            5 => Encoding::ShuffleZstd { width: 4, offset },
            6 => Encoding::ShuffleZstd { width: 8, offset },
            _ => return None,
        })
    }

    pub fn name(&self) -> String {
        match self {
            Encoding::Raw => "raw".into(),
            Encoding::Lz4 => "lz4".into(),
            Encoding::ShuffleLz4 { width, offset } => format!("shuffle{width}@{offset}+lz4"),
            Encoding::Zstd => "zstd".into(),
            Encoding::ShuffleZstd { width, offset } => format!("shuffle{width}@{offset}+zstd"),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("block too short ({0} bytes) to hold a header")]
    Truncated(usize),
    #[error("block has bad magic: not a vecfs block")]
    BadMagic,
    #[error("block uses unknown codec {0}")]
    UnknownCodec(u8),
    #[error("block payload does not decompress: {0}")]
    Corrupt(String),
    #[error("block length mismatch: header says {expected}, got {actual}")]
    Length { expected: usize, actual: usize },
    #[error("block checksum mismatch (CRC32C {expected:08x} expected, {actual:08x} computed)")]
    Checksum { expected: u32, actual: u32 },
}

// ---- byte shuffle --------------------------------------------------------

/// Transposes whole `W`-byte elements: byte j of element i goes to
/// `out[j * n + i]`. Works on groups of W elements at a time as a W x W
/// byte-matrix transpose in registers (shifts and masks on u32/u64 words),
/// so every load and store moves a whole word instead of a byte.
fn shuffle4(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / 4;
    let done = simd4::shuffle(src, dst, n);
    let groups = n / 4;
    for g in done / 4..groups {
        let e = &src[g * 16..g * 16 + 16];
        let w = |k: usize| u32::from_le_bytes([e[4 * k], e[4 * k + 1], e[4 * k + 2], e[4 * k + 3]]);
        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
        for j in 0..4 {
            let sh = 8 * j;
            let col = ((w0 >> sh) & 0xff)
                | (((w1 >> sh) & 0xff) << 8)
                | (((w2 >> sh) & 0xff) << 16)
                | (((w3 >> sh) & 0xff) << 24);
            dst[j * n + g * 4..j * n + g * 4 + 4].copy_from_slice(&col.to_le_bytes());
        }
    }
    for i in groups * 4..n {
        for j in 0..4 {
            dst[j * n + i] = src[i * 4 + j];
        }
    }
}

fn unshuffle4(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / 4;
    let done = simd4::unshuffle(src, dst, n);
    let groups = n / 4;
    for g in done / 4..groups {
        let c = |j: usize| {
            let o = j * n + g * 4;
            u32::from_le_bytes([src[o], src[o + 1], src[o + 2], src[o + 3]])
        };
        let (c0, c1, c2, c3) = (c(0), c(1), c(2), c(3));
        for k in 0..4 {
            let sh = 8 * k;
            let e = ((c0 >> sh) & 0xff)
                | (((c1 >> sh) & 0xff) << 8)
                | (((c2 >> sh) & 0xff) << 16)
                | (((c3 >> sh) & 0xff) << 24);
            dst[g * 16 + 4 * k..g * 16 + 4 * k + 4].copy_from_slice(&e.to_le_bytes());
        }
    }
    for i in groups * 4..n {
        for j in 0..4 {
            dst[i * 4 + j] = src[j * n + i];
        }
    }
}

/// The 4-byte shuffle 16 elements (64 bytes) at a time in SSE2 registers,
/// which every x86-64 has: unshuffling float32 blocks was the slowest step
/// of decoding them (1.7 GB/s in words, against lz4's 4 GB/s), and a
/// reader without warm-up decodes every block of a segment. Both return
/// how many leading elements they did (a multiple of 16); the callers do
/// the rest.
#[cfg(target_arch = "x86_64")]
mod simd4 {
    use std::arch::x86_64::*;

    /// Elements `i..i+16` of plane `j` of `src` (planes of `n` bytes).
    fn plane(src: &[u8], n: usize, j: usize, i: usize) -> __m128i {
        let s = &src[j * n + i..j * n + i + 16];
        // SAFETY: `s` is 16 readable bytes; loadu takes any alignment.
        unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
    }

    fn store(dst: &mut [u8], at: usize, v: __m128i) {
        let d = &mut dst[at..at + 16];
        // SAFETY: `d` is 16 writable bytes; storeu takes any alignment.
        unsafe { _mm_storeu_si128(d.as_mut_ptr().cast(), v) }
    }

    pub fn unshuffle(src: &[u8], dst: &mut [u8], n: usize) -> usize {
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            let (p0, p1, p2, p3) = (
                plane(src, n, 0, i),
                plane(src, n, 1, i),
                plane(src, n, 2, i),
                plane(src, n, 3, i),
            );
            // SAFETY: SSE2 is part of x86-64; these only move register bytes.
            let out = unsafe {
                let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(p0, p1), _mm_unpackhi_epi8(p0, p1));
                let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(p2, p3), _mm_unpackhi_epi8(p2, p3));
                [
                    _mm_unpacklo_epi16(ab_lo, cd_lo),
                    _mm_unpackhi_epi16(ab_lo, cd_lo),
                    _mm_unpacklo_epi16(ab_hi, cd_hi),
                    _mm_unpackhi_epi16(ab_hi, cd_hi),
                ]
            };
            for (k, v) in out.into_iter().enumerate() {
                store(dst, i * 4 + 16 * k, v);
            }
        }
        whole
    }

    pub fn shuffle(src: &[u8], dst: &mut [u8], n: usize) -> usize {
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            let e = &src[i * 4..i * 4 + 64];
            // SAFETY: `e` is 64 readable bytes; SSE2 is part of x86-64, and
            // packing values below 256 never saturates.
            unsafe {
                let x: [__m128i; 4] =
                    std::array::from_fn(|k| _mm_loadu_si128(e[16 * k..].as_ptr().cast()));
                let low = _mm_set1_epi32(0xff);
                for j in 0..4 {
                    let sh = _mm_cvtsi32_si128(8 * j as i32);
                    let b = |v: __m128i| _mm_and_si128(_mm_srl_epi32(v, sh), low);
                    let lo = _mm_packs_epi32(b(x[0]), b(x[1]));
                    let hi = _mm_packs_epi32(b(x[2]), b(x[3]));
                    store(dst, j * n + i, _mm_packus_epi16(lo, hi));
                }
            }
        }
        whole
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd4 {
    pub fn unshuffle(_: &[u8], _: &mut [u8], _: usize) -> usize {
        0
    }
    pub fn shuffle(_: &[u8], _: &mut [u8], _: usize) -> usize {
        0
    }
}

/// 8x8 byte transpose of eight little-endian u64 words.
#[inline(always)]
fn transpose8(w: [u64; 8]) -> [u64; 8] {
    let mut out = [0u64; 8];
    for (j, o) in out.iter_mut().enumerate() {
        let sh = 8 * j;
        let mut v = 0u64;
        for (k, wk) in w.iter().enumerate() {
            v |= ((wk >> sh) & 0xff) << (8 * k);
        }
        *o = v;
    }
    out
}

fn load8(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn shuffle8(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / 8;
    let groups = n / 8;
    for g in 0..groups {
        let e = &src[g * 64..g * 64 + 64];
        let mut w = [0u64; 8];
        for (k, x) in w.iter_mut().enumerate() {
            *x = load8(&e[8 * k..]);
        }
        for (j, col) in transpose8(w).iter().enumerate() {
            dst[j * n + g * 8..j * n + g * 8 + 8].copy_from_slice(&col.to_le_bytes());
        }
    }
    for i in groups * 8..n {
        for j in 0..8 {
            dst[j * n + i] = src[i * 8 + j];
        }
    }
}

fn unshuffle8(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / 8;
    let groups = n / 8;
    for g in 0..groups {
        let mut c = [0u64; 8];
        for (j, x) in c.iter_mut().enumerate() {
            *x = load8(&src[j * n + g * 8..]);
        }
        for (k, e) in transpose8(c).iter().enumerate() {
            dst[g * 64 + 8 * k..g * 64 + 8 * k + 8].copy_from_slice(&e.to_le_bytes());
        }
    }
    for i in groups * 8..n {
        for j in 0..8 {
            dst[i * 8 + j] = src[j * n + i];
        }
    }
}

/// Shuffles `src` into `dst` (same length) as elements of `width` bytes
/// starting at `offset`; the bytes before `offset` and a tail that is not a
/// whole element are copied as they are.
pub fn shuffle_into(src: &[u8], dst: &mut [u8], width: usize, offset: usize) {
    transform(src, dst, width, offset, true)
}

pub fn unshuffle_into(src: &[u8], dst: &mut [u8], width: usize, offset: usize) {
    transform(src, dst, width, offset, false)
}

fn transform(src: &[u8], dst: &mut [u8], width: usize, offset: usize, forward: bool) {
    let len = src.len().min(dst.len());
    let offset = offset.min(len);
    dst[..offset].copy_from_slice(&src[..offset]);
    let whole = (len - offset) / width * width;
    let (s, d) = (
        &src[offset..offset + whole],
        &mut dst[offset..offset + whole],
    );
    match (width, forward) {
        (4, true) => shuffle4(s, d),
        (4, false) => unshuffle4(s, d),
        (8, true) => shuffle8(s, d),
        (8, false) => unshuffle8(s, d),
        _ => d.copy_from_slice(s),
    }
    dst[offset + whole..len].copy_from_slice(&src[offset + whole..len]);
}

pub fn shuffle(raw: &[u8], width: usize, offset: usize) -> Vec<u8> {
    let mut out = vec![0u8; raw.len()];
    shuffle_into(raw, &mut out, width, offset);
    out
}

pub fn unshuffle(data: &[u8], width: usize, offset: usize) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    unshuffle_into(data, &mut out, width, offset);
    out
}

thread_local! {
    /// Per-thread scratch for the intermediate (shuffled) form of a block:
    /// reusing it spares a fresh allocation, and its page faults, per block.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0);
        }
        f(&mut s[..len])
    })
}

// ---- compressors ---------------------------------------------------------

fn lz4(data: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress(data)
}

fn zstd(data: &[u8], level: i32) -> Option<Vec<u8>> {
    zstd::bulk::compress(data, level).ok()
}

/// Compressed size of `sample` under `enc`, for choosing an encoding.
fn trial(sample: &[u8], enc: Encoding, level: i32) -> usize {
    match enc {
        Encoding::Raw => sample.len(),
        Encoding::Lz4 => lz4(sample).len(),
        Encoding::Zstd => zstd(sample, level).map_or(usize::MAX, |v| v.len()),
        Encoding::ShuffleLz4 { width, offset } => lz4(&shuffle(sample, width, offset)).len(),
        Encoding::ShuffleZstd { width, offset } => {
            zstd(&shuffle(sample, width, offset), level).map_or(usize::MAX, |v| v.len())
        }
    }
}

/// Finds where `width`-byte elements start. The byte column whose most
/// common value is most common is taken as the elements' most significant
/// byte (last, little endian); in a run of equally repetitive columns (the
/// zero high bytes of ids) the run's last column is. Counting the most
/// common value, not distinct ones, keeps a few header bytes from misleading
/// it. Returns the offset of the first whole element, in 0..width.
pub fn detect_offset(sample: &[u8], width: usize) -> usize {
    let mut hist = vec![[0u32; 256]; width];
    for (i, b) in sample.iter().enumerate() {
        hist[i % width][*b as usize] += 1;
    }
    let top: Vec<u32> = hist
        .iter()
        .map(|h| h.iter().copied().max().unwrap_or(0))
        .collect();
    let best = top.iter().copied().max().unwrap_or(0);
    let near = |r: usize| top[r % width] as u64 * 100 >= best as u64 * 98;
    let msb = (0..width)
        .find(|&r| near(r) && !near(r + 1))
        .unwrap_or(width - 1);
    (msb + 1) % width
}

/// Samples a block (start and middle) and returns the best-looking encoding,
/// or Raw when nothing saves MIN_SAVING. Offsets are relative to the block;
/// the sample windows start at multiples of 8 so alignment carries over.
pub fn choose(raw: &[u8], codec: Codec) -> Encoding {
    let zstd_family = codec.compression == Compression::Zstd;
    let mut sample = Vec::with_capacity(2 * SAMPLE);
    if raw.len() <= 2 * SAMPLE {
        sample.extend_from_slice(raw);
    } else {
        sample.extend_from_slice(&raw[..SAMPLE]);
        let mid = (raw.len() / 2) & !7;
        sample.extend_from_slice(&raw[mid..mid + SAMPLE]);
    }
    if sample.is_empty() {
        return Encoding::Raw;
    }
    let mut candidates = vec![if zstd_family {
        Encoding::Zstd
    } else {
        Encoding::Lz4
    }];
    for width in [4usize, 8] {
        let offset = detect_offset(&sample, width);
        candidates.push(if zstd_family {
            Encoding::ShuffleZstd { width, offset }
        } else {
            Encoding::ShuffleLz4 { width, offset }
        });
    }
    // Samples are scored with fast lz4 even for zstd volumes: the ranking of
    // layouts is the same and it keeps the choice cheap.
    let score = |e: Encoding| {
        let probe = match e {
            Encoding::Zstd => Encoding::Lz4,
            Encoding::ShuffleZstd { width, offset } => Encoding::ShuffleLz4 { width, offset },
            other => other,
        };
        trial(&sample, probe, codec.zstd_level)
    };
    let mut best = (Encoding::Raw, sample.len());
    for c in candidates {
        let s = score(c);
        if s < best.1 {
            best = (c, s);
        }
    }
    // zstd still finds savings where lz4 finds none (float32 without shuffle
    // is an example), so a zstd volume checks its own plain form too.
    if best.0 == Encoding::Raw && zstd_family {
        let z = trial(
            &sample,
            Encoding::ShuffleZstd {
                width: 4,
                offset: 0,
            },
            codec.zstd_level,
        );
        if (z as f64) < sample.len() as f64 * (1.0 - MIN_SAVING) {
            best = (
                Encoding::ShuffleZstd {
                    width: 4,
                    offset: 0,
                },
                z,
            );
        }
    }
    if (best.1 as f64) > sample.len() as f64 * (1.0 - MIN_SAVING) && !zstd_family {
        return Encoding::Raw;
    }
    best.0
}

fn compress_with(raw: &[u8], enc: Encoding, level: i32) -> Option<Vec<u8>> {
    match enc {
        Encoding::Raw => None,
        Encoding::Lz4 => Some(lz4(raw)),
        Encoding::Zstd => zstd(raw, level),
        Encoding::ShuffleLz4 { width, offset } => Some(with_scratch(raw.len(), |tmp| {
            shuffle_into(raw, tmp, width, offset);
            lz4(tmp)
        })),
        Encoding::ShuffleZstd { width, offset } => with_scratch(raw.len(), |tmp| {
            shuffle_into(raw, tmp, width, offset);
            zstd(tmp, level)
        }),
    }
}

/// Encodes `raw` into a stored block with exactly `enc` (tests, benchmarks);
/// frames that do not shrink are still stored raw.
pub fn encode_as(raw: &[u8], enc: Encoding, level: i32) -> Vec<u8> {
    encode_framed(raw, enc, level)
}

/// A raw framed block (checksummed per 64 KiB, not compressed): what the
/// disk cache keeps, so a warm read from disk costs a copy and a CRC, never
/// a decompression, and a random read from disk reads only its frames.
pub fn encode_raw(raw: &[u8]) -> Vec<u8> {
    let mut out = raw_head(raw);
    out.extend_from_slice(raw);
    out
}

/// The header and table of a raw framed block: followed by `raw` itself,
/// they make the block, so a raw block is stored without copying it.
pub fn raw_head(raw: &[u8]) -> Vec<u8> {
    let n = raw.len().div_ceil(MIN_FRAME);
    let mut out = vec![0u8; table_end(n)];
    for (i, frame) in raw.chunks(MIN_FRAME).enumerate() {
        let at = FRAMED_HEADER_LEN + 8 * i;
        out[at..at + 4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&crc32c::crc32c(frame).to_le_bytes());
    }
    seal_head(&mut out, Encoding::Raw, raw.len(), MIN_FRAME, n);
    out
}

/// A stored block as pieces to send in order: the raw bytes are shared, not
/// copied, when the block is stored raw.
pub fn encode_parts(raw: &bytes::Bytes, codec: Codec) -> Vec<bytes::Bytes> {
    match compress_block(raw, codec) {
        Some(block) => vec![bytes::Bytes::from(block)],
        None => vec![bytes::Bytes::from(raw_head(raw)), raw.clone()],
    }
}

/// Encodes `raw` into a stored block, picking the encoding per the volume's
/// setting; a block whose compressed form does not save MIN_SAVING (lz4:
/// 1/32) is stored raw, so reading it never pays for decompression.
pub fn encode(raw: &[u8], codec: Codec) -> Vec<u8> {
    compress_block(raw, codec).unwrap_or_else(|| encode_raw(raw))
}

/// The compressed block, or None when the block is best stored raw.
fn compress_block(raw: &[u8], codec: Codec) -> Option<Vec<u8>> {
    let enc = match codec.compression {
        Compression::None => Encoding::Raw,
        _ if raw.is_empty() => Encoding::Raw,
        Compression::Lz4 => Encoding::Lz4,
        Compression::Auto | Compression::Zstd => choose(raw, codec),
    };
    if enc == Encoding::Raw {
        return None;
    }
    let out = encode_framed(raw, enc, codec.zstd_level);
    let stored = out.len() - table_end(raw.len().div_ceil(frame_size(enc)));
    let keep = if codec.compression == Compression::Lz4 {
        stored + raw.len() / 32 < raw.len()
    } else {
        (stored as f64) <= raw.len() as f64 * (1.0 - MIN_SAVING)
    };
    keep.then_some(out)
}

// ---- framed blocks ---------------------------------------------------------
//
// Current layout (little endian): magic "VF" (2), codec id (1), shuffle
// offset (1), raw length (4), frame size (4), CRC32C of the header's first 12
// bytes and the table (4); then a table with, per frame, its stored length
// (4) and the CRC32C of its raw bytes (4); then the frames. Each frame holds
// `frame size` raw bytes (the last one fewer), compressed on its own with the
// block's encoding, or stored as is when that does not shrink it (stored
// length == raw length). A reader that wants a few KiB of a compressed block
// fetches the header and table (one small ranged GET, then cached) and then
// only the frames it needs, each checked by its own CRC: compression and
// range reads together, which JuiceFS gives up.

const FRAMED_MAGIC: &[u8; 2] = b"VF";
const FRAMED_HEADER_LEN: usize = 16;
/// The smallest frame any writer uses: bounds the table a reader must fetch.
pub const MIN_FRAME: usize = 64 << 10;

/// Raw frames only set the granularity of checksums. Compressed frames are
/// larger: plain lz4 looks back 64 KiB at most and loses little at 256 KiB,
/// but a shuffled frame holds one plane per element byte, and the planes of
/// float32 data need about 1 MiB frames to compress within 0.5 % of a whole
/// 4 MiB block (93.4 % vs 92.9 % of raw; 256 KiB frames give 94.8 %).
fn frame_size(enc: Encoding) -> usize {
    match enc {
        Encoding::Raw => MIN_FRAME,
        Encoding::Lz4 | Encoding::Zstd => 4 * MIN_FRAME,
        Encoding::ShuffleLz4 { .. } | Encoding::ShuffleZstd { .. } => 16 * MIN_FRAME,
    }
}

fn table_end(frames: usize) -> usize {
    FRAMED_HEADER_LEN + 8 * frames
}

fn encode_framed(raw: &[u8], enc: Encoding, level: i32) -> Vec<u8> {
    let fs = frame_size(enc);
    let n = raw.len().div_ceil(fs);
    let mut out = vec![0u8; table_end(n)];
    out.reserve(raw.len());
    for (i, frame) in raw.chunks(fs).enumerate() {
        let crc = crc32c::crc32c(frame);
        let stored = match compress_with(frame, enc, level) {
            Some(c) if c.len() < frame.len() => {
                out.extend_from_slice(&c);
                c.len()
            }
            _ => {
                out.extend_from_slice(frame);
                frame.len()
            }
        };
        let at = FRAMED_HEADER_LEN + 8 * i;
        out[at..at + 4].copy_from_slice(&(stored as u32).to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }
    seal_head(&mut out, enc, raw.len(), fs, n);
    out
}

/// Writes the header fields and the CRC over them and the (filled) table.
fn seal_head(out: &mut [u8], enc: Encoding, raw_len: usize, frame_size: usize, frames: usize) {
    out[0..2].copy_from_slice(FRAMED_MAGIC);
    out[2] = enc.id();
    out[3] = enc.offset() as u8;
    out[4..8].copy_from_slice(&(raw_len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&(frame_size as u32).to_le_bytes());
    let crc = table_crc(&out[..table_end(frames)]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn table_crc(head: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&head[..12]), &head[FRAMED_HEADER_LEN..])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Where each frame of a framed block lies: what a ranged reader needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub encoding: Encoding,
    pub raw_len: usize,
    pub frame_size: usize,
    /// Per frame: offset of its stored bytes in the object, stored length,
    /// CRC32C of its raw bytes.
    frames: Vec<(usize, usize, u32)>,
}

impl Layout {
    /// Bytes to fetch from the start of a block of `raw_len` bytes so the
    /// whole table is in them, whatever the frame size.
    pub fn prefix_len(raw_len: usize) -> usize {
        table_end(raw_len.div_ceil(MIN_FRAME))
    }

    /// Parses the header and table at the start of a stored block. `None`
    /// for a block of the first format (one piece: whole reads only).
    pub fn parse(prefix: &[u8]) -> Result<Option<Layout>, CodecError> {
        if prefix.len() >= 2 && &prefix[0..2] == MAGIC {
            return Ok(None);
        }
        if prefix.len() < FRAMED_HEADER_LEN {
            return Err(CodecError::Truncated(prefix.len()));
        }
        if &prefix[0..2] != FRAMED_MAGIC {
            return Err(CodecError::BadMagic);
        }
        let encoding = Encoding::from_header(prefix[2], prefix[3])
            .ok_or(CodecError::UnknownCodec(prefix[2]))?;
        let raw_len = le32(prefix, 4) as usize;
        let frame_size = le32(prefix, 8) as usize;
        if frame_size == 0 {
            return Err(CodecError::Corrupt("frame size 0".into()));
        }
        let n = raw_len.div_ceil(frame_size);
        let end = table_end(n);
        if prefix.len() < end {
            return Err(CodecError::Truncated(prefix.len()));
        }
        let expected = le32(prefix, 12);
        let actual = table_crc(&prefix[..end]);
        if actual != expected {
            return Err(CodecError::Checksum { expected, actual });
        }
        let mut at = end;
        let frames = (0..n)
            .map(|i| {
                let t = FRAMED_HEADER_LEN + 8 * i;
                let len = le32(prefix, t) as usize;
                let f = (at, len, le32(prefix, t + 4));
                at += len;
                f
            })
            .collect();
        Ok(Some(Layout {
            encoding,
            raw_len,
            frame_size,
            frames,
        }))
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// The frames holding raw bytes [off, off + len).
    pub fn frames_for(&self, off: usize, len: usize) -> std::ops::Range<usize> {
        let end = (off + len).min(self.raw_len);
        if len == 0 || off >= end {
            return 0..0;
        }
        off / self.frame_size..end.div_ceil(self.frame_size)
    }

    /// Object byte range holding `frames` (non-empty).
    pub fn stored_range(&self, frames: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        let first = self.frames[frames.start];
        let last = self.frames[frames.end - 1];
        first.0..last.0 + last.1
    }

    fn raw_frame_len(&self, i: usize) -> usize {
        self.frame_size.min(self.raw_len - i * self.frame_size)
    }

    /// Decodes `frames` from their stored bytes (as `stored_range` names
    /// them) into raw bytes, checking each frame's CRC.
    pub fn decode_frames(
        &self,
        frames: std::ops::Range<usize>,
        stored: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let mut raw = vec![0u8; self.frames_raw_len(&frames)];
        self.decode_frames_into(frames, stored, &mut raw)?;
        Ok(raw)
    }

    /// Raw bytes `frames` hold.
    pub fn frames_raw_len(&self, frames: &std::ops::Range<usize>) -> usize {
        if frames.is_empty() {
            return 0;
        }
        (frames.end * self.frame_size).min(self.raw_len) - frames.start * self.frame_size
    }

    /// As `decode_frames`, into `out` (exactly `frames_raw_len` bytes,
    /// every one of them overwritten).
    pub fn decode_frames_into(
        &self,
        frames: std::ops::Range<usize>,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        if out.len() != self.frames_raw_len(&frames) {
            return Err(CodecError::Length {
                expected: self.frames_raw_len(&frames),
                actual: out.len(),
            });
        }
        if frames.is_empty() {
            return Ok(());
        }
        let range = self.stored_range(&frames);
        if stored.len() != range.len() {
            return Err(CodecError::Length {
                expected: range.len(),
                actual: stored.len(),
            });
        }
        let first_raw = frames.start * self.frame_size;
        for i in frames {
            let (at, len, crc) = self.frames[i];
            let src = &stored[at - range.start..at - range.start + len];
            let o = i * self.frame_size - first_raw;
            let dst = &mut out[o..o + self.raw_frame_len(i)];
            decode_frame(self.encoding, src, dst)?;
            let actual = crc32c::crc32c(dst);
            if actual != crc {
                return Err(CodecError::Checksum {
                    expected: crc,
                    actual,
                });
            }
        }
        Ok(())
    }
}

fn unlz4(p: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    lz4_flex::block::decompress_into(p, out).map_err(|e| CodecError::Corrupt(e.to_string()))
}

fn unzstd(p: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    zstd::bulk::decompress_to_buffer(p, out).map_err(|e| CodecError::Corrupt(e.to_string()))
}

/// Decodes one stored payload with `enc` into `out`, which has the raw length.
fn decompress(enc: Encoding, src: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    match enc {
        Encoding::Raw => {
            let n = src.len().min(out.len());
            out[..n].copy_from_slice(&src[..n]);
            Ok(src.len())
        }
        Encoding::Lz4 => unlz4(src, out),
        Encoding::Zstd => unzstd(src, out),
        Encoding::ShuffleLz4 { width, offset } | Encoding::ShuffleZstd { width, offset } => {
            with_scratch(out.len(), |tmp| -> Result<usize, CodecError> {
                let n = if matches!(enc, Encoding::ShuffleLz4 { .. }) {
                    unlz4(src, tmp)?
                } else {
                    unzstd(src, tmp)?
                };
                let n = n.min(out.len());
                unshuffle_into(&tmp[..n], &mut out[..n], width, offset);
                Ok(n)
            })
        }
    }
}

fn decode_frame(enc: Encoding, src: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let n = if src.len() == out.len() {
        // stored as is: compression did not shrink this frame
        out.copy_from_slice(src);
        out.len()
    } else {
        decompress(enc, src, out)?
    };
    if n != out.len() {
        return Err(CodecError::Length {
            expected: out.len(),
            actual: n,
        });
    }
    Ok(())
}

/// The encoding a stored block uses, from its header.
pub fn encoding_of(block: &[u8]) -> Option<Encoding> {
    if block.len() < 4 || (&block[0..2] != MAGIC && &block[0..2] != FRAMED_MAGIC) {
        return None;
    }
    Encoding::from_header(block[2], block[3])
}

/// As `decode`, but a raw framed block is checked in place and its bytes
/// handed back without a copy (warm reads from the disk cache, raw blocks).
pub fn decode_shared(block: bytes::Bytes) -> Result<bytes::Bytes, CodecError> {
    if let Some(raw) = raw_in_place(&block) {
        return raw;
    }
    decode(&block).map(bytes::Bytes::from)
}

/// A raw framed block whose frames all have the smallest frame size (what
/// `encode_raw` writes, and the disk cache keeps): true when the stored
/// block is byte for byte its own disk-cache form.
pub fn is_plain_raw(block: &[u8]) -> bool {
    block.len() >= FRAMED_HEADER_LEN
        && &block[0..2] == FRAMED_MAGIC
        && block[2] == Encoding::Raw.id()
        && le32(block, 8) as usize == MIN_FRAME
}

/// The raw bytes of a raw framed block, checked in place and shared with
/// `block` (no copy); None when the block is compressed or of the first
/// format (it must be decoded).
pub fn raw_in_place(block: &bytes::Bytes) -> Option<Result<bytes::Bytes, CodecError>> {
    if block.len() < FRAMED_HEADER_LEN || &block[0..2] != FRAMED_MAGIC {
        return None;
    }
    let layout = match Layout::parse(block) {
        Ok(Some(l)) => l,
        Ok(None) => return Some(Err(CodecError::BadMagic)),
        Err(e) => return Some(Err(e)),
    };
    let all_raw = layout.encoding == Encoding::Raw
        && (0..layout.frame_count()).all(|i| layout.frames[i].1 == layout.raw_frame_len(i));
    if !all_raw {
        return None;
    }
    let start = table_end(layout.frame_count());
    if block.len() != start + layout.raw_len {
        return Some(Err(CodecError::Length {
            expected: start + layout.raw_len,
            actual: block.len(),
        }));
    }
    for &(at, len, crc) in &layout.frames {
        let actual = crc32c::crc32c(&block[at..at + len]);
        if actual != crc {
            return Some(Err(CodecError::Checksum {
                expected: crc,
                actual,
            }));
        }
    }
    Some(Ok(block.slice(start..)))
}

/// The raw length a stored block (either format) decodes to, from its
/// header (checked: the framed header carries its own CRC).
pub fn decoded_len(block: &[u8]) -> Result<usize, CodecError> {
    if block.len() >= 2 && &block[0..2] == FRAMED_MAGIC {
        // Parsed (header and table CRC checked) before anyone allocates
        // what a damaged header claims.
        let layout = Layout::parse(block)?.ok_or(CodecError::BadMagic)?;
        return Ok(layout.raw_len);
    }
    if block.len() < HEADER_LEN {
        return Err(CodecError::Truncated(block.len()));
    }
    if &block[0..2] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    Ok(le32(block, 4) as usize)
}

/// Decodes a stored block (either format) and verifies its checksums.
pub fn decode(block: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut raw = vec![0u8; decoded_len(block)?];
    decode_into(block, &mut raw)?;
    Ok(raw)
}

/// As `decode`, into `out`, which must be exactly `decoded_len` bytes long;
/// every byte of it is overwritten (a reused buffer may be handed in).
pub fn decode_into(block: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    if block.len() >= 2 && &block[0..2] == FRAMED_MAGIC {
        let layout = Layout::parse(block)?.ok_or(CodecError::BadMagic)?;
        if out.len() != layout.raw_len {
            return Err(CodecError::Length {
                expected: layout.raw_len,
                actual: out.len(),
            });
        }
        let all = 0..layout.frame_count();
        if all.is_empty() {
            return Ok(());
        }
        let range = layout.stored_range(&all);
        if block.len() != range.end {
            return Err(CodecError::Length {
                expected: range.end,
                actual: block.len(),
            });
        }
        return layout.decode_frames_into(all, &block[range], out);
    }
    decode_whole(block, out)
}

/// Decodes a block of the first format: one payload, one CRC.
fn decode_whole(block: &[u8], raw: &mut [u8]) -> Result<(), CodecError> {
    if block.len() < HEADER_LEN {
        return Err(CodecError::Truncated(block.len()));
    }
    if &block[0..2] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let raw_len = le32(block, 4) as usize;
    let expected = le32(block, 8);
    let enc =
        Encoding::from_header(block[2], block[3]).ok_or(CodecError::UnknownCodec(block[2]))?;
    if raw.len() != raw_len {
        return Err(CodecError::Length {
            expected: raw_len,
            actual: raw.len(),
        });
    }
    let n = decompress(enc, &block[HEADER_LEN..], raw)?;
    if n != raw_len {
        return Err(CodecError::Length {
            expected: raw_len,
            actual: n,
        });
    }
    let actual = crc32c::crc32c(raw);
    if actual != expected {
        return Err(CodecError::Checksum { expected, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn normal(&mut self) -> f32 {
            let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        }
    }

    fn floats(n: usize, header: usize) -> Vec<u8> {
        let mut r = Rng(7);
        let mut v = vec![0xAB; header];
        for _ in 0..n {
            v.extend_from_slice(&(r.normal() * 0.1).to_le_bytes());
        }
        v
    }

    fn ids(n: usize, header: usize) -> Vec<u8> {
        let mut v = vec![0x11; header];
        for i in 0..n as i64 {
            v.extend_from_slice(&(449_000_000_000 + i).to_le_bytes());
        }
        v
    }

    fn patterns() -> Vec<Vec<u8>> {
        let mut r = Rng(12345);
        let mut v = vec![
            vec![],
            vec![7],
            vec![1, 2, 3],
            vec![0; 4096],
            (0..=255u8).collect(),
        ];
        for len in [5usize, 7, 9, 15, 17, 31, 33, 100_003] {
            v.push((0..len).map(|_| r.next() as u8).collect());
        }
        v.push(b"abcabcabc".repeat(5000));
        v.push(floats(10_001, 3));
        v.push(ids(9_999, 5));
        v
    }

    fn all_encodings() -> Vec<Encoding> {
        let mut e = vec![Encoding::Raw, Encoding::Lz4, Encoding::Zstd];
        for width in [4, 8] {
            for offset in 0..width {
                e.push(Encoding::ShuffleLz4 { width, offset });
                e.push(Encoding::ShuffleZstd { width, offset });
            }
        }
        e
    }

    #[test]
    fn every_encoding_round_trips_every_pattern() {
        for p in patterns() {
            for e in all_encodings() {
                let enc = encode_as(&p, e, 3);
                assert_eq!(decode(&enc).unwrap(), p, "{} len {}", e.name(), p.len());
            }
            for c in ["none", "lz4", "auto", "zstd", "zstd:9"] {
                let codec = parse_compression(c).unwrap();
                assert_eq!(
                    decode(&encode(&p, codec)).unwrap(),
                    p,
                    "{c} len {}",
                    p.len()
                );
            }
        }
    }

    #[test]
    fn shuffle_is_a_permutation_for_every_length_and_offset() {
        let mut r = Rng(99);
        for len in 0..80 {
            let data: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
            for width in [4, 8] {
                for offset in 0..=width {
                    let s = shuffle(&data, width, offset);
                    assert_eq!(unshuffle(&s, width, offset), data);
                    let (mut a, mut b) = (s.clone(), data.clone());
                    a.sort();
                    b.sort();
                    assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn shuffles_match_a_byte_by_byte_transpose_at_every_length() {
        let mut r = Rng(5);
        for width in [4usize, 8] {
            for n in [0usize, 1, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4099] {
                let src: Vec<u8> = (0..n * width).map(|_| r.next() as u8).collect();
                let mut want = vec![0u8; src.len()];
                for i in 0..n {
                    for j in 0..width {
                        want[j * n + i] = src[i * width + j];
                    }
                }
                let mut got = vec![0u8; src.len()];
                let mut back = vec![0u8; src.len()];
                match width {
                    4 => {
                        shuffle4(&src, &mut got);
                        unshuffle4(&got, &mut back);
                    }
                    _ => {
                        shuffle8(&src, &mut got);
                        unshuffle8(&got, &mut back);
                    }
                }
                assert_eq!(got, want, "shuffle of {n} elements of {width}");
                assert_eq!(back, src, "unshuffle of {n} elements of {width}");
            }
        }
    }

    #[test]
    fn auto_pays_only_where_it_saves() {
        let auto = parse_compression("auto").unwrap();
        let v = floats(1 << 20, 8); // Milvus .rv files start with an 8-byte header
        let enc = encode(&v[..4 << 20], auto);
        assert!(
            (enc.len() as f64) <= 0.935 * (4 << 20) as f64,
            "float32 block stored in {} of {} bytes",
            enc.len(),
            4 << 20
        );
        assert!(matches!(
            encoding_of(&enc),
            Some(Encoding::ShuffleLz4 { .. })
        ));
        let id = ids(1 << 19, 4); // header shifts elements by 4 mod 8
        let enc = encode(&id[..4 << 20], auto);
        assert!(
            enc.len() * 50 < 4 << 20,
            "ids stored in {} bytes",
            enc.len()
        );
        assert!(matches!(
            encoding_of(&enc),
            Some(Encoding::ShuffleLz4 { width: 8, .. })
        ));
        // Random 40-bit values: only the right alignment lines up the zero
        // high bytes, so the detector must find offset 4 (header of 4 bytes).
        let mut r = Rng(11);
        let mut wide = vec![0x22u8; 4];
        for _ in 0..(1 << 19) {
            wide.extend_from_slice(&(r.next() >> 24).to_le_bytes());
        }
        let enc = encode(&wide[..4 << 20], auto);
        assert_eq!(
            encoding_of(&enc),
            Some(Encoding::ShuffleLz4 {
                width: 8,
                offset: 4
            }),
            "element alignment found within the block"
        );
        assert_eq!(detect_offset(&floats(4096, 8), 4), 0);
        assert_eq!(detect_offset(&floats(4096, 3), 4), 3);
        assert_eq!(detect_offset(&ids(4096, 4), 8), 4);
        let mut r = Rng(3);
        let noise: Vec<u8> = (0..1 << 20).map(|_| r.next() as u8).collect();
        assert_eq!(encoding_of(&encode(&noise, auto)), Some(Encoding::Raw));
    }

    #[test]
    fn corruption_is_detected() {
        for e in all_encodings() {
            let mut enc = encode_as(&floats(5000, 0), e, 1);
            let last = enc.len() - 1;
            enc[last] ^= 0x40;
            assert!(decode(&enc).is_err(), "{}", e.name());
            let mut enc = encode_as(&floats(5000, 0), e, 1);
            enc[HEADER_LEN + 3] ^= 1;
            assert!(decode(&enc).is_err(), "{}", e.name());
        }
        assert_eq!(decode(b"VB"), Err(CodecError::Truncated(2)));
        assert_eq!(decode(&[0u8; 20]), Err(CodecError::BadMagic));
        let mut unknown = encode_as(b"x", Encoding::Raw, 1);
        unknown[2] = 200;
        assert_eq!(decode(&unknown), Err(CodecError::UnknownCodec(200)));
    }

    #[test]
    fn blocks_from_the_first_format_still_read() {
        // Written by the original encoder (ids 0 and 1 only): an lz4 block of
        // "vecfs " x 40 and a raw block of b"abc".
        let text = b"vecfs ".repeat(40);
        let lz4_block: Vec<u8> = {
            let mut b = vec![b'V', b'B', 1, 0];
            b.extend_from_slice(&(text.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32c::crc32c(&text).to_le_bytes());
            b.extend_from_slice(&lz4_flex::block::compress(&text));
            b
        };
        assert_eq!(decode(&lz4_block).unwrap(), text);
        let raw_block = [
            b'V', b'B', 0, 0, 3, 0, 0, 0, 0xb7, 0x3f, 0x4b, 0x36, b'a', b'b', b'c',
        ];
        assert_eq!(decode(&raw_block).unwrap(), b"abc");
    }

    #[test]
    fn any_frame_range_decodes_alone_and_is_checked() {
        let mut data = floats(300_000, 8); // 1.2 MB: 19 lz4 frames, 5 zstd frames
        data.extend(ids(20_000, 3));
        for e in all_encodings() {
            let block = encode_as(&data, e, 1);
            let prefix = &block[..Layout::prefix_len(data.len()).min(block.len())];
            let layout = Layout::parse(prefix).unwrap().unwrap();
            assert_eq!(layout.raw_len, data.len());
            for (off, len) in [
                (0, 1),
                (4096, 4096),
                (65_530, 20),
                (700_000, 300_000),
                (data.len() - 1, 1),
            ] {
                let frames = layout.frames_for(off, len);
                let stored = &block[layout.stored_range(&frames)];
                let raw = layout.decode_frames(frames.clone(), stored).unwrap();
                let at = off - frames.start * layout.frame_size;
                assert_eq!(
                    &raw[at..at + len],
                    &data[off..off + len],
                    "{} at {off}",
                    e.name()
                );
            }
            // a flipped byte in one frame fails that frame, not its neighbours
            let mut bad = block.clone();
            let f = layout.frames_for(data.len() - 1, 1);
            bad[layout.stored_range(&f).start + 1] ^= 0x10;
            assert!(
                layout
                    .decode_frames(f.clone(), &bad[layout.stored_range(&f)])
                    .is_err(),
                "{}",
                e.name()
            );
            let g = layout.frames_for(0, 1);
            assert!(layout
                .decode_frames(g.clone(), &bad[layout.stored_range(&g)])
                .is_ok());
            assert!(decode(&bad).is_err());
        }
        // first-format blocks have no table: whole reads only
        let first_format = [
            b'V', b'B', 0, 0, 3, 0, 0, 0, 0xb7, 0x3f, 0x4b, 0x36, b'a', b'b', b'c',
        ];
        assert_eq!(Layout::parse(&first_format).unwrap(), None);
        assert_eq!(decode(&encode_raw(&data)).unwrap(), data);
        let mut t = encode_as(&data, Encoding::Lz4, 1);
        t[FRAMED_HEADER_LEN + 2] ^= 1;
        assert!(matches!(
            Layout::parse(&t),
            Err(CodecError::Checksum { .. })
        ));
    }

    #[test]
    fn compression_settings_parse() {
        assert_eq!(parse_compression("zstd:7").unwrap().zstd_level, 7);
        assert!(parse_compression("zstd:0").is_err());
        assert!(parse_compression("lz4:3").is_err());
        assert!(parse_compression("brotli").is_err());
        assert_eq!(
            parse_compression("AUTO").unwrap().compression,
            Compression::Auto
        );
    }
}
