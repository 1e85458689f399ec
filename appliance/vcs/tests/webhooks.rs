//! Webhook verification for every vendor: the published test vectors, the
//! happy path through `vendor_headers` (what the git server sends), and every way
//! a delivery can be unsigned, wrongly signed, replayed, oversized or malformed,
//! each with the HTTP status the server answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hangar_vcs::{
    MAX_BODY, Secret, SecretError, Vendor, Verifier, WebhookError, check_declared_length, max_body, vendor_headers,
};
use http::{HeaderMap, HeaderValue, StatusCode};

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn now() -> SystemTime {
    SystemTime::now()
}

const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

// ---- GitHub ----

/// GitHub's documented test values ("Validating webhook deliveries"): secret
/// `It's a Secret to Everybody`, payload `Hello, World!`.
#[test]
fn github_published_test_vector() {
    let v = Verifier::new(Vendor::Github, &Secret::new("It's a Secret to Everybody")).unwrap();
    let h = headers(&[
        ("x-hub-signature-256", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-github-event", "push"),
    ]);
    let d = v.verify(&h, b"Hello, World!", now()).unwrap();
    assert_eq!((d.vendor, d.id.as_str(), d.event.as_str()), (Vendor::Github, "72d3162e-cc78-11e3-81ab-4c9367dc0958", "push"));
    // Upper-case hex is still the same signature.
    let h = headers(&[
        ("x-hub-signature-256", "sha256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17"),
        ("x-github-delivery", "1"),
        ("x-github-event", "push"),
    ]);
    v.verify(&h, b"Hello, World!", now()).unwrap();
    // One byte different, or another secret: refused.
    let e = v.verify(&h, b"Hello, World?", now()).unwrap_err();
    assert_eq!(e, WebhookError::BadSignature { vendor: Vendor::Github, header: "x-hub-signature-256" });
    assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
    let other = Verifier::new(Vendor::Github, &Secret::new("It's a secret to everybody")).unwrap();
    assert!(matches!(other.verify(&h, b"Hello, World!", now()), Err(WebhookError::BadSignature { .. })));
}

#[test]
fn github_unsigned_and_malformed_signatures() {
    let secret = Secret::new("s3cret");
    let v = Verifier::new(Vendor::Github, &secret).unwrap();
    let good = vendor_headers(Vendor::Github, &secret, "d-1", "push", BODY, now()).unwrap();
    v.verify(&good, BODY, now()).unwrap();

    let mut h = good.clone();
    h.remove("x-hub-signature-256");
    // The SHA-1 header alone is not accepted.
    h.insert("x-hub-signature", HeaderValue::from_static("sha1=0123456789abcdef0123456789abcdef01234567"));
    let e = v.verify(&h, BODY, now()).unwrap_err();
    assert_eq!(e.to_string(), "github webhook carries no x-hub-signature-256 header, so it cannot be authenticated");
    assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);

    let sig = good["x-hub-signature-256"].to_str().unwrap().to_string();
    for (value, problem) in [
        (sig.trim_start_matches("sha256=").to_string(), "does not start with sha256="),
        (format!("sha1={}", &sig[7..]), "does not start with sha256="),
        (format!("{}00", sig), "is not 64 hexadecimal digits"),
        (sig[..sig.len() - 2].to_string(), "is not 64 hexadecimal digits"),
        (format!("sha256={}", "zz".repeat(32)), "is not 64 hexadecimal digits"),
    ] {
        let mut h = good.clone();
        h.insert("x-hub-signature-256", HeaderValue::from_str(&value).unwrap());
        let e = v.verify(&h, BODY, now()).unwrap_err();
        assert_eq!(e, WebhookError::MalformedHeader { vendor: Vendor::Github, header: "x-hub-signature-256", problem }, "{value}");
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
    }

    // An empty header is no signature.
    let mut h = good.clone();
    h.insert("x-hub-signature-256", HeaderValue::from_static(""));
    assert!(matches!(v.verify(&h, BODY, now()), Err(WebhookError::Unsigned { .. })));

    // Two signature headers: ambiguous, refused even if one is right.
    let mut h = good.clone();
    h.append("x-hub-signature-256", HeaderValue::from_str(&format!("sha256={}", "0".repeat(64))).unwrap());
    let e = v.verify(&h, BODY, now()).unwrap_err();
    assert_eq!(e.to_string(), "github webhook header x-hub-signature-256 is malformed: appears more than once");
}

