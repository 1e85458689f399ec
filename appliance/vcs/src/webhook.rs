//! Webhook verification, exactly as each vendor specifies it, before a byte of the
//! body is parsed:
//!
//! | vendor | authenticity | delivery id | event |
//! |---|---|---|---|
//! | GitHub Enterprise Server | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` | `X-GitHub-Delivery` | `X-GitHub-Event` |
//! | GitLab, secret token | `X-Gitlab-Token: <the token>` | `Idempotency-Key` (17.4 and later); else `X-Gitlab-Event-UUID` with a digest of the body (14.8 to 17.3); else the digest alone (before 14.8) | `X-Gitlab-Event` |
//! | GitLab, signing token | `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` (space-separated list), `webhook-id`, `webhook-timestamp` within 5 minutes | `webhook-id` | `X-Gitlab-Event` |
//! | Gitea / Forgejo | `X-Forgejo-Signature` or `X-Gitea-Signature: <hex HMAC-SHA256 of the JSON>` (the body, or a form body's `payload` field) | `X-Forgejo-Delivery` / `X-Gitea-Delivery` | `X-Forgejo-Event` / `X-Gitea-Event` |
//! | Bitbucket Data Center | `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>` | `X-Request-Id` | `X-Event-Key` |
//!
//! Every comparison is constant-time (ring's HMAC verification). The size is
//! checked first, before a byte is hashed; then authenticity, so an
//! unauthenticated sender learns nothing about the other headers it got wrong.
//!
//! Bodies are JSON. Gitea can be set to send `application/x-www-form-urlencoded`
//! bodies instead (`payload=<the JSON>`, the JSON signed): those are verified on
//! the JSON and accepted ([`Delivery::document`]). Other vendors' form bodies
//! are refused with 415 once authenticated, telling the operator to choose JSON.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ring::hmac;

use crate::{Secret, Vendor};

/// The largest delivery body accepted from any vendor (see [`max_body`]).
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// The largest delivery body accepted from `vendor`: the most it documents
/// sending. GitHub caps payloads at 25 MB (a push lists up to 2,048 commits
/// with their files, over 7 MB), and GitLab does not send a payload over 25 MiB.
/// Gitea and Bitbucket Data Center document no limit and send small bodies
/// (Gitea cuts the commit list to its feed limit, Bitbucket sends no commits):
/// 4 MiB holds any of theirs. The server refuses a larger declared body before
/// reading it ([`check_declared_length`]); [`Verifier::verify`] refuses a
/// larger body again before hashing a byte.
pub fn max_body(vendor: Vendor) -> usize {
    match vendor {
        Vendor::Github | Vendor::Gitlab => MAX_BODY,
        Vendor::Gitea | Vendor::Bitbucket => 4 * 1024 * 1024,
    }
}

/// How far a signed timestamp (GitLab's `webhook-timestamp`) may be from the
/// appliance's clock, either way, before the delivery counts as a replay.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// What a verified delivery is: who sent it, its id (the queue's uniqueness key,
/// identical when the vendor redelivers) and its event name as the vendor
/// spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub vendor: Vendor,
    pub id: String,
    pub event: String,
    /// The JSON a form-encoded body carried (Gitea's `payload` field), which is
    /// what the vendor signed; `None` when the body is the JSON itself.
    pub form_payload: Option<Vec<u8>>,
}

impl Delivery {
    /// The delivery's JSON document: `body` itself, or the JSON its form
    /// carried. This, not the raw body, is what is stored and parsed.
    pub fn document<'a>(&'a self, body: &'a [u8]) -> &'a [u8] {
        self.form_payload.as_deref().unwrap_or(body)
    }
}

