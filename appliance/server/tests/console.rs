//! The web console over HTTP against a real appliance: sign-in with the
//! `__Host-` cookie, the security headers, CSRF and `Origin` checks, roles,
//! escaping of what users typed, secrets absent from pages, and assets.

mod common;

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, Appliance, CREATE_STACK, stack_input};
use reqwest::header::{self, HeaderMap};
use serde_json::json;

/// A browser-like client: no redirects followed, cookies kept by hand.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(app: &Appliance) -> Browser {
        let cert = reqwest::Certificate::from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Browser { client, base: app.url(""), cookie: None }
    }

    async fn get(&self, path: &str) -> (u16, HeaderMap, String) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, c);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.headers().clone(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, origin: Option<&str>, form: &[(&str, &str)]) -> (u16, HeaderMap, String) {
        let mut req = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, c);
        }
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.headers().clone(), r.text().await.unwrap())
    }

    fn origin(&self) -> String {
        self.base.trim_end_matches('/').to_string()
    }

    /// Signs in through the form; keeps the session cookie.
    async fn sign_in(&mut self, email: &str, password: &str) {
        let origin = self.origin();
        let (status, headers, body) = self.post("/login", Some(&origin), &[("email", email), ("password", password), ("next", "/stacks")]).await;
        assert_eq!(status, 303, "{body}");
        let set = headers[header::SET_COOKIE].to_str().unwrap().to_string();
        for want in ["__Host-hangar_session=hss_", "Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(want), "{set} lacks {want}");
        }
        self.cookie = Some(set.split(';').next().unwrap().to_string());
    }

    /// The CSRF token in a page's forms.
    async fn csrf(&self) -> String {
        let (_, _, body) = self.get("/stacks").await;
        let at = body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token");
        body[at + 19..].split('"').next().unwrap().to_string()
    }
}

fn security_headers(h: &HeaderMap) {
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"), "{csp}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "same-origin");
}

