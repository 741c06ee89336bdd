//! Block codec: the self-describing envelope every stored block carries.
//!
//! Layout (little endian): magic "VB" (2), codec id (1), reserved (1),
//! raw length (4), CRC32C of the raw bytes (4), then the payload. The codec
//! is recorded per block, so a reader never guesses and a volume may mix
//! codecs (a block that does not shrink is stored raw even when lz4 is on).

use thiserror::Error;

pub const HEADER_LEN: usize = 12;
const MAGIC: &[u8; 2] = b"VB";

/// Compression chosen at format time; each block may still fall back to raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            other => Err(format!(
                "unknown compression '{other}': use one of lz4, none"
            )),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
        })
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CodecId {
    Raw = 0,
    Lz4 = 1,
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

/// Encodes `raw` into a stored block. Compression is kept only when it saves
/// at least 1/32 of the bytes: otherwise decoding would cost CPU for nothing.
pub fn encode(raw: &[u8], compression: Compression) -> Vec<u8> {
    let crc = crc32c::crc32c(raw);
    if compression == Compression::Lz4 && !raw.is_empty() {
        let bound = lz4_flex::block::get_maximum_output_size(raw.len());
        let mut out = vec![0u8; HEADER_LEN + bound];
        if let Ok(n) = lz4_flex::block::compress_into(raw, &mut out[HEADER_LEN..]) {
            if n + raw.len() / 32 < raw.len() {
                out.truncate(HEADER_LEN + n);
                write_header(&mut out, CodecId::Lz4, raw.len(), crc);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + raw.len());
    out.resize(HEADER_LEN, 0);
    write_header(&mut out, CodecId::Raw, raw.len(), crc);
    out.extend_from_slice(raw);
    out
}

fn write_header(out: &mut [u8], codec: CodecId, raw_len: usize, crc: u32) {
    out[0..2].copy_from_slice(MAGIC);
    out[2] = codec as u8;
    out[3] = 0;
    out[4..8].copy_from_slice(&(raw_len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a stored block and verifies its checksum.
pub fn decode(block: &[u8]) -> Result<Vec<u8>, CodecError> {
    if block.len() < HEADER_LEN {
        return Err(CodecError::Truncated(block.len()));
    }
    if &block[0..2] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let raw_len = u32::from_le_bytes([block[4], block[5], block[6], block[7]]) as usize;
    let expected = u32::from_le_bytes([block[8], block[9], block[10], block[11]]);
    let payload = &block[HEADER_LEN..];
    let raw = match block[2] {
        x if x == CodecId::Raw as u8 => payload.to_vec(),
        x if x == CodecId::Lz4 as u8 => {
            let mut out = vec![0u8; raw_len];
            let n = lz4_flex::block::decompress_into(payload, &mut out)
                .map_err(|e| CodecError::Corrupt(e.to_string()))?;
            out.truncate(n);
            out
        }
        other => return Err(CodecError::UnknownCodec(other)),
    };
    if raw.len() != raw_len {
        return Err(CodecError::Length {
            expected: raw_len,
            actual: raw.len(),
        });
    }
    let actual = crc32c::crc32c(&raw);
    if actual != expected {
        return Err(CodecError::Checksum { expected, actual });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns() -> Vec<Vec<u8>> {
        let mut v = vec![vec![], vec![7], vec![0; 4096], (0..=255u8).collect()];
        let mut x: u32 = 12345;
        v.push(
            (0..100_003)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect(),
        );
        v.push(b"abcabcabc".repeat(5000));
        v
    }

    #[test]
    fn round_trips_every_pattern_with_every_codec() {
        for c in [Compression::None, Compression::Lz4] {
            for p in patterns() {
                let enc = encode(&p, c);
                assert_eq!(decode(&enc).unwrap(), p, "codec {c} len {}", p.len());
            }
        }
    }

    #[test]
    fn compressible_data_shrinks_and_random_data_is_stored_raw() {
        let text = b"abcabcabc".repeat(5000);
        assert!(encode(&text, Compression::Lz4).len() < text.len() / 10);
        let random = patterns().remove(4);
        let enc = encode(&random, Compression::Lz4);
        assert_eq!(enc[2], CodecId::Raw as u8);
    }

    #[test]
    fn corruption_is_detected() {
        for c in [Compression::None, Compression::Lz4] {
            let mut enc = encode(&b"hello world ".repeat(100), c);
            let last = enc.len() - 1;
            enc[last] ^= 0x40;
            assert!(decode(&enc).is_err(), "codec {c}");
        }
        assert_eq!(decode(b"VB"), Err(CodecError::Truncated(2)));
        assert_eq!(decode(&[0u8; 20]), Err(CodecError::BadMagic));
    }
}