/// Why a delivery was refused. [`WebhookError::http_status`] is the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{vendor} webhook body of {size} bytes is larger than the {limit}-byte limit")]
    TooLarge { vendor: Vendor, size: u64, limit: usize },
    #[error("{vendor} webhook carries no {header} header, so it cannot be authenticated")]
    Unsigned { vendor: Vendor, header: &'static str },
    #[error("{vendor} webhook has no {header} header")]
    MissingHeader { vendor: Vendor, header: &'static str },
    #[error("{vendor} webhook header {header} is malformed: {problem}")]
    MalformedHeader {
        vendor: Vendor,
        header: &'static str,
        problem: &'static str,
    },
    #[error("{vendor} webhook signature in {header} does not match the body")]
    BadSignature { vendor: Vendor, header: &'static str },
    #[error("{vendor} webhook token in {header} is wrong")]
    WrongToken { vendor: Vendor, header: &'static str },
    #[error(
        "{vendor} webhook timestamp {timestamp} is {skew_secs} s from the appliance's clock (at most {} s allowed): a replay, or a clock out of sync",
        TIMESTAMP_TOLERANCE.as_secs()
    )]
    StaleTimestamp {
        vendor: Vendor,
        timestamp: u64,
        skew_secs: i64,
    },
    #[error("{vendor} webhook body is form-encoded: set the webhook's content type to application/json")]
    FormEncoded { vendor: Vendor },
    #[error("{vendor} webhook form body is malformed: {problem}")]
    MalformedForm { vendor: Vendor, problem: &'static str },
    /// Bitbucket Data Center's "Test connection" button, which sends its
    /// `diagnostics:ping` unsigned. Not an attack and not a delivery: answered
    /// 200 with this text, so the operator sees the URL works and learns that
    /// only signed deliveries will be acted on.
    #[error(
        "{vendor} test connection received; it carries no X-Hub-Signature, so it was not verified and nothing was queued (deliveries must be signed with the integration's webhook secret)"
    )]
    UnsignedTestConnection { vendor: Vendor },
}

impl WebhookError {
    /// The HTTP status the server answers with. Nothing is enqueued for any of
    /// them.
    pub fn http_status(&self) -> StatusCode {
        match self {
            WebhookError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::Unsigned { .. }
            | WebhookError::BadSignature { .. }
            | WebhookError::WrongToken { .. }
            | WebhookError::StaleTimestamp { .. } => StatusCode::UNAUTHORIZED,
            WebhookError::MissingHeader { .. }
            | WebhookError::MalformedHeader { .. }
            | WebhookError::MalformedForm { .. } => StatusCode::BAD_REQUEST,
            WebhookError::FormEncoded { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WebhookError::UnsignedTestConnection { .. } => StatusCode::OK,
        }
    }

    pub fn vendor(&self) -> Vendor {
        match self {
            WebhookError::TooLarge { vendor, .. }
            | WebhookError::Unsigned { vendor, .. }
            | WebhookError::MissingHeader { vendor, .. }
            | WebhookError::MalformedHeader { vendor, .. }
            | WebhookError::BadSignature { vendor, .. }
            | WebhookError::WrongToken { vendor, .. }
            | WebhookError::StaleTimestamp { vendor, .. }
            | WebhookError::FormEncoded { vendor }
            | WebhookError::MalformedForm { vendor, .. }
            | WebhookError::UnsignedTestConnection { vendor } => *vendor,
        }
    }
}

/// A webhook secret that cannot be used. Raised when an integration is created,
/// so a bad secret never reaches the webhook path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the {vendor} webhook secret is empty; Hangar accepts only authenticated deliveries")]
    Empty { vendor: Vendor },
    #[error("the GitLab signing token is not `whsec_` followed by base64")]
    SigningTokenNotBase64,
    #[error("the GitLab signing token holds a {len}-byte key; between 24 and 64 bytes are expected")]
    SigningTokenLength { len: usize },
    #[error(
        "the GitLab secret token must be printable ASCII without leading or trailing spaces: GitLab sends it as the X-Gitlab-Token header, which can carry nothing else"
    )]
    TokenNotSendable,
}

/// Checks a delivery's declared `Content-Length` before its body is read.
pub fn check_declared_length(vendor: Vendor, content_length: u64) -> Result<(), WebhookError> {
    let limit = max_body(vendor);
    if content_length > limit as u64 {
        return Err(WebhookError::TooLarge { vendor, size: content_length, limit });
    }
    Ok(())
}

/// Verifies the deliveries of one integration. Built once from the integration's
/// secret; holds keys, never prints them.
#[derive(Clone)]
pub struct Verifier {
    vendor: Vendor,
    scheme: Scheme,
}

