//! Browser sessions: the API's session tokens (same table, same expiry, same
//! revocation) carried in a `__Host-` cookie, and the per-session CSRF token
//! every form posts back.
//!
//! The CSRF token is derived from the session token, which only the browser's
//! HttpOnly cookie holds: another site can neither read nor compute it.

use warp::http::HeaderValue;

/// The session cookie. `__Host-` makes the browser refuse it unless it is
/// `Secure`, has `Path=/` and no `Domain`.
pub const COOKIE: &str = "__Host-hangar_session";

/// The form field that carries the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";

/// The session token in a `Cookie` header, if any.
pub fn session_token(cookie_header: Option<&str>) -> Option<String> {
    cookie_header?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 512 && v.bytes().all(|b| b.is_ascii_graphic() && b != b';'))
}

/// `Set-Cookie` that holds `token` for `ttl`.
pub(crate) fn set_cookie(token: &str, ttl: chrono::Duration) -> HeaderValue {
    let v = format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}", ttl.num_seconds().max(0));
    HeaderValue::from_str(&v).unwrap_or_else(|_| clear_cookie())
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-hangar_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The CSRF token of the session whose token is `session_token`.
pub(crate) fn csrf_token(session_token: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"hangar-console-csrf\0");
    ctx.update(session_token.as_bytes());
    hex::encode(&ctx.finish().as_ref()[..20])
}

/// Whether `presented` is the CSRF token of `session_token` (constant time).
pub(crate) fn csrf_matches(session_token: &str, presented: &str) -> bool {
    let want = csrf_token(session_token);
    want.len() == presented.len()
        && want.bytes().zip(presented.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Whether a state-changing request came from a page of this server: its
/// `Origin` must be `origin` (the public URL's) or that of the `Host` it was
/// sent to. A request without `Origin` is refused: every browser that runs
/// the console sends it on POST.
pub(crate) fn same_origin(origin_header: Option<&str>, host: Option<&str>, origin: &str) -> bool {
    let Some(given) = origin_header.map(|o| o.trim().to_ascii_lowercase()) else { return false };
    if given == origin {
        return true;
    }
    host.is_some_and(|h| given == format!("https://{}", h.trim().to_ascii_lowercase()))
}

/// The session token behind a script's request to the API from a console
/// page (a bundle upload from the System page): the session cookie, the
/// page's CSRF token in `X-Hangar-CSRF`, and, unless the request only reads
/// (browsers send no `Origin` on a same-origin GET), the page's origin; all
/// of them or nothing. Only a session token is taken, never an API key.
pub fn browser_write_token(
    cookie: Option<&str>,
    csrf: Option<&str>,
    origin_header: Option<&str>,
    host: Option<&str>,
    origin: &str,
    reads: bool,
) -> Option<String> {
    let token = session_token(cookie).filter(|t| t.starts_with("hss_"))?;
    (csrf_matches(&token, csrf?.trim()) && (reads || same_origin(origin_header, host, origin))).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let h = format!("a=1; {COOKIE}=hss_abc.def ; b=2");
        assert_eq!(session_token(Some(&h)).as_deref(), Some("hss_abc.def"));
        assert_eq!(session_token(Some("a=1")), None);
        assert_eq!(session_token(Some(&format!("{COOKIE}="))), None);
        assert_eq!(session_token(None), None);
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie("hss_x", chrono::Duration::hours(12));
        let c = c.to_str().unwrap();
        for want in ["__Host-hangar_session=hss_x", "Path=/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
            assert!(c.contains(want), "{c} lacks {want}");
        }
        assert!(!c.contains("Domain"));
    }

    #[test]
    fn csrf_is_per_session() {
        let a = csrf_token("hss_a");
        assert!(csrf_matches("hss_a", &a));
        assert!(!csrf_matches("hss_b", &a));
        assert!(!csrf_matches("hss_a", ""));
        assert!(!csrf_matches("hss_a", &a[1..]));
    }

    #[test]
    fn origins() {
        let o = "https://localhost:1983";
        assert!(same_origin(Some("https://localhost:1983"), None, o));
        assert!(same_origin(Some("https://10.0.0.5:1983"), Some("10.0.0.5:1983"), o));
        assert!(!same_origin(Some("https://evil.example"), Some("localhost:1983"), o));
        assert!(!same_origin(Some("null"), Some("localhost:1983"), o));
        assert!(!same_origin(None, Some("localhost:1983"), o));
        assert!(!same_origin(Some("http://localhost:1983"), Some("localhost:1983"), o));
    }
}