#[test]
fn authenticity_is_checked_before_anything_else() {
    let v = Verifier::new(Vendor::Github, &Secret::new("s3cret")).unwrap();
    // No delivery id, no event, and a wrong signature: the answer is about the signature.
    let h = headers(&[("x-hub-signature-256", &format!("sha256={}", "a".repeat(64)))]);
    assert!(matches!(v.verify(&h, BODY, now()), Err(WebhookError::BadSignature { .. })));
    // Signed correctly but without id and event: 400, naming the header.
    let mut good = vendor_headers(Vendor::Github, &Secret::new("s3cret"), "d-1", "push", BODY, now()).unwrap();
    good.remove("x-github-delivery");
    let e = v.verify(&good, BODY, now()).unwrap_err();
    assert_eq!(e.to_string(), "github webhook has no x-github-delivery header");
    assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
    good.insert("x-github-delivery", HeaderValue::from_static("d-1"));
    good.remove("x-github-event");
    assert_eq!(v.verify(&good, BODY, now()).unwrap_err(), WebhookError::MissingHeader { vendor: Vendor::Github, header: "x-github-event" });
}

#[test]
fn hostile_ids_and_event_names_are_refused() {
    let secret = Secret::new("s3cret");
    let v = Verifier::new(Vendor::Github, &secret).unwrap();
    for id in ["", "a b", "../../etc", "x;drop table", &"a".repeat(129), "é"] {
        let h = vendor_headers(Vendor::Github, &secret, "ok", "push", BODY, now()).unwrap();
        let mut h = h.clone();
        match HeaderValue::from_bytes(id.as_bytes()) {
            Ok(val) => h.insert("x-github-delivery", val),
            Err(_) => continue,
        };
        let e = v.verify(&h, BODY, now()).unwrap_err();
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST, "{id:?}: {e}");
    }
    for event in ["push\tx", "<script>", &"p".repeat(65), "push;rm"] {
        let mut h = vendor_headers(Vendor::Github, &secret, "ok", "push", BODY, now()).unwrap();
        h.insert("x-github-event", HeaderValue::from_str(event).unwrap());
        let e = v.verify(&h, BODY, now()).unwrap_err();
        assert!(matches!(e, WebhookError::MalformedHeader { header: "x-github-event", .. }), "{event:?}: {e}");
    }
    // Header bytes that are not visible ASCII.
    let mut h = vendor_headers(Vendor::Github, &secret, "ok", "push", BODY, now()).unwrap();
    h.insert("x-github-delivery", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
    let e = v.verify(&h, BODY, now()).unwrap_err();
    assert_eq!(e.to_string(), "github webhook header x-github-delivery is malformed: is not visible ASCII");
}

