//! The `hangar` binary as an operator runs it: `migrate` against a real database,
//! usage errors, and one-line errors for bad configurations.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use hangar_testkit::{PgServer, TestDir};

fn hangar(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("HANGAR_LOG", "warn")
        .output()
        .expect("run hangar")
}

fn write_config(dir: &Path, pg: &PgServer) -> std::path::PathBuf {
    let db = pg.write_config(dir);
    let path = dir.join("hangar.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nhost = \"127.0.0.1\"\nport = {}\nname = \"hangar\"\nuser = \"hangar\"\n\
             password_file = \"{}\"\nca_file = \"{}\"\n",
            pg.port,
            db.password_file.display(),
            db.ca_file.display()
        ),
    )
    .unwrap();
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn migrate_applies_then_reports_up_to_date() {
    let pg = PgServer::start().await;
    let dir = TestDir::new("cli-migrate");
    let config = write_config(dir.path(), &pg);

    let first = hangar(&config, &["migrate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = String::from_utf8_lossy(&first.stdout);
    let expected = format!("applied {} migration(s) to hangar@127.0.0.1:", hangar_db::migrate::known_versions().len());
    assert!(out.starts_with(&expected), "{out}");

    let second = hangar(&config, &["migrate"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(String::from_utf8_lossy(&second.stdout).contains("is up to date"));

    let status = hangar(&config, &["migrate", "--status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("applied"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let help = Command::new(env!("CARGO_BIN_EXE_hangar")).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("migrate"));
    let bad = Command::new(env!("CARGO_BIN_EXE_hangar")).arg("no-such-command").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let bad_flag = Command::new(env!("CARGO_BIN_EXE_hangar")).args(["migrate", "--nope"]).output().unwrap();
    assert_eq!(bad_flag.status.code(), Some(2));
}

#[test]
fn bad_configurations_fail_with_one_line_naming_the_problem() {
    let dir = TestDir::new("cli-badcfg");
    let missing = hangar(&dir.path().join("absent.toml"), &["migrate"]);
    assert_eq!(missing.status.code(), Some(1));
    let e = stderr(&missing);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("absent.toml") && e.contains("No such file"), "{e}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        "[database]\nhost = \"h\"\nname = \"n\"\nuser = \"u\"\npassword_file = \"/p\"\nca_file = \"/c\"\nhots = 1\n",
    )
    .unwrap();
    let o = hangar(&unknown, &["migrate"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("unknown field `hots`") && e.contains("line 7"), "{e}");

    let relative = dir.path().join("relative.toml");
    std::fs::write(
        &relative,
        "[database]\nhost = \"h\"\nname = \"n\"\nuser = \"u\"\npassword_file = \"secrets/db\"\nca_file = \"/c\"\n",
    )
    .unwrap();
    let e = stderr(&hangar(&relative, &["migrate"]));
    assert!(e.contains("database.password_file") && e.contains("absolute"), "{e}");
}

#[tokio::test]
async fn loose_password_file_and_wrong_password_are_refused() {
    let pg = PgServer::start().await;
    let dir = TestDir::new("cli-secrets");
    let config = write_config(dir.path(), &pg);
    let pw = dir.path().join("db.password");

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = hangar(&config, &["migrate"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("db.password") && e.contains("0600"), "{e}");

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&pw, "wrong").unwrap();
    let o = hangar(&config, &["migrate"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("127.0.0.1") && e.contains("password authentication failed"), "{e}");
}
