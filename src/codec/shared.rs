//! Strings and bytes that point into one shared copy of a Kafka payload, so that decoding a record
//! allocates nothing per field: a [`Blob`] (or a [`Text`], a blob known to be UTF-8) is a reference
//! count on a buffer and a range of it.
//!
//! Why: a navigation record has ten strings. Owning each one cost an allocation when it was decoded
//! and a free when it was written, about a third of the decoder's time (`cargo bench --bench
//! avro_decode`, perf). The shard already keeps one copy of each payload for the record's life (the
//! dead-letter topic needs the original bytes), so the decoded values point into that copy, and the
//! insert sink writes them to the request buffer from there (`sink::Cell`).
//!
//! Three owners: the payload of the record (`Rc`: values stay on their shard's thread, so the count
//! needs no atomics); a buffer of the value's own (lookup results, config literals, tests); and an
//! enum symbol of a compiled plan (`Arc`: plans are compiled on the schema-fetch thread).
//!
//! Guarantee: a [`Text`] is UTF-8: it is built from a `str`, or by the decoder after it validated the
//! range. [`Blob::as_bytes`] never panics. Precondition: a payload is under 4 GiB (ranges are `u32`;
//! Kafka's own limit is 2 GiB); [`Blob::in_payload`] refuses a range beyond it.

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Clone)]
enum Buf {
    /// A range of a record's payload.
    Payload { buf: Rc<[u8]>, start: u32, len: u32 },
    /// A whole buffer of its own.
    Owned(Rc<[u8]>),
    /// An enum symbol of a compiled plan.
    Symbol(Arc<str>),
}

/// Bytes: a range of a shared buffer. Cloning copies no bytes.
#[derive(Clone)]
pub struct Blob(Buf);

impl Blob {
    /// `payload[start..start + len]`, or `None` if the range is not inside the payload or does not
    /// fit the `u32` ranges.
    #[inline]
    pub fn in_payload(payload: &Rc<[u8]>, start: usize, len: usize) -> Option<Blob> {
        let end = start.checked_add(len)?;
        if end > payload.len() {
            return None;
        }
        let (start, len) = (u32::try_from(start).ok()?, u32::try_from(len).ok()?);
        Some(Blob(Buf::Payload {
            buf: payload.clone(),
            start,
            len,
        }))
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Buf::Payload { buf, start, len } => {
                let start = *start as usize;
                buf.get(start..start + *len as usize).unwrap_or_default()
            }
            Buf::Owned(b) => b,
            Buf::Symbol(s) => s.as_bytes(),
        }
    }

    /// The length without forming the slice: a batch sizes every text cell of every row.
    pub fn len(&self) -> usize {
        match &self.0 {
            // `in_payload` checked the range against the (immutable) payload.
            Buf::Payload { len, .. } => *len as usize,
            Buf::Owned(b) => b.len(),
            Buf::Symbol(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&[u8]> for Blob {
    fn from(b: &[u8]) -> Blob {
        Blob(Buf::Owned(Rc::from(b)))
    }
}

impl From<Vec<u8>> for Blob {
    fn from(b: Vec<u8>) -> Blob {
        Blob(Buf::Owned(Rc::from(b)))
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_bytes(), f)
    }
}

/// A string: a [`Blob`] whose bytes are UTF-8.
#[derive(Clone, PartialEq)]
pub struct Text(Blob);

/// Whether `bytes` are UTF-8. ASCII first: word-at-a-time with no per-call set-up, where
/// `str::from_utf8` spent about 80 instructions on each of a navigation record's short strings
/// (callgrind of a null-sink drain: 800 of the shard's 13,000 instructions per record). Anything
/// else gets the full check.
#[inline]
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

impl Text {
    /// `payload[start..start + len]` if that range is inside the payload and is UTF-8; the check the
    /// decoder makes once, so that nothing after it needs to.
    #[inline]
    pub fn in_payload(payload: &Rc<[u8]>, start: usize, len: usize) -> Option<Text> {
        let blob = Blob::in_payload(payload, start, len)?;
        if !is_utf8(blob.as_bytes()) {
            return None;
        }
        Some(Text(blob))
    }

    /// An enum symbol of a compiled plan (no copy).
    #[inline]
    pub fn symbol(s: &Arc<str>) -> Text {
        Text(Blob(Buf::Symbol(s.clone())))
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The string. Validates again (safe Rust has no unchecked view): for the paths that need a
    /// `str` (parsing a UUID or an address, a lookup key), never for writing text to a column.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes())
            .expect("a Text is UTF-8: it is built from a str or from a range the decoder validated")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_ascii(&self) -> bool {
        self.as_bytes().is_ascii()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(Blob::from(s.as_bytes()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Blob::from(s.into_bytes()))
    }
}

impl Eq for Text {}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_ranges_share_the_buffer_and_stay_inside_it() {
        let p: Rc<[u8]> = Rc::from(&b"xhello\xffy"[..]);
        let t = Text::in_payload(&p, 1, 5).expect("in range and UTF-8");
        assert_eq!(t, "hello");
        assert_eq!(t.as_str(), "hello");
        assert_eq!(Rc::strong_count(&p), 2, "no copy, one more reference");
        assert!(Text::in_payload(&p, 6, 1).is_none(), "0xff is not UTF-8");
        assert_eq!(
            Blob::in_payload(&p, 6, 1).map(|b| b.as_bytes().to_vec()),
            Some(vec![0xff])
        );
        assert!(Blob::in_payload(&p, 5, 9).is_none(), "past the end");
        assert!(Blob::in_payload(&p, usize::MAX, 2).is_none(), "overflow");
        drop(t);
        assert_eq!(Rc::strong_count(&p), 1);
    }

    #[test]
    fn text_takes_multibyte_utf8_and_refuses_what_is_not_after_an_ascii_start() {
        let s = "long ascii start, then é, ü and 日本 ✓".as_bytes();
        let p: Rc<[u8]> = Rc::from(s);
        let t = Text::in_payload(&p, 0, s.len()).expect("UTF-8");
        assert_eq!(t.as_str(), "long ascii start, then é, ü and 日本 ✓");
        // A lone continuation byte, a truncated sequence, an overlong encoding and a surrogate,
        // each after 24 ASCII bytes (past the word-at-a-time prefix).
        for bad in [
            &[0x80][..],
            &[0xe6, 0x97],
            &[0xc0, 0xaf],
            &[0xed, 0xa0, 0x80],
        ] {
            let mut b = b"abcdefghijklmnopqrstuvwx".to_vec();
            b.extend_from_slice(bad);
            let p: Rc<[u8]> = Rc::from(b.as_slice());
            assert!(Text::in_payload(&p, 0, b.len()).is_none(), "{bad:x?}");
            assert!(
                Text::in_payload(&p, 0, 24).is_some(),
                "the ASCII prefix alone"
            );
        }
    }

    #[test]
    fn owners_compare_by_content() {
        let p: Rc<[u8]> = Rc::from(&b"ab"[..]);
        let sym: Arc<str> = Arc::from("ab");
        let a = Text::in_payload(&p, 0, 2).expect("valid");
        assert_eq!(a, Text::from("ab"));
        assert_eq!(a, Text::symbol(&sym));
        assert_eq!(Text::from(String::from("ab")).to_string(), "ab");
        assert_eq!(format!("{a:?}"), "\"ab\"");
        assert_ne!(a, Text::from("abc"));
    }
}