#[derive(Clone)]
enum Scheme {
    /// Hex HMAC-SHA256 of the body, each vendor with its own headers.
    Github(hmac::Key),
    Gitea(hmac::Key),
    Bitbucket(hmac::Key),
    /// GitLab's shared token. The expected token is kept only as an HMAC under a
    /// random key: comparing tags is constant-time whatever the lengths.
    GitlabToken { probe: hmac::Key, expected: hmac::Tag },
    /// GitLab's Standard-Webhooks signature over `id.timestamp.body`; `probe`
    /// compares received signatures with the computed one in constant time.
    GitlabSigning { key: hmac::Key, probe: hmac::Key },
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Github(_) | Scheme::Gitea(_) | Scheme::Bitbucket(_) => "hmac-sha256 of the body",
            Scheme::GitlabToken { .. } => "secret token",
            Scheme::GitlabSigning { .. } => "signing token",
        };
        f.debug_struct("Verifier")
            .field("vendor", &self.vendor)
            .field("scheme", &scheme)
            .finish()
    }
}

/// A GitLab secret is a signing token when it has the Standard-Webhooks form
/// GitLab gives it (`whsec_<base64>`); anything else is a secret token.
const SIGNING_PREFIX: &str = "whsec_";

fn signing_key(token: &str) -> Result<Option<Vec<u8>>, SecretError> {
    let Some(b64) = token.strip_prefix(SIGNING_PREFIX) else {
        return Ok(None);
    };
    let key = BASE64.decode(b64.trim()).map_err(|_| SecretError::SigningTokenNotBase64)?;
    if !(24..=64).contains(&key.len()) {
        return Err(SecretError::SigningTokenLength { len: key.len() });
    }
    Ok(Some(key))
}

