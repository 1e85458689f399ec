//! Validation of what a configuration says: paths and modes, each refused with
//! one line naming the value and what is wrong with it.

/// Checks that `path` is absolute, below `/` and in normal form. Normal form
/// matters beyond taste: a resource's id is its path, so `terraform import`
/// with the path as written in the configuration must find the same object.
pub fn path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.contains('\0') {
        return Err(format!("the path {path:?} holds a NUL byte"));
    }
    if !path.starts_with('/') {
        return Err(format!("the path {path:?} is relative: give an absolute path"));
    }
    if path == "/" {
        return Err("the path \"/\" is the root directory: name something below it".into());
    }
    let rest = &path[1..];
    if rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!(
            "the path {path:?} is not in normal form (no \".\" or \"..\" components, no \"//\", no trailing \"/\")"
        ));
    }
    Ok(())
}

/// Parses a mode written as four octal digits, `"0644"` say: the form the
/// provider also reads back from the host, so a configured mode and an
/// observed one compare equal. Setuid, setgid and sticky bits are refused.
pub fn mode(mode: &str) -> Result<u32, String> {
    let digits_ok = mode.len() == 4 && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !digits_ok {
        return Err(format!("the mode {mode:?} is not four octal digits such as \"0644\""));
    }
    if !mode.starts_with('0') {
        return Err(format!("the mode {mode:?} sets setuid, setgid or sticky bits, which this provider does not manage"));
    }
    u32::from_str_radix(mode, 8).map_err(|_| format!("the mode {mode:?} is not octal"))
}

/// How a mode is written in a state: the inverse of [`mode`].
pub fn format_mode(bits: u32) -> String {
    format!("{:04o}", bits & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_normal_paths_pass() {
        for p in ["/tmp/a", "/a", "/var/lib/x.txt", "/a/.hidden", "/a/b..c"] {
            assert_eq!(path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn relative_and_odd_paths_are_refused_saying_why() {
        assert_eq!(path(""), Err("the path is empty".into()));
        assert!(path("a/b").unwrap_err().contains("is relative"));
        assert!(path("./a").unwrap_err().contains("is relative"));
        assert!(path("/").unwrap_err().contains("root directory"));
        for p in ["/a/../b", "/a/./b", "/a//b", "/a/", "/.."] {
            assert!(path(p).unwrap_err().contains("not in normal form"), "{p}");
        }
        assert!(path("/a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn modes_are_four_octal_digits_without_special_bits() {
        assert_eq!(mode("0644"), Ok(0o644));
        assert_eq!(mode("0000"), Ok(0));
        assert_eq!(mode("0777"), Ok(0o777));
        for m in ["644", "00644", "0o644", "0x1f", "0648", "", "rw-r--r--", " 644"] {
            assert!(mode(m).unwrap_err().contains("four octal digits"), "{m}");
        }
        for m in ["4755", "1777", "2755"] {
            assert!(mode(m).unwrap_err().contains("setuid"), "{m}");
        }
    }

    #[test]
    fn modes_read_back_in_the_form_configured() {
        assert_eq!(format_mode(0o100644), "0644");
        assert_eq!(format_mode(0o40755), "0755");
        assert_eq!(mode(&format_mode(0o600)), Ok(0o600));
    }
}
