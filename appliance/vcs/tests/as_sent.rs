//! Deliveries as real git servers send them, beyond the documented happy path:
//! the largest payloads each vendor documents, GitLab's delivery headers across
//! its versions, Gitea's form-encoded bodies, the "test delivery" buttons, and
//! secrets a vendor cannot send.

use std::time::SystemTime;

use hangar_vcs::{Event, Secret, SecretError, Vendor, Verifier, WebhookError, check_declared_length, parse, vendor_headers};
use http::{HeaderMap, HeaderValue, StatusCode};
use ring::hmac;
use serde_json::json;

const MIB: usize = 1024 * 1024;

fn now() -> SystemTime {
    SystemTime::now()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn hex_hmac(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body).as_ref())
}

/// A JSON body of exactly `len` bytes.
fn body_of(len: usize) -> Vec<u8> {
    let mut b = br#"{"pad":""#.to_vec();
    b.resize(len - 2, b'x');
    b.extend_from_slice(br#""}"#);
    b
}

/// GitHub and GitLab both document 25 MB as the largest payload they send (a
/// push of 2,048 commits with their file lists is over 7 MB); Gitea and
/// Bitbucket Data Center document no limit and send small bodies (Gitea cuts
/// the commit list, Bitbucket sends none), so they keep 4 MiB.
#[test]
fn each_vendor_accepts_its_documented_largest_payload_and_refuses_more() {
    let secret = Secret::new("s3cret");
    for (vendor, limit) in [(Vendor::Github, 25 * MIB), (Vendor::Gitlab, 25 * MIB), (Vendor::Gitea, 4 * MIB), (Vendor::Bitbucket, 4 * MIB)] {
        let v = Verifier::new(vendor, &secret).unwrap();
        let fits = body_of(limit);
        let h = vendor_headers(vendor, &secret, "d-1", "push", &fits, now()).unwrap();
        v.verify(&h, &fits, now()).unwrap_or_else(|e| panic!("{vendor} at its limit: {e}"));
        check_declared_length(vendor, limit as u64).unwrap();

        let over = body_of(limit + 1);
        let h = vendor_headers(vendor, &secret, "d-2", "push", &over, now()).unwrap();
        let e = v.verify(&h, &over, now()).unwrap_err();
        assert!(matches!(e, WebhookError::TooLarge { .. }), "{vendor}: {e}");
        assert_eq!(e.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.to_string().contains(&format!("the {limit}-byte limit")), "{e}");
        let declared = check_declared_length(vendor, (limit + 1) as u64).unwrap_err();
        assert_eq!(declared.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // A real 2,048-commit push is over 7 MB.
    let seven = body_of(7 * 1000 * 1000);
    let h = vendor_headers(Vendor::Github, &secret, "d-3", "push", &seven, now()).unwrap();
    Verifier::new(Vendor::Github, &secret).unwrap().verify(&h, &seven, now()).unwrap();
}

fn gitlab(token: &str, pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = headers(&[("x-gitlab-token", token), ("x-gitlab-event", "Push Hook")]);
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

const PUSH_A: &[u8] = br#"{"object_kind":"push","after":"aaaa"}"#;
const PUSH_B: &[u8] = br#"{"object_kind":"push","after":"bbbb"}"#;

/// GitLab 17.4 and later send `Idempotency-Key`, the same on every retry.
/// From 14.8 to 17.3 only `X-Gitlab-Event-UUID`, which recursive webhooks
/// share: distinct events under one UUID must not be taken for redeliveries.
/// Before 14.8, neither: the delivery is still accepted, and a resent one
/// (the same body) is still recognised.
#[test]
fn gitlab_delivery_ids_are_unique_per_event_in_every_version() {
    let v = Verifier::new(Vendor::Gitlab, &Secret::new("tok")).unwrap();

    let key = "f5e5f430-f57b-4e6e-9fac-d9128cd7232f";
    let uuid = "13792a34-cac6-4fda-95a8-c58e00a3954e";
    let d = v.verify(&gitlab("tok", &[("idempotency-key", key), ("x-gitlab-event-uuid", uuid)]), PUSH_A, now()).unwrap();
    assert_eq!(d.id, key);

    // 14.8 to 17.3: one UUID, two events.
    let a = v.verify(&gitlab("tok", &[("x-gitlab-event-uuid", uuid)]), PUSH_A, now()).unwrap();
    let b = v.verify(&gitlab("tok", &[("x-gitlab-event-uuid", uuid)]), PUSH_B, now()).unwrap();
    assert_ne!(a.id, b.id, "distinct events under one UUID");
    assert!(a.id.starts_with(uuid), "{}", a.id);
    let again = v.verify(&gitlab("tok", &[("x-gitlab-event-uuid", uuid)]), PUSH_A, now()).unwrap();
    assert_eq!(a.id, again.id, "a resent delivery is the same delivery");

    // Before 14.8: no id header at all.
    let old_a = v.verify(&gitlab("tok", &[]), PUSH_A, now()).unwrap();
    let old_b = v.verify(&gitlab("tok", &[]), PUSH_B, now()).unwrap();
    assert_ne!(old_a.id, old_b.id);
    assert_eq!(old_a.id, v.verify(&gitlab("tok", &[]), PUSH_A, now()).unwrap().id);
    for d in [&a, &b, &old_a, &old_b] {
        assert!(d.id.len() <= 128 && d.id.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c)), "{}", d.id);
    }
    // Still authenticated first.
    let e = v.verify(&gitlab("wrong", &[]), PUSH_A, now()).unwrap_err();
    assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
}

/// GitLab sends its secret token as the `X-Gitlab-Token` header, which carries
/// only visible ASCII: any other token can never match, so it is refused when
/// the integration is set up, not on every delivery after.
#[test]
fn gitlab_tokens_that_cannot_be_sent_are_refused_when_set() {
    for bad in ["pässwörd", "token\u{2028}", " leading", "trailing ", "tab\tinside", "emoji🔑"] {
        let e = Verifier::new(Vendor::Gitlab, &Secret::new(bad)).unwrap_err();
        assert!(matches!(e, SecretError::TokenNotSendable), "{bad:?}: {e}");
        assert!(e.to_string().contains("X-Gitlab-Token"), "{e}");
    }
    Verifier::new(Vendor::Gitlab, &Secret::new("inner space is fine!~")).unwrap();
    // HMAC secrets are keys, not header values: any text does.
    for vendor in [Vendor::Github, Vendor::Gitea, Vendor::Bitbucket] {
        Verifier::new(vendor, &Secret::new("pässwörd")).unwrap();
    }
}

fn form(json: &[u8]) -> Vec<u8> {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    s.append_pair("payload", std::str::from_utf8(json).unwrap());
    s.finish().into_bytes()
}

const GITEA_SECRET: &str = "gitea-secret";

fn gitea_form(sig_over: &[u8], content_type: &str) -> HeaderMap {
    headers(&[
        ("content-type", content_type),
        ("x-gitea-signature", &hex_hmac(GITEA_SECRET, sig_over)),
        ("x-gitea-delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ("x-gitea-event", "push"),
    ])
}

/// Gitea's "POST Content Type: application/x-www-form-urlencoded" sends
/// `payload=<the JSON>` and signs the JSON inside, not the body.
#[test]
fn gitea_form_encoded_deliveries_are_verified_on_the_json_they_carry() {
    let v = Verifier::new(Vendor::Gitea, &Secret::new(GITEA_SECRET)).unwrap();
    let json = br#"{"ref":"refs/heads/main","note":"a+b=c&d %"}"#;
    let body = form(json);
    let d = v.verify(&gitea_form(json, "application/x-www-form-urlencoded"), &body, now()).unwrap();
    assert_eq!(d.document(&body), json);
    assert_eq!(d.id, "f6266f16-1bf3-46a5-9ea4-602e06ead473");
    // A JSON delivery's document is its body.
    let plain = v.verify(&gitea_form(json, "application/json"), json, now()).unwrap();
    assert_eq!(plain.document(json), json);

    // The form body signed instead of the JSON, or the JSON altered: refused.
    let e = v.verify(&gitea_form(&body, "application/x-www-form-urlencoded"), &body, now()).unwrap_err();
    assert!(matches!(e, WebhookError::BadSignature { .. }), "{e}");
    let altered = form(br#"{"ref":"refs/heads/evil","note":"a+b=c&d %"}"#);
    let e = v.verify(&gitea_form(json, "application/x-www-form-urlencoded"), &altered, now()).unwrap_err();
    assert!(matches!(e, WebhookError::BadSignature { .. }), "{e}");
    // A form without exactly one payload field is not Gitea's.
    for odd in [b"payload=1&payload=2".to_vec(), b"other=1".to_vec(), Vec::new()] {
        let e = v.verify(&gitea_form(b"1", "application/x-www-form-urlencoded"), &odd, now()).unwrap_err();
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST, "{}: {e}", String::from_utf8_lossy(&odd));
    }
}

/// GitHub also offers form-encoded bodies, but signs the body itself and
/// Hangar reads only JSON: refused with 415 and what to change, once the
/// signature proved the sender.
#[test]
fn other_form_encoded_deliveries_are_refused_with_what_to_change() {
    let secret = Secret::new("gh");
    let v = Verifier::new(Vendor::Github, &secret).unwrap();
    let body = form(br#"{"zen":"hi"}"#);
    let mut h = vendor_headers(Vendor::Github, &secret, "d-1", "ping", &body, now()).unwrap();
    h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
    let e = v.verify(&h, &body, now()).unwrap_err();
    assert_eq!(e.http_status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(e.to_string().contains("application/json"), "{e}");
    // Unsigned: still 401 first.
    h.remove("x-hub-signature-256");
    assert_eq!(v.verify(&h, &body, now()).unwrap_err().http_status(), StatusCode::UNAUTHORIZED);
}

/// Bitbucket Data Center's "Test connection" button sends `diagnostics:ping`
/// unsigned. It gets a clear answer of its own (nothing is queued), and any
/// other unsigned delivery is still refused.
#[test]
fn an_unsigned_bitbucket_test_connection_gets_an_answer_of_its_own() {
    let v = Verifier::new(Vendor::Bitbucket, &Secret::new("bb")).unwrap();
    let ping = headers(&[("x-event-key", "diagnostics:ping"), ("x-request-id", "r-1")]);
    let e = v.verify(&ping, br#"{"test": true}"#, now()).unwrap_err();
    assert_eq!(e, WebhookError::UnsignedTestConnection { vendor: Vendor::Bitbucket });
    assert_eq!(e.http_status(), StatusCode::OK);
    assert!(e.to_string().contains("nothing was queued"), "{e}");
    let push = headers(&[("x-event-key", "repo:refs_changed"), ("x-request-id", "r-2")]);
    assert!(matches!(v.verify(&push, b"{}", now()), Err(WebhookError::Unsigned { .. })));
}

fn gitea_push(before: &str, after: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "compare_url": "",
        "commits": [{ "id": after, "message": "This is a fake commit", "added": [], "removed": [], "modified": [] }],
        "total_commits": 1,
        "repository": { "full_name": "org/app", "clone_url": "https://git.example.test/org/app.git" },
        "pusher": { "login": "admin" }
    }))
    .unwrap()
}

/// Gitea's "Test Delivery" button: current versions send a push with all-zero
/// `before` and `after`; older ones before = after = the branch head. Neither
/// moves a ref: both are pings, never pushes to plan.
#[test]
fn test_deliveries_are_pings() {
    let zero = "0".repeat(40);
    let head = "bffeb74224043ba2feb48d137756c8a9331c449a";
    for (before, after) in [(zero.as_str(), zero.as_str()), (head, head)] {
        let events = parse(Vendor::Gitea, "push", &gitea_push(before, after)).unwrap();
        assert_eq!(events, vec![Event::Ping], "{before}..{after}");
    }
    // A real push still is one.
    let events = parse(Vendor::Gitea, "push", &gitea_push(&"a".repeat(40), head)).unwrap();
    assert!(matches!(events[..], [Event::Push(_)]), "{events:?}");
}
