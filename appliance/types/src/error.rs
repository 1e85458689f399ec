//! The one formatter of error chains: an error and its causes on one line,
//! for logs and messages everywhere in Hangar.

/// `e` and each of its causes, joined with `": "` on one line. A cause whose
/// text the line already holds (an error that repeats its source) or that says
/// nothing is left out; line breaks become spaces.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("cannot read {path}")]
        Read {
            path: &'static str,
            #[source]
            source: std::io::Error,
        },
        #[error("wrapped: {0}")]
        Repeats(#[source] std::io::Error),
    }

    #[test]
    fn causes_join_on_one_line_without_repeats() {
        let io = || std::io::Error::other("permission\ndenied");
        assert_eq!(error_chain(&E::Read { path: "/etc/x", source: io() }), "cannot read /etc/x: permission denied");
        assert_eq!(error_chain(&E::Repeats(std::io::Error::other("gone"))), "wrapped: gone");
        assert_eq!(error_chain(&io()), "permission denied");
    }
}
