//! Just enough AWS Signature Version 4 to sign the S3 readiness check and the
//! installer's bucket creation: a request with no body, its headers limited to
//! host, x-amz-date and x-amz-content-sha256.

use ring::{digest, hmac};

/// SHA-256 of the empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A request to sign.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The `Host` header exactly as it is sent (`host` or `host:port`).
    pub host: &'a str,
    /// Already URI-encoded path, starting with `/`.
    pub path: &'a str,
    pub region: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
}

/// The `Authorization` header value.
pub fn authorization(r: &Request<'_>) -> String {
    let day = &r.amz_date[..8];
    let scope = format!("{day}/{}/s3/aws4_request", r.region);
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{date}\n\n{signed_headers}\n{EMPTY_SHA256}",
        method = r.method,
        path = r.path,
        host = r.host,
        date = r.amz_date,
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        r.amz_date,
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{}", r.secret_key).as_bytes(), day.as_bytes());
    for part in [r.region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        r.access_key
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

/// Percent-encodes one path segment as SigV4 wants it (unreserved characters kept).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Whether Garage accepts these signatures is tested against a real Garage.
    #[test]
    fn signature_is_deterministic_and_depends_on_every_input() {
        let base = Request {
            method: "HEAD",
            host: "127.0.0.1:9000",
            path: "/hangar",
            region: "garage",
            access_key: "GK1",
            secret_key: "secret",
            amz_date: "20260101T000000Z",
        };
        let a = authorization(&base);
        assert_eq!(a, authorization(&base));
        assert!(a.starts_with("AWS4-HMAC-SHA256 Credential=GK1/20260101/garage/s3/aws4_request, "), "{a}");
        for changed in [
            Request { host: "127.0.0.1:9001", ..base },
            Request { path: "/other", ..base },
            Request { region: "us-east-1", ..base },
            Request { secret_key: "secret2", ..base },
            Request { amz_date: "20260101T000001Z", ..base },
        ] {
            assert_ne!(authorization(&changed).rsplit('=').next(), a.rsplit('=').next());
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("a b/c~d"), "a%20b%2Fc~d");
    }
}
