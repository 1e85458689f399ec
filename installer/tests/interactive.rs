//! The interactive path through a real pseudo-terminal: the actual dialoguer
//! prompts are answered by typing, wrong answers (a word for a port, a weak
//! password, a confirmation that differs) are refused on the spot and asked
//! again, and the installation that follows reaches ready.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, IGNORE_DISK, Site, bundle, check, installer};
use expectrl::{Eof, Session};

const ENTER: &str = "\r";
const DOWN: &str = "\x1b[B";

/// Waits for `prompt`, types `typed` and Enter.
fn step(s: &mut Session, prompt: &str, typed: &str) {
    s.expect(prompt).unwrap_or_else(|e| panic!("waiting for {prompt:?}: {e}"));
    s.send(typed).unwrap();
    s.send(ENTER).unwrap();
}

#[test]
fn the_prompts_on_a_terminal_install_the_appliance() {
    let built = bundle();
    let site = Site::new("install-tty", &built);
    let mut cmd = Command::new(installer());
    cmd.arg("--prefix").arg(&site.prefix).arg("--trust").arg(&site.trust).args(IGNORE_DISK).env("TERM", "xterm").env_remove("NO_COLOR");
    let mut s = Session::spawn(cmd).expect("spawn the installer on a pseudo-terminal");
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    let p = site.ports;

    s.expect("privileges").unwrap();
    step(&mut s, "Appliance bundle file", &built.bundle.display().to_string());
    s.expect("signed by").unwrap();
    step(&mut s, "Host name workers and browsers use", "localhost");
    step(&mut s, "IP addresses for the certificates", "");
    step(&mut s, "Address the services listen on", "127.0.0.1");
    // The object store: the first item, the bundled Garage.
    s.expect("Object store").unwrap();
    s.expect("garage").unwrap();
    s.send(ENTER).unwrap();
    // The database: the first item, the bundled PostgreSQL.
    s.expect("the bundled one, on this host").unwrap();
    s.send(ENTER).unwrap();
    // A word is not a port: refused, asked again.
    step(&mut s, "HTTPS port", "https");
    s.expect("is not a port").unwrap();
    s.send("\x7f".repeat(8)).unwrap();
    s.send(p.server.to_string()).unwrap();
    s.send(ENTER).unwrap();
    step(&mut s, "MQTT broker port", &p.broker.to_string());
    step(&mut s, "PostgreSQL port", &p.database.to_string());
    step(&mut s, "Object store port", &p.objects.to_string());
    step(&mut s, "Garage's S3 port", &p.garage_s3.to_string());
    step(&mut s, "Garage's RPC port", &p.garage_rpc.to_string());
    step(&mut s, "Garage's admin port", &p.garage_admin.to_string());
    step(&mut s, "Data directory", "");
    step(&mut s, "Administrator e-mail", ADMIN_EMAIL);
    // Too weak: refused, asked again; then two entries that differ.
    step(&mut s, "Administrator password", "short");
    s.expect("use at least 12 characters").unwrap();
    step(&mut s, "Administrator password", ADMIN_PASSWORD);
    step(&mut s, "Repeat it", "Something-Else-1234");
    s.expect("the two entries differ").unwrap();
    step(&mut s, "Administrator password", ADMIN_PASSWORD);
    step(&mut s, "Repeat it", ADMIN_PASSWORD);
    // Generate the console certificate (the first item).
    s.expect("Console TLS certificate").unwrap();
    s.send(DOWN).unwrap();
    s.send("\x1b[A").unwrap();
    s.send(ENTER).unwrap();
    // Backups: a cron expression that is not one is refused; the defaults kept.
    step(&mut s, "Scheduled backups", "every night");
    s.expect("is not a cron expression").unwrap();
    s.send("\x7f".repeat(20)).unwrap();
    s.send(ENTER).unwrap();
    step(&mut s, "Backups to keep", "");
    s.expect("Summary").unwrap();
    s.expect(format!("server {}", p.server)).unwrap();
    s.expect("0 3 * * *").unwrap();
    s.expect("Install with these settings").unwrap();
    s.send("y").unwrap();

    s.set_expect_timeout(Some(Duration::from_secs(300)));
    s.expect("is ready").unwrap_or_else(|e| panic!("the install did not finish: {e}"));
    s.expect(Eof).unwrap();
    let status = s.wait().unwrap();
    assert!(matches!(status, expectrl::WaitStatus::Exited(_, 0)), "{status:?}");

    let out = check("status", site.command(&["status"]).output().unwrap());
    assert!(out.contains("READY") && !out.contains("NOT READY"), "{out}");
    let config = std::fs::read_to_string(site.path("etc/hangar/hangar.toml")).unwrap();
    assert!(config.contains(&format!("listen = \"127.0.0.1:{}\"", p.server)), "{config}");
    let backups = std::fs::read_to_string(site.path("etc/hangar/backup.toml")).unwrap();
    assert!(backups.contains("schedule = \"0 3 * * *\"") && backups.contains("retention = 7"), "{backups}");
}

