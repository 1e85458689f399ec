//! Names of the hidden files and directories the reader and the builder create
//! next to what they write (`.<name>.staging-<random>`, `.<name>.tmp-<random>`).
//!
//! Any name the filesystem accepts must work as a target, so the copy of the
//! target's name in the temporary one is shortened to keep it within a
//! filesystem's 255-byte limit on one name.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::limits::MAX_COMPONENT_BYTES;

/// `.<name>.<tag>-<16 random hex digits>`, at most 255 bytes: `name` is cut
/// (at a character boundary when it is UTF-8) to make room.
pub(crate) fn hidden_name(name: &OsStr, tag: &str) -> OsString {
    let suffix: u64 = rand::random();
    let tail = format!(".{tag}-{suffix:016x}");
    let room = MAX_COMPONENT_BYTES - 1 - tail.len();
    let mut out = Vec::with_capacity(MAX_COMPONENT_BYTES);
    out.push(b'.');
    out.extend_from_slice(shorten(name.as_bytes(), room));
    out.extend_from_slice(tail.as_bytes());
    OsString::from_vec(out)
}

/// The longest prefix of `name` of at most `max` bytes, not splitting a UTF-8
/// character (names that are not UTF-8 are cut anywhere).
fn shorten(name: &[u8], max: usize) -> &[u8] {
    if name.len() <= max {
        return name;
    }
    match std::str::from_utf8(name) {
        Ok(text) => {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            &name[..end]
        }
        Err(_) => &name[..max],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_255_bytes() {
        for len in [1, 100, 228, 229, 230, 254, 255] {
            let name = "n".repeat(len);
            let hidden = hidden_name(OsStr::new(&name), "staging");
            assert!(hidden.len() <= 255, "{len}: {}", hidden.len());
            let text = hidden.to_str().unwrap();
            assert!(
                text.starts_with(&format!(".{}", &name[..len.min(229)])),
                "{text}"
            );
            assert!(text.contains(".staging-"), "{text}");
        }
        // A multi-byte character is never split.
        let name = "é".repeat(127);
        let hidden = hidden_name(OsStr::new(&name), "staging");
        assert!(hidden.len() <= 255 && hidden.to_str().is_some());
        // Bytes that are not UTF-8 are kept as they are.
        let raw = OsStr::from_bytes(&[0xff; 250]);
        assert!(hidden_name(raw, "tmp").len() <= 255);
    }
}