impl Verifier {
    /// A verifier for `vendor` with the integration's webhook secret. For GitLab,
    /// a secret of the form `whsec_<base64>` is a signing token (signed
    /// deliveries required); any other is the secret token of `X-Gitlab-Token`.
    pub fn new(vendor: Vendor, secret: &Secret) -> Result<Verifier, SecretError> {
        let s = secret.expose();
        if s.is_empty() {
            return Err(SecretError::Empty { vendor });
        }
        let body_key = || hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes());
        let scheme = match vendor {
            Vendor::Github => Scheme::Github(body_key()),
            Vendor::Gitea => Scheme::Gitea(body_key()),
            Vendor::Bitbucket => Scheme::Bitbucket(body_key()),
            Vendor::Gitlab => match signing_key(s)? {
                Some(key) => Scheme::GitlabSigning {
                    key: hmac::Key::new(hmac::HMAC_SHA256, &key),
                    probe: probe_key(),
                },
                None => {
                    // Header values are visible ASCII and lose surrounding
                    // whitespace on the way: no other token can ever match.
                    let sendable = s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.trim() == s;
                    if !sendable {
                        return Err(SecretError::TokenNotSendable);
                    }
                    let probe = probe_key();
                    let expected = hmac::sign(&probe, s.as_bytes());
                    Scheme::GitlabToken { probe, expected }
                }
            },
        };
        Ok(Verifier { vendor, scheme })
    }

    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// Authenticates a delivery and reads its id and event name. `now` is the
    /// appliance's clock, for GitLab's signed timestamps.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<Delivery, WebhookError> {
        let vendor = self.vendor;
        let limit = max_body(vendor);
        if body.len() > limit {
            return Err(WebhookError::TooLarge { vendor, size: body.len() as u64, limit });
        }
        let h = Headers { map: headers, vendor };
        let delivery = self.authenticate(&h, body, now)?;
        // Only an authenticated sender learns that its content type is wrong.
        if delivery.form_payload.is_none() && is_form(&h)? {
            return Err(WebhookError::FormEncoded { vendor });
        }
        Ok(delivery)
    }

    fn authenticate(&self, h: &Headers<'_>, body: &[u8], now: SystemTime) -> Result<Delivery, WebhookError> {
        let vendor = self.vendor;
        match &self.scheme {
            Scheme::Github(key) => {
                let header = "x-hub-signature-256";
                let value = h.required_signature(header)?;
                let hex = value.strip_prefix("sha256=").ok_or(WebhookError::MalformedHeader {
                    vendor,
                    header,
                    problem: "does not start with sha256=",
                })?;
                verify_hex(key, body, hex, vendor, header)?;
                Ok(Delivery {
                    vendor,
                    id: h.delivery_id("x-github-delivery")?,
                    event: h.event("x-github-event")?,
                    form_payload: None,
                })
            }
            Scheme::Gitea(key) => {
                // Forgejo sends both its own headers and Gitea's; its own win.
                let (sig, delivery, event) = if h.get("x-forgejo-signature")?.is_some() {
                    ("x-forgejo-signature", "x-forgejo-delivery", "x-forgejo-event")
                } else {
                    ("x-gitea-signature", "x-gitea-delivery", "x-gitea-event")
                };
                let value = h.required_signature(sig)?;
                // A form body carries the JSON in its `payload` field, and the
                // JSON is what Gitea signs.
                let form_payload = if is_form(h)? { Some(form_payload(body, vendor)?) } else { None };
                verify_hex(key, form_payload.as_deref().unwrap_or(body), value, vendor, sig)?;
                let delivery = match h.get(delivery)? {
                    Some(_) => h.delivery_id(delivery)?,
                    None => h.delivery_id("x-gitea-delivery")?,
                };
                let event = match h.get(event)? {
                    Some(_) => h.event(event)?,
                    None => h.event("x-gitea-event")?,
                };
                Ok(Delivery { vendor, id: delivery, event, form_payload })
            }
            Scheme::Bitbucket(key) => {
                let header = "x-hub-signature";
                if h.get(header)?.is_none() && h.get("x-event-key")? == Some("diagnostics:ping") {
                    return Err(WebhookError::UnsignedTestConnection { vendor });
                }
                let value = h.required_signature(header)?;
                let hex = value.strip_prefix("sha256=").ok_or(WebhookError::MalformedHeader {
                    vendor,
                    header,
                    problem: "does not start with sha256= (only HMAC-SHA256 is accepted)",
                })?;
                verify_hex(key, body, hex, vendor, header)?;
                Ok(Delivery {
                    vendor,
                    id: h.delivery_id("x-request-id")?,
                    event: h.event("x-event-key")?,
                    form_payload: None,
                })
            }
            Scheme::GitlabToken { probe, expected } => {
                let header = "x-gitlab-token";
                let given = h.required_signature(header)?;
                hmac::verify(probe, given.as_bytes(), expected.as_ref())
                    .map_err(|_| WebhookError::WrongToken { vendor, header })?;
                Ok(Delivery { vendor, id: gitlab_delivery_id(h, body)?, event: h.event("x-gitlab-event")?, form_payload: None })
            }
            Scheme::GitlabSigning { key, probe } => {
                let signatures = h.required_signature("webhook-signature")?;
                let id = h.delivery_id("webhook-id")?;
                let ts_text = h
                    .get("webhook-timestamp")?
                    .ok_or(WebhookError::MissingHeader { vendor, header: "webhook-timestamp" })?;
                let timestamp = parse_timestamp(ts_text).ok_or(WebhookError::MalformedHeader {
                    vendor,
                    header: "webhook-timestamp",
                    problem: "is not a Unix time in seconds",
                })?;
                verify_standard_webhooks(key, probe, &id, ts_text, body, signatures, vendor)?;
                // Checked after the signature so that a stale but authentic delivery
                // is reported as such: that is a clock to fix, not an attack.
                let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let skew_secs = timestamp as i64 - now_secs as i64;
                if skew_secs.unsigned_abs() > TIMESTAMP_TOLERANCE.as_secs() {
                    return Err(WebhookError::StaleTimestamp { vendor, timestamp, skew_secs });
                }
                Ok(Delivery { vendor, id, event: h.event("x-gitlab-event")?, form_payload: None })
            }
        }
    }
}

