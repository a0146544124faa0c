//! The Confluent Schema Registry wire format: byte 0 is the magic 0, bytes 1..5 a big-endian schema id,
//! the rest the Avro datum.
//!
//! Guarantee: [`split`] never panics and never copies; every malformed frame is a [`CodecError`].

use super::CodecError;

/// The magic byte of the Confluent framing.
pub const MAGIC: u8 = 0;
/// Bytes before the datum.
pub const HEADER_LEN: usize = 5;

/// Splits a framed payload into its schema id and the borrowed datum.
#[inline]
pub fn split(payload: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    let header = payload.get(..HEADER_LEN).ok_or(CodecError::Truncated)?;
    let magic = header.first().copied().ok_or(CodecError::Truncated)?;
    if magic != MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    let id_bytes: [u8; 4] = header
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::Truncated)?;
    let datum = payload.get(HEADER_LEN..).ok_or(CodecError::Truncated)?;
    Ok((u32::from_be_bytes(id_bytes), datum))
}

/// Prepends the header to a datum (producer side).
pub fn frame_into(schema_id: u32, datum: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        frame_into(0x01020304, b"abc", &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4, b'a', b'b', b'c']);
        assert_eq!(split(&out).expect("valid frame"), (0x01020304, &b"abc"[..]));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(split(&[]), Err(CodecError::Truncated));
        assert_eq!(split(&[0, 0, 0]), Err(CodecError::Truncated));
        assert_eq!(split(&[1, 0, 0, 0, 1]), Err(CodecError::BadMagic(1)));
        assert_eq!(
            split(&[0, 0, 0, 0, 7]).expect("empty datum is a frame"),
            (7, &[][..])
        );
    }
}