/// The external PostgreSQL on a terminal: no local database port is asked; a
/// refused connection (a wrong password) is said and the three questions are
/// asked again; no backup schedule is asked; the summary names the server.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_an_external_postgresql_refused_is_asked_again() {
    let built = bundle();
    let pg = hangar_testkit::pg::PgServer::start().await;
    let site = Site::new("install-tty-external-db", &built);
    let mut cmd = Command::new(installer());
    cmd.arg("--prefix").arg(&site.prefix).arg("--trust").arg(&site.trust).args(IGNORE_DISK).env("TERM", "xterm").env_remove("NO_COLOR");
    let mut s = Session::spawn(cmd).expect("spawn the installer on a pseudo-terminal");
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    let p = site.ports;
    let url = format!("postgres://hangar@127.0.0.1:{}/hangar", pg.port);

    step(&mut s, "Appliance bundle file", &built.bundle.display().to_string());
    step(&mut s, "Host name workers and browsers use", "localhost");
    step(&mut s, "IP addresses for the certificates", "");
    step(&mut s, "Address the services listen on", "127.0.0.1");
    s.expect("garage").unwrap();
    s.send(ENTER).unwrap();
    // The database: the second item.
    s.expect("an external PostgreSQL server").unwrap();
    s.send(DOWN).unwrap();
    s.send(ENTER).unwrap();
    step(&mut s, "HTTPS port", &p.server.to_string());
    step(&mut s, "MQTT broker port", &p.broker.to_string());
    // No PostgreSQL port: the next question is the object store's.
    step(&mut s, "Object store port", &p.objects.to_string());
    step(&mut s, "Garage's S3 port", &p.garage_s3.to_string());
    step(&mut s, "Garage's RPC port", &p.garage_rpc.to_string());
    step(&mut s, "Garage's admin port", &p.garage_admin.to_string());
    step(&mut s, "Data directory", "");
    step(&mut s, "Administrator e-mail", ADMIN_EMAIL);
    step(&mut s, "Administrator password", ADMIN_PASSWORD);
    step(&mut s, "Repeat it", ADMIN_PASSWORD);
    // A password in the URL is refused on the spot.
    step(&mut s, "External PostgreSQL URL", &format!("postgres://hangar:pw@127.0.0.1:{}/hangar", pg.port));
    s.expect("give it as `database_password`").unwrap();
    s.send("\x7f".repeat(80)).unwrap();
    s.send(&url).unwrap();
    s.send(ENTER).unwrap();
    step(&mut s, "Password of that role", "Not-The-Role-Password-1");
    step(&mut s, "Repeat it", "Not-The-Role-Password-1");
    step(&mut s, "CA certificate that signs", &pg.ca_path().display().to_string());
    s.expect("password authentication failed for user \"hangar\"").unwrap();
    // Asked again, answered right.
    step(&mut s, "External PostgreSQL URL", &url);
    step(&mut s, "Password of that role", pg.app_password());
    step(&mut s, "Repeat it", pg.app_password());
    step(&mut s, "CA certificate that signs", &pg.ca_path().display().to_string());
    s.expect("Console TLS certificate").unwrap();
    s.send(DOWN).unwrap();
    s.send("\x1b[A").unwrap();
    s.send(ENTER).unwrap();
    s.expect("Summary").unwrap();
    s.expect(format!("external hangar@127.0.0.1:{}/hangar", pg.port)).unwrap();
    s.expect("backups         none scheduled").unwrap();
    s.expect("Install with these settings").unwrap();
    s.send("n").unwrap();
    s.expect("not confirmed; nothing was changed").unwrap();
    s.expect(Eof).unwrap();
    let status = s.wait().unwrap();
    assert!(matches!(status, expectrl::WaitStatus::Exited(_, 1)), "{status:?}");
    assert_eq!(site.files(), Vec::<String>::new());
}