/// A token-authenticated GitLab delivery's id, from what its version sends.
/// 17.4 and later: `Idempotency-Key`, the same on every retry. 14.8 to 17.3:
/// `X-Gitlab-Event-UUID`, which recursive webhooks share, so a digest of the
/// body tells their distinct events apart (a resent delivery has the same
/// body). Before 14.8, neither header: the digest alone.
fn gitlab_delivery_id(h: &Headers<'_>, body: &[u8]) -> Result<String, WebhookError> {
    if h.get("idempotency-key")?.is_some() {
        return h.delivery_id("idempotency-key");
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let digest = hex::encode(&digest.as_ref()[..16]);
    let header = "x-gitlab-event-uuid";
    if h.get(header)?.is_none() {
        return Ok(format!("body-{digest}"));
    }
    let id = format!("{}:{digest}", h.delivery_id(header)?);
    if id.len() > 128 {
        return Err(WebhookError::MalformedHeader {
            vendor: h.vendor,
            header,
            problem: "is not an id of at most 95 letters, digits and -_.:",
        });
    }
    Ok(id)
}

/// Whether the body is declared form-encoded (`application/x-www-form-urlencoded`).
fn is_form(h: &Headers<'_>) -> Result<bool, WebhookError> {
    Ok(h.get("content-type")?
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")))
}

/// The JSON of a form body that is exactly one `payload=<JSON>` field, as
/// Gitea sends it.
fn form_payload(body: &[u8], vendor: Vendor) -> Result<Vec<u8>, WebhookError> {
    let malformed = WebhookError::MalformedForm { vendor, problem: "is not exactly one payload=<JSON> field" };
    let mut payload = None;
    for (key, value) in url::form_urlencoded::parse(body) {
        if key != "payload" || payload.is_some() {
            return Err(malformed);
        }
        payload = Some(value.into_owned().into_bytes());
    }
    payload.ok_or(malformed)
}

fn parse_timestamp(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn verify_hex(key: &hmac::Key, body: &[u8], hex_sig: &str, vendor: Vendor, header: &'static str) -> Result<(), WebhookError> {
    if hex_sig.len() != 64 {
        return Err(WebhookError::MalformedHeader {
            vendor,
            header,
            problem: "is not 64 hexadecimal digits",
        });
    }
    let tag = hex::decode(hex_sig).map_err(|_| WebhookError::MalformedHeader {
        vendor,
        header,
        problem: "is not 64 hexadecimal digits",
    })?;
    hmac::verify(key, body, &tag).map_err(|_| WebhookError::BadSignature { vendor, header })
}

/// `webhook-signature` is a space-separated list of `<version>,<base64>`; the
/// delivery is authentic when any `v1` entry is the HMAC of `id.timestamp.body`.
/// Other versions (`v1a`, asymmetric) are not ours and are skipped.
fn verify_standard_webhooks(
    key: &hmac::Key,
    probe: &hmac::Key,
    id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
    vendor: Vendor,
) -> Result<(), WebhookError> {
    let name = "webhook-signature";
    let entries: Vec<&str> = header.split(' ').filter(|e| !e.is_empty()).collect();
    // Secret rotation sends two or three; a long list is not a vendor's.
    if entries.len() > MAX_SIGNATURES {
        return Err(WebhookError::MalformedHeader {
            vendor,
            header: name,
            problem: "holds more than 8 signatures",
        });
    }
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let computed = ctx.sign();
    let mut candidates = 0;
    for entry in entries {
        let Some((version, sig)) = entry.split_once(',') else {
            continue;
        };
        if version != "v1" {
            continue;
        }
        let Ok(sig) = BASE64.decode(sig) else {
            continue;
        };
        candidates += 1;
        if constant_time_eq(probe, computed.as_ref(), &sig) {
            return Ok(());
        }
    }
    if candidates == 0 {
        return Err(WebhookError::MalformedHeader {
            vendor,
            header: name,
            problem: "holds no v1,<base64> signature",
        });
    }
    Err(WebhookError::BadSignature { vendor, header: name })
}

const MAX_SIGNATURES: usize = 8;

/// A random key for comparing secrets through ring, whose HMAC verification is
/// constant-time: both sides are MACed under it and the fixed-length results
/// compared, so neither the content nor the length of the secret side leaks.
fn probe_key() -> hmac::Key {
    let rng = ring::rand::SystemRandom::new();
    hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system random generator works")
}

fn constant_time_eq(probe: &hmac::Key, computed: &[u8], received: &[u8]) -> bool {
    let expected = hmac::sign(probe, computed);
    hmac::verify(probe, received, expected.as_ref()).is_ok()
}

/// Header access with the checks every webhook header gets: at most once, and
/// visible ASCII.
struct Headers<'a> {
    map: &'a HeaderMap,
    vendor: Vendor,
}

impl<'a> Headers<'a> {
    fn get(&self, name: &'static str) -> Result<Option<&'a str>, WebhookError> {
        let mut all = self.map.get_all(name).iter();
        let Some(first) = all.next() else {
            return Ok(None);
        };
        if all.next().is_some() {
            return Err(WebhookError::MalformedHeader {
                vendor: self.vendor,
                header: name,
                problem: "appears more than once",
            });
        }
        let text = first.to_str().map_err(|_| WebhookError::MalformedHeader {
            vendor: self.vendor,
            header: name,
            problem: "is not visible ASCII",
        })?;
        Ok(Some(text.trim()))
    }

    /// The header that authenticates: its absence is a 401, not a 400.
    fn required_signature(&self, name: &'static str) -> Result<&'a str, WebhookError> {
        match self.get(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(WebhookError::Unsigned { vendor: self.vendor, header: name }),
        }
    }

    fn delivery_id(&self, name: &'static str) -> Result<String, WebhookError> {
        let v = self
            .get(name)?
            .ok_or(WebhookError::MissingHeader { vendor: self.vendor, header: name })?;
        let ok = !v.is_empty()
            && v.len() <= 128
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !ok {
            return Err(WebhookError::MalformedHeader {
                vendor: self.vendor,
                header: name,
                problem: "is not an id of at most 128 letters, digits and -_.:",
            });
        }
        Ok(v.to_string())
    }

    fn event(&self, name: &'static str) -> Result<String, WebhookError> {
        let v = self
            .get(name)?
            .ok_or(WebhookError::MissingHeader { vendor: self.vendor, header: name })?;
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'_' | b'-' | b':' | b'.'));
        if !ok {
            return Err(WebhookError::MalformedHeader {
                vendor: self.vendor,
                header: name,
                problem: "is not an event name of at most 64 letters, digits, spaces and _-:.",
            });
        }
        Ok(v.to_string())
    }
}

/// The headers `vendor` would send with `body`: signature (or token), delivery
/// id and event name. This is the sending side of [`Verifier::verify`], for the
/// end-to-end tests and benchmarks that play the git server, and for tools that
/// replay a stored delivery. For GitLab, a `whsec_` secret produces the signed
/// scheme stamped at `at`; any other secret, the token header.
pub fn vendor_headers(
    vendor: Vendor,
    secret: &Secret,
    delivery_id: &str,
    event: &str,
    body: &[u8],
    at: SystemTime,
) -> Result<HeaderMap, SecretError> {
    let s = secret.expose();
    if s.is_empty() {
        return Err(SecretError::Empty { vendor });
    }
    let hex_mac = || hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()), body).as_ref());
    let mut pairs: Vec<(&'static str, String)> = Vec::new();
    match vendor {
        Vendor::Github => {
            pairs.push(("x-hub-signature-256", format!("sha256={}", hex_mac())));
            pairs.push(("x-github-delivery", delivery_id.into()));
            pairs.push(("x-github-event", event.into()));
        }
        Vendor::Gitea => {
            let mac = hex_mac();
            pairs.push(("x-gitea-signature", mac));
            pairs.push(("x-gitea-delivery", delivery_id.into()));
            pairs.push(("x-gitea-event", event.into()));
        }
        Vendor::Bitbucket => {
            pairs.push(("x-hub-signature", format!("sha256={}", hex_mac())));
            pairs.push(("x-request-id", delivery_id.into()));
            pairs.push(("x-event-key", event.into()));
        }
        Vendor::Gitlab => {
            pairs.push(("x-gitlab-event", event.into()));
            match signing_key(s)? {
                Some(key) => {
                    let ts = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).to_string();
                    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
                    let mut ctx = hmac::Context::with_key(&key);
                    for part in [delivery_id.as_bytes(), b".", ts.as_bytes(), b".", body] {
                        ctx.update(part);
                    }
                    pairs.push(("webhook-signature", format!("v1,{}", BASE64.encode(ctx.sign().as_ref()))));
                    pairs.push(("webhook-id", delivery_id.into()));
                    pairs.push(("webhook-timestamp", ts));
                    pairs.push(("idempotency-key", delivery_id.into()));
                }
                None => {
                    pairs.push(("x-gitlab-token", s.to_string()));
                    pairs.push(("idempotency-key", delivery_id.into()));
                }
            }
        }
    }
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            map.insert(HeaderName::from_static(name), v);
        }
    }
    Ok(map)
}