#[test]
fn oversize_bodies_are_refused_with_413_before_hashing() {
    let secret = Secret::new("s3cret");
    let big = vec![b' '; MAX_BODY + 1];
    for vendor in Vendor::ALL {
        let v = Verifier::new(vendor, &secret).unwrap();
        let limit = max_body(vendor);
        let over = &big[..limit + 1];
        // Correctly signed for the big body: the size alone decides.
        let h = vendor_headers(vendor, &secret, "d-1", "push", over, now()).unwrap();
        let e = v.verify(&h, over, now()).unwrap_err();
        assert_eq!(e, WebhookError::TooLarge { vendor, size: over.len() as u64, limit });
        assert_eq!(e.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(check_declared_length(vendor, over.len() as u64).unwrap_err(), e);
        // Unsigned too: still 413, it is refused before the signature is looked at.
        assert_eq!(v.verify(&HeaderMap::new(), over, now()).unwrap_err(), e);
    }
    check_declared_length(Vendor::Github, MAX_BODY as u64).unwrap();
    let exactly = vec![b' '; MAX_BODY];
    let v = Verifier::new(Vendor::Github, &secret).unwrap();
    let h = vendor_headers(Vendor::Github, &secret, "d-1", "push", &exactly, now()).unwrap();
    v.verify(&h, &exactly, now()).unwrap();
}

// ---- GitLab ----

#[test]
fn gitlab_secret_token() {
    let secret = Secret::new("a-gitlab-token");
    let v = Verifier::new(Vendor::Gitlab, &secret).unwrap();
    let h = headers(&[
        ("x-gitlab-token", "a-gitlab-token"),
        ("x-gitlab-event", "Push Hook"),
        ("idempotency-key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
        ("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
    ]);
    let d = v.verify(&h, BODY, now()).unwrap();
    // The idempotency key survives GitLab's retries.
    assert_eq!((d.id.as_str(), d.event.as_str()), ("f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "Push Hook"));
    let mut older = h.clone();
    older.remove("idempotency-key");
    // Before 17.4 the event UUID is shared by recursive webhooks: a digest of
    // the body tells their events apart (see `as_sent.rs`).
    assert!(v.verify(&older, BODY, now()).unwrap().id.starts_with("13792a34-cac6-4fda-95a8-c58e00a3954e:"));
    older.remove("x-gitlab-event-uuid");
    assert!(v.verify(&older, BODY, now()).unwrap().id.starts_with("body-"));

    for wrong in ["a-gitlab-toke", "a-gitlab-token ", "A-GITLAB-TOKEN", "a-gitlab-tokenx", "x"] {
        let mut h = h.clone();
        h.insert("x-gitlab-token", HeaderValue::from_str(wrong).unwrap());
        // A trailing space is HTTP whitespace, not part of the token.
        if wrong.trim() == "a-gitlab-token" {
            v.verify(&h, BODY, now()).unwrap();
            continue;
        }
        let e = v.verify(&h, BODY, now()).unwrap_err();
        assert_eq!(e, WebhookError::WrongToken { vendor: Vendor::Gitlab, header: "x-gitlab-token" }, "{wrong:?}");
        assert_eq!(e.to_string(), "gitlab webhook token in x-gitlab-token is wrong");
        assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
    }
    let mut unsigned = h.clone();
    unsigned.remove("x-gitlab-token");
    assert_eq!(v.verify(&unsigned, BODY, now()).unwrap_err().http_status(), StatusCode::UNAUTHORIZED);
}

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: u64 = 1614265330;
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn signed(sig: &str, ts: &str) -> HeaderMap {
    headers(&[
        ("webhook-id", SW_ID),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
        ("x-gitlab-event", "Push Hook"),
    ])
}

/// GitLab's signing tokens follow the Standard Webhooks specification, whose
/// published test vector is this secret, id, timestamp, body and signature.
#[test]
fn gitlab_signed_deliveries_match_the_standard_webhooks_vector() {
    let v = Verifier::new(Vendor::Gitlab, &Secret::new(SW_SECRET)).unwrap();
    let d = v.verify(&signed(SW_SIG, "1614265330"), SW_BODY, at(SW_TS)).unwrap();
    assert_eq!((d.id.as_str(), d.event.as_str()), (SW_ID, "Push Hook"));
    // During secret rotation several signatures are sent; one good one is enough,
    // and asymmetric (v1a) entries are not ours to check.
    let rotated = format!("v1,{} v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5Bdq== {SW_SIG}", "A".repeat(44));
    v.verify(&signed(&rotated, "1614265330"), SW_BODY, at(SW_TS)).unwrap();
    // Same signature, another body, id or timestamp: refused.
    let e = v.verify(&signed(SW_SIG, "1614265330"), br#"{"test": 2432232315}"#, at(SW_TS)).unwrap_err();
    assert_eq!(e, WebhookError::BadSignature { vendor: Vendor::Gitlab, header: "webhook-signature" });
    let e = v.verify(&signed(SW_SIG, "1614265331"), SW_BODY, at(SW_TS)).unwrap_err();
    assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
    let mut other_id = signed(SW_SIG, "1614265330");
    other_id.insert("webhook-id", HeaderValue::from_static("msg_other"));
    assert!(matches!(v.verify(&other_id, SW_BODY, at(SW_TS)), Err(WebhookError::BadSignature { .. })));
    // A token-only delivery to a signing integration is unsigned: no downgrade.
    let token_only = headers(&[("x-gitlab-token", SW_SECRET), ("x-gitlab-event", "Push Hook"), ("idempotency-key", "k")]);
    let e = v.verify(&token_only, SW_BODY, at(SW_TS)).unwrap_err();
    assert_eq!(e, WebhookError::Unsigned { vendor: Vendor::Gitlab, header: "webhook-signature" });
}

#[test]
fn gitlab_timestamps_more_than_five_minutes_off_are_replays() {
    let v = Verifier::new(Vendor::Gitlab, &Secret::new(SW_SECRET)).unwrap();
    let h = signed(SW_SIG, "1614265330");
    for skew in [-300i64, -1, 0, 1, 300] {
        let clock = at((SW_TS as i64 - skew) as u64);
        v.verify(&h, SW_BODY, clock).unwrap_or_else(|e| panic!("skew {skew}: {e}"));
    }
    for skew in [-301i64, 301, 86_400, -86_400] {
        let clock = at((SW_TS as i64 - skew) as u64);
        let e = v.verify(&h, SW_BODY, clock).unwrap_err();
        assert_eq!(e, WebhookError::StaleTimestamp { vendor: Vendor::Gitlab, timestamp: SW_TS, skew_secs: skew });
        assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
    }
    let e = v.verify(&h, SW_BODY, at(SW_TS + 301)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "gitlab webhook timestamp 1614265330 is -301 s from the appliance's clock (at most 300 s allowed): a replay, or a clock out of sync"
    );
}

#[test]
fn gitlab_signed_headers_malformed_or_missing() {
    let v = Verifier::new(Vendor::Gitlab, &Secret::new(SW_SECRET)).unwrap();
    for ts in ["", "-5", "1614265330.0", "1e9", "9999999999999", " 1614265330x"] {
        let e = v.verify(&signed(SW_SIG, ts), SW_BODY, at(SW_TS)).unwrap_err();
        assert_eq!(
            e,
            WebhookError::MalformedHeader { vendor: Vendor::Gitlab, header: "webhook-timestamp", problem: "is not a Unix time in seconds" },
            "{ts:?}"
        );
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
    }
    let mut no_ts = signed(SW_SIG, "1614265330");
    no_ts.remove("webhook-timestamp");
    assert_eq!(
        v.verify(&no_ts, SW_BODY, at(SW_TS)).unwrap_err(),
        WebhookError::MissingHeader { vendor: Vendor::Gitlab, header: "webhook-timestamp" }
    );
    for sig in ["v2,abc", "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "v1,***", "v1"] {
        let e = v.verify(&signed(sig, "1614265330"), SW_BODY, at(SW_TS)).unwrap_err();
        assert_eq!(
            e,
            WebhookError::MalformedHeader { vendor: Vendor::Gitlab, header: "webhook-signature", problem: "holds no v1,<base64> signature" },
            "{sig}"
        );
    }
    let many = [SW_SIG; 9].join(" ");
    let e = v.verify(&signed(&many, "1614265330"), SW_BODY, at(SW_TS)).unwrap_err();
    assert!(matches!(e, WebhookError::MalformedHeader { problem: "holds more than 8 signatures", .. }), "{e}");
    let mut no_id = signed(SW_SIG, "1614265330");
    no_id.remove("webhook-id");
    assert_eq!(v.verify(&no_id, SW_BODY, at(SW_TS)).unwrap_err(), WebhookError::MissingHeader { vendor: Vendor::Gitlab, header: "webhook-id" });
}

#[test]
fn gitlab_signing_tokens_are_checked_when_the_integration_is_made() {
    for (bad, want) in [
        ("whsec_!!!", SecretError::SigningTokenNotBase64),
        ("whsec_c2hvcnQ=", SecretError::SigningTokenLength { len: 5 }),
        ("whsec_", SecretError::SigningTokenLength { len: 0 }),
    ] {
        assert_eq!(Verifier::new(Vendor::Gitlab, &Secret::new(bad)).unwrap_err(), want, "{bad}");
    }
    for vendor in Vendor::ALL {
        let e = Verifier::new(vendor, &Secret::new("")).unwrap_err();
        assert_eq!(e, SecretError::Empty { vendor });
    }
}

#[test]
fn gitlab_round_trip_through_vendor_headers() {
    for secret in [SW_SECRET, "plain-token"] {
        let secret = Secret::new(secret);
        let v = Verifier::new(Vendor::Gitlab, &secret).unwrap();
        let h = vendor_headers(Vendor::Gitlab, &secret, "4b2f4e0c-1c44-4a14-bb0a-bd3c3f0c2f1e", "Merge Request Hook", BODY, now()).unwrap();
        let d = v.verify(&h, BODY, now()).unwrap();
        assert_eq!(d.event, "Merge Request Hook");
        assert_eq!(d.id, "4b2f4e0c-1c44-4a14-bb0a-bd3c3f0c2f1e");
    }
}

// ---- Gitea / Forgejo ----

#[test]
fn gitea_and_forgejo_signatures() {
    let secret = Secret::new("gitea-secret");
    let v = Verifier::new(Vendor::Gitea, &secret).unwrap();
    let gitea = vendor_headers(Vendor::Gitea, &secret, "f6266f16-1bf3-46a5-9ea4-602e06ead473", "push", BODY, now()).unwrap();
    let d = v.verify(&gitea, BODY, now()).unwrap();
    assert_eq!((d.id.as_str(), d.event.as_str()), ("f6266f16-1bf3-46a5-9ea4-602e06ead473", "push"));
    let sig = gitea["x-gitea-signature"].to_str().unwrap().to_string();
    assert_eq!(sig.len(), 64, "bare hex, no prefix");

    // Forgejo: its own headers win over the Gitea ones it also sends.
    let forgejo = headers(&[
        ("x-forgejo-signature", &sig),
        ("x-forgejo-delivery", "fj-1"),
        ("x-forgejo-event", "push"),
        ("x-gitea-signature", &"0".repeat(64)),
        ("x-gitea-delivery", "gt-1"),
        ("x-gitea-event", "push"),
    ]);
    assert_eq!(v.verify(&forgejo, BODY, now()).unwrap().id, "fj-1");
    let mut forged = forgejo.clone();
    forged.insert("x-forgejo-signature", HeaderValue::from_str(&"0".repeat(64)).unwrap());
    forged.insert("x-gitea-signature", HeaderValue::from_str(&sig).unwrap());
    let e = v.verify(&forged, BODY, now()).unwrap_err();
    assert_eq!(e, WebhookError::BadSignature { vendor: Vendor::Gitea, header: "x-forgejo-signature" });

    let mut prefixed = gitea.clone();
    prefixed.insert("x-gitea-signature", HeaderValue::from_str(&format!("sha256={sig}")).unwrap());
    assert!(matches!(v.verify(&prefixed, BODY, now()), Err(WebhookError::MalformedHeader { .. })));
    let mut none = gitea.clone();
    none.remove("x-gitea-signature");
    assert_eq!(v.verify(&none, BODY, now()).unwrap_err(), WebhookError::Unsigned { vendor: Vendor::Gitea, header: "x-gitea-signature" });
}

// ---- Bitbucket Data Center ----

#[test]
fn bitbucket_signatures() {
    let secret = Secret::new("bitbucket-secret");
    let v = Verifier::new(Vendor::Bitbucket, &secret).unwrap();
    let h = vendor_headers(Vendor::Bitbucket, &secret, "2b0a5a6a-6f58-4a1b-9d35-0d4f1e0a5f6c", "repo:refs_changed", BODY, now()).unwrap();
    let d = v.verify(&h, BODY, now()).unwrap();
    assert_eq!((d.id.as_str(), d.event.as_str()), ("2b0a5a6a-6f58-4a1b-9d35-0d4f1e0a5f6c", "repo:refs_changed"));
    let sig = h["x-hub-signature"].to_str().unwrap().to_string();
    assert!(sig.starts_with("sha256="));
    let mut sha1 = h.clone();
    sha1.insert("x-hub-signature", HeaderValue::from_str(&sig.replace("sha256=", "sha1=")).unwrap());
    let e = v.verify(&sha1, BODY, now()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bitbucket webhook header x-hub-signature is malformed: does not start with sha256= (only HMAC-SHA256 is accepted)"
    );
    let mut no_id = h.clone();
    no_id.remove("x-request-id");
    assert_eq!(v.verify(&no_id, BODY, now()).unwrap_err(), WebhookError::MissingHeader { vendor: Vendor::Bitbucket, header: "x-request-id" });
    // GitHub's header name is not Bitbucket's.
    let mut github_style = h.clone();
    github_style.remove("x-hub-signature");
    github_style.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
    assert!(matches!(v.verify(&github_style, BODY, now()), Err(WebhookError::Unsigned { .. })));
}

// ---- across vendors ----

#[test]
fn a_delivery_signed_for_one_integration_fails_for_another() {
    let a = Secret::new("integration-a");
    let b = Secret::new("integration-b");
    for vendor in Vendor::ALL {
        let h = vendor_headers(vendor, &a, "d-1", "push", BODY, now()).unwrap();
        let e = Verifier::new(vendor, &b).unwrap().verify(&h, BODY, now()).unwrap_err();
        assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED, "{vendor}: {e}");
        assert_eq!(e.vendor(), vendor);
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    for (vendor, secret) in [(Vendor::Github, "topsecret-gh"), (Vendor::Gitlab, "topsecret-gl"), (Vendor::Gitlab, SW_SECRET)] {
        let v = Verifier::new(vendor, &Secret::new(secret)).unwrap();
        let shown = format!("{v:?}");
        assert!(!shown.contains(secret) && !shown.contains("MfKQ9r8"), "{shown}");
    }
}

#[test]
fn every_error_maps_to_its_status() {
    let g = Vendor::Github;
    let cases = [
        (WebhookError::TooLarge { vendor: g, size: 1, limit: 0 }, 413),
        (WebhookError::FormEncoded { vendor: g }, 415),
        (WebhookError::MalformedForm { vendor: g, problem: "p" }, 400),
        (WebhookError::UnsignedTestConnection { vendor: Vendor::Bitbucket }, 200),
        (WebhookError::Unsigned { vendor: g, header: "h" }, 401),
        (WebhookError::MissingHeader { vendor: g, header: "h" }, 400),
        (WebhookError::MalformedHeader { vendor: g, header: "h", problem: "p" }, 400),
        (WebhookError::BadSignature { vendor: g, header: "h" }, 401),
        (WebhookError::WrongToken { vendor: g, header: "h" }, 401),
        (WebhookError::StaleTimestamp { vendor: g, timestamp: 1, skew_secs: 999 }, 401),
    ];
    for (e, status) in cases {
        assert_eq!(e.http_status().as_u16(), status, "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}