#[tokio::test]
async fn sign_in_headers_and_the_checks_on_every_form() {
    hangar_testkit::init();
    let app = Appliance::start().await;
    let mut b = Browser::new(&app);

    // Signed out: every page leads to the login form, which carries the headers.
    let (status, headers, _) = b.get("/stacks?q=x").await;
    assert_eq!(status, 303);
    assert_eq!(headers[header::LOCATION], "/login?next=%2Fstacks");
    let (status, headers, body) = b.get("/login").await;
    assert_eq!(status, 200);
    security_headers(&headers);
    assert!(body.contains("Sign in to Hangar"));
    assert!(!body.contains("style=") && !body.contains("<script>"), "nothing inline: {body}");
    // The API keeps answering JSON, with the same headers.
    let (status, headers, body) = b.get("/nothing-here").await;
    assert_eq!(status, 404);
    security_headers(&headers);
    assert!(body.contains("NOT_FOUND"), "{body}");

    // A login form posted from elsewhere, or with no Origin, is refused.
    let form = [("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)];
    assert_eq!(b.post("/login", Some("https://evil.example"), &form).await.0, 403);
    assert_eq!(b.post("/login", None, &form).await.0, 403);
    // A wrong password is one clear line.
    let origin = b.origin();
    let (status, _, body) = b.post("/login", Some(&origin), &[("email", ADMIN_EMAIL), ("password", "wrong")]).await;
    assert_eq!(status, 401);
    assert!(body.contains("The email address or the password is wrong."), "{body}");

    b.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (status, headers, body) = b.get("/stacks").await;
    assert_eq!(status, 200, "{body}");
    security_headers(&headers);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(body.contains("No stacks yet"), "the empty state: {body}");

    // Every state-changing form needs the session's token and this origin.
    let token = b.csrf().await;
    let (status, _, body) = b.post("/contexts", Some(&origin), &[("slug", "c1"), ("name", "C1")]).await;
    assert_eq!(status, 403, "no token: {body}");
    let (status, _, _) = b.post("/contexts", Some(&origin), &[("slug", "c1"), ("name", "C1"), ("csrf", "0000")]).await;
    assert_eq!(status, 403, "a wrong token");
    let (status, _, _) = b.post("/contexts", Some("https://evil.example"), &[("slug", "c1"), ("name", "C1"), ("csrf", &token)]).await;
    assert_eq!(status, 403, "another origin");
    let (status, headers, _) = b.post("/contexts", Some(&origin), &[("slug", "c1"), ("name", "C1"), ("csrf", &token)]).await;
    assert_eq!(status, 303);
    assert_eq!(headers[header::LOCATION], "/contexts/c1");

    // Assets: hashed names, a year in caches; an unknown hash is not found.
    let (_, _, page) = b.get("/stacks").await;
    let css = page.split("href=\"").find_map(|p| p.split('"').next().filter(|u| u.ends_with(".css"))).unwrap().to_string();
    let (status, headers, _) = b.get(&css).await;
    assert_eq!(status, 200);
    assert!(headers[header::CACHE_CONTROL].to_str().unwrap().contains("immutable"));
    assert_eq!(b.get("/assets/console.0000000000.css").await.0, 404);

    // Signing out ends the session for the API too.
    let session = b.cookie.clone().unwrap();
    let (status, headers, _) = b.post("/logout", Some(&origin), &[("csrf", &token)]).await;
    assert_eq!(status, 303);
    assert!(headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let bearer = session.split('=').nth(1).unwrap();
    let (_, body) = app.gql(Some(bearer), "{ me { email } }", json!({})).await;
    assert!(body["errors"].to_string().contains("UNAUTHENTICATED") || body.to_string().contains("invalid"), "{body}");
    assert_eq!(b.get("/stacks").await.0, 303);
}

#[tokio::test]
async fn roles_escaping_and_secrets() {
    hangar_testkit::init();
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let hostile = "<img src=x onerror=alert(1)>";
    let mut input = stack_input("xss", "https://git.example/team/xss.git");
    input["name"] = json!(hostile);
    input["labels"] = json!(["team:net"]);
    app.ok(&admin, CREATE_STACK, json!({ "i": input })).await;
    let secret_value = "s3cr3t-value-that-must-not-leak";
    app.ok(
        &admin,
        "mutation { setStackVariable(stack: \"xss\", name: \"TF_VAR_password\", value: \"s3cr3t-value-that-must-not-leak\", secret: true) { id } }",
        json!({}),
    )
    .await;
    app.ok(&admin, "mutation { setStackVariable(stack: \"xss\", name: \"PLAIN\", value: \"<b>bold</b>\") { id } }", json!({})).await;

    let password = "Quiet-Lantern-0123456789!";
    app.ok(
        &admin,
        "mutation($p: String!) { createUser(email: \"reader@hangar.test\", role: READER, password: $p) { id } }",
        json!({ "p": password }),
    )
    .await;
    let mut b = Browser::new(&app);
    b.sign_in("reader@hangar.test", password).await;

    for path in ["/stacks", "/stacks?q=xss&label=team%3Anet", "/stacks/xss", "/contexts", "/pools", "/account"] {
        let (status, _, body) = b.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(hostile), "{path} shows the name unescaped");
        assert!(!body.contains(secret_value), "{path} shows the secret");
        assert!(!body.contains("<b>bold</b>"), "{path} shows a value unescaped");
    }
    let (_, _, body) = b.get("/stacks/xss").await;
    assert!(body.contains("&#60;img src=x onerror=alert(1)&#62;") || body.contains("&lt;img src=x onerror=alert(1)&gt;"), "{body}");
    assert!(body.contains("secret · set"));
    // A reader has no button that changes anything, and a forged POST is refused.
    assert!(!body.contains(">Trigger a run</button>") && !body.contains(">Delete the stack</button>") && !body.contains("<form method=\"post\" action=\"/stacks/xss"), "{body}");
    let token = b.csrf().await;
    let origin = b.origin();
    let (status, _, body) = b.post("/runs/1/confirm", Some(&origin), &[("csrf", &token)]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("writer role"), "{body}");
    let (status, _, _) = b.post("/stacks/xss/trigger", Some(&origin), &[("csrf", &token)]).await;
    assert_eq!(status, 403);
    // What the role table keeps from readers stays kept in the console too.
    for path in ["/admin", "/admin/audit", "/admin/system", "/vcs"] {
        let (status, _, body) = b.get(path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("needs the admin role"), "{body}");
    }

    // Filters and pagination of the list.
    let (_, _, body) = b.get("/stacks?state=NONE").await;
    assert!(body.contains("/stacks/xss"), "{body}");
    let (_, _, body) = b.get("/stacks?q=nothing-like-it").await;
    assert!(body.contains("No stack matches"), "{body}");
    let (status, _, _) = b.get("/stacks/does-not-exist").await;
    assert_eq!(status, 404);
}
