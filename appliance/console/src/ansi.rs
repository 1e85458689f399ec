//! Terraform's coloured output as HTML: SGR sequences (bold, colours) become
//! `<span class>` around escaped text; every other control sequence is
//! dropped. Nothing from the log is ever emitted unescaped.

use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than newline and tab show nothing useful.
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
}

#[derive(Default)]
struct Style {
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    fg: Option<u8>,
}

impl Style {
    fn classes(&self) -> String {
        let mut c = Vec::new();
        if self.bold {
            c.push("a-b".to_string());
        }
        if self.dim {
            c.push("a-d".to_string());
        }
        if self.italic {
            c.push("a-i".to_string());
        }
        if self.underline {
            c.push("a-u".to_string());
        }
        if let Some(f) = self.fg {
            c.push(format!("a-f{f}"));
        }
        c.join(" ")
    }

    fn apply(&mut self, params: &str) {
        let codes: Vec<u32> = if params.is_empty() { vec![0] } else { params.split(';').map(|p| p.parse().unwrap_or(0)).collect() };
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                n @ 30..=37 => self.fg = Some((n - 30) as u8),
                n @ 90..=97 => self.fg = Some((n - 90) as u8),
                39 => self.fg = None,
                // 256-colour and true-colour forms: their arguments are skipped.
                38 | 48 => {
                    i += if codes.get(i + 1) == Some(&5) { 2 } else { 4 };
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// `text` with ANSI escapes as HTML: escaped text in styled spans.
pub(crate) fn to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut style = Style::default();
    let mut rest = text;
    let mut open = false;
    while !rest.is_empty() {
        let Some(esc) = rest.find('\u{1b}') else {
            emit(&mut out, rest.trim_end_matches('\r'), &style, &mut open);
            break;
        };
        emit(&mut out, &rest[..esc], &style, &mut open);
        rest = &rest[esc + 1..];
        if let Some(csi) = rest.strip_prefix('[') {
            // Parameters, then one final byte in @..~.
            let end = csi.find(|c: char| ('@'..='~').contains(&c));
            match end {
                Some(e) => {
                    if &csi[e..e + 1] == "m" {
                        style.apply(&csi[..e]);
                    }
                    rest = &csi[e + 1..];
                }
                None => break,
            }
        }
        // A lone ESC or another escape kind: dropped with its next character.
    }
    if open {
        out.push_str("</span>");
    }
    out
}

fn emit(out: &mut String, text: &str, style: &Style, open: &mut bool) {
    if text.is_empty() {
        return;
    }
    // Carriage returns that redraw a line keep only what was drawn last.
    let text = text.replace("\r\n", "\n");
    let classes = style.classes();
    if *open {
        out.push_str("</span>");
        *open = false;
    }
    if !classes.is_empty() {
        let _ = write!(out, "<span class=\"{classes}\">");
        *open = true;
    }
    escape(&text, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_become_spans_around_escaped_text() {
        let html = to_html("\u{1b}[1m\u{1b}[32m+ create\u{1b}[0m <script>alert(1)</script>\n");
        assert_eq!(html, "<span class=\"a-b a-f2\">+ create</span> &lt;script&gt;alert(1)&lt;/script&gt;\n");
    }

    #[test]
    fn hostile_sequences_cannot_break_out() {
        // An escape that tries to smuggle markup in its parameters is dropped whole.
        let html = to_html("a\u{1b}[\"><img src=x onerror=alert(1)>m b");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains('"') || html.contains("&quot;"), "{html}");
        // A truncated escape at the end is dropped; cursor moves vanish.
        assert_eq!(to_html("x\u{1b}[2Ky\u{1b}["), "xy");
        assert_eq!(to_html("\u{1b}[38;5;196mred\u{1b}[39m"), "red");
        assert_eq!(to_html("a\u{7}b\r\n"), "ab\n");
    }
}
