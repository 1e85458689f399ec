//! Masks secret values in a byte stream that arrives in arbitrary pieces: a
//! secret split across two reads, two chunks or two lines is still masked,
//! because the tail that could be the start of a secret is held back until the
//! next piece (or the end of the stream) decides.

/// What a masked secret becomes.
pub const MASK: &[u8] = b"***";

/// A streaming masker over a fixed set of secrets.
#[derive(Default)]
pub struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// A masker for `secrets`. A multi-line secret is also masked line by line
    /// (tools re-indent or re-wrap long values when they print them); empty
    /// values and whitespace-only lines are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut all: Vec<Vec<u8>> = Vec::new();
        for s in secrets {
            if s.trim().is_empty() {
                continue;
            }
            all.push(s.as_bytes().to_vec());
            if s.contains('\n') {
                for line in s.lines() {
                    let line = line.trim();
                    if !line.is_empty() {
                        all.push(line.as_bytes().to_vec());
                    }
                }
            }
        }
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        Masker {
            secrets: all,
            pending: Vec::new(),
        }
    }

    /// Feeds `data`; returns what can be emitted safely now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        self.drain(false)
    }

    /// Ends the stream: returns everything still held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    /// Masks a complete text at once (notes, error messages).
    pub fn mask_all(&self, text: &str) -> String {
        let mut m = Masker {
            secrets: self.secrets.clone(),
            pending: Vec::new(),
        };
        let mut out = m.push(text.as_bytes());
        out.extend(m.finish());
        String::from_utf8_lossy(&out).into_owned()
    }

    fn drain(&mut self, at_end: bool) -> Vec<u8> {
        let buf = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            // The rest could still become a secret once more bytes arrive
            // (perhaps a longer one than what already matches here): keep it.
            if !at_end
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                self.pending = rest.to_vec();
                return out;
            }
            for s in &self.secrets {
                if rest.starts_with(s) {
                    out.extend_from_slice(MASK);
                    i += s.len();
                    continue 'scan;
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], pieces: &[&str]) -> String {
        let mut m = Masker::new(secrets.iter().copied());
        let mut out = Vec::new();
        for p in pieces {
            out.extend(m.push(p.as_bytes()));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_whole_and_split_secrets() {
        assert_eq!(run(&["hunter2"], &["pw=hunter2;"]), "pw=***;");
        assert_eq!(run(&["hunter2"], &["pw=hun", "ter2;"]), "pw=***;");
        // One byte at a time.
        let text = "a hunter2 b hunter2";
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(run(&["hunter2"], &pieces), "a *** b ***");
    }

    #[test]
    fn a_held_back_prefix_that_does_not_complete_is_released() {
        assert_eq!(run(&["hunter2"], &["x hunt", "ing"]), "x hunting");
        assert_eq!(run(&["hunter2"], &["ends with hunte"]), "ends with hunte");
        let mut m = Masker::new(["hunter2"]);
        assert_eq!(m.push(b"abc hun"), b"abc ");
        assert_eq!(m.push(b"gry"), b"hungry");
    }

    #[test]
    fn multi_line_secrets_are_masked_whole_and_by_line() {
        let key = "-----BEGIN KEY-----\nAAAABBBBCCCC\nDDDDEEEE\n-----END KEY-----";
        assert_eq!(run(&[key], &[&key[..25], &key[25..]]), "***");
        // Re-indented by the tool that printed it.
        let shown = "  AAAABBBBCCCC\n  DDDDEEEE\n";
        assert_eq!(run(&[key], &[shown]), "  ***\n  ***\n");
    }

    #[test]
    fn overlapping_secrets_mask_the_longest() {
        assert_eq!(run(&["abc", "abcdef"], &["xabcdefy abcz"]), "x***y ***z");
        assert_eq!(run(&["", "  "], &["nothing to hide"]), "nothing to hide");
    }
}
