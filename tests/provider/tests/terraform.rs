//! The test provider under stock Terraform 1.0.3, installed from a
//! filesystem mirror (no network): real files and directories created,
//! changed in place, found changed or removed outside Terraform by a
//! refresh-only plan, imported, destroyed; bad configurations refused with
//! one clear line each.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hangar_testkit::{TestDir, provider, terraform};
use serde_json::Value;

/// A Terraform working directory using the provider from a filesystem mirror.
struct Work {
    _files: TestDir,
    dir: PathBuf,
    cli_config: PathBuf,
    /// Where the configurations put their files.
    out: PathBuf,
}

impl Work {
    fn new(label: &str) -> Work {
        let files = TestDir::new(label);
        let mirror = files.subdir("mirror");
        provider::add_to_mirror(&mirror);
        let cli_config = files.path().join("terraform.rc");
        std::fs::write(&cli_config, provider::filesystem_mirror_cli_config(&mirror)).unwrap();
        let dir = files.subdir("work");
        let out = files.subdir("host");
        Work { dir, cli_config, out, _files: files }
    }

    /// Writes `main.tf`: the provider block and `body`, where `@OUT@`
    /// stands for the directory the files go to.
    fn config(&self, body: &str) {
        let text = format!("{}\n{}", provider::required_providers(), body.replace("@OUT@", &self.out.display().to_string()));
        std::fs::write(self.dir.join("main.tf"), text).unwrap();
    }

    /// Runs `terraform args...` with the mirror's CLI configuration, and a
    /// backtrace asked of every Rust program: the provider's diagnostics must
    /// not turn into what Terraform takes for a crash.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(terraform::terraform())
            .args(args)
            .current_dir(&self.dir)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    }

    /// Runs `terraform args...` and expects exit code `code`; returns stdout
    /// and stderr together.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "terraform {}:\n{text}", args.join(" "));
        assert!(!text.contains("TERRAFORM CRASH"), "terraform {}:\n{text}", args.join(" "));
        text
    }

    fn ok(&self, args: &[&str]) -> String {
        self.expect(0, args)
    }

    /// `terraform show -json` of the saved plan `plan`.
    fn plan_json(&self, plan: &str) -> Value {
        serde_json::from_str(&self.ok(&["show", "-json", plan])).unwrap()
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The actions of each resource change of a plan, by address.
fn actions(plan: &Value, key: &str) -> Vec<(String, Vec<String>)> {
    plan[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let acts = c["change"]["actions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
            (c["address"].as_str().unwrap().to_string(), acts)
        })
        .collect()
}

const CONFIG: &str = r#"
resource "hangartest_directory" "site" {
  path = "@OUT@/site"
  mode = "0750"
}

resource "hangartest_file" "greeting" {
  path    = "${hangartest_directory.site.path}/greeting.txt"
  content = "hello\n"
}

data "hangartest_file" "seed" {
  path = "@OUT@/seed.txt"
}

output "seed" {
  value = data.hangartest_file.seed.content
}

output "greeting_sha256" {
  value = hangartest_file.greeting.sha256
}
"#;

#[test]
fn terraform_creates_changes_refreshes_and_destroys_real_files() {
    let w = Work::new("provider-lifecycle");
    let seed = w.out.join("seed.txt");
    std::fs::write(&seed, "planted by the test\n").unwrap();
    w.config(CONFIG);
    let init = w.ok(&["init", "-no-color"]);
    assert!(init.contains(&format!("Installing {}", provider::SOURCE)), "{init}");
    assert!(init.contains(&format!("Installed {} v{}", provider::SOURCE, provider::VERSION)), "{init}");

    // Created: a directory with its mode, a file in it with the default mode.
    w.ok(&["apply", "-auto-approve", "-no-color"]);
    let site = w.out.join("site");
    let greeting = site.join("greeting.txt");
    assert_eq!(mode_of(&site), 0o750);
    assert_eq!(std::fs::read_to_string(&greeting).unwrap(), "hello\n");
    assert_eq!(mode_of(&greeting), 0o644);
    let outputs: Value = serde_json::from_str(&w.ok(&["output", "-json"])).unwrap();
    assert_eq!(outputs["seed"]["value"], "planted by the test\n", "the data source read the file");
    assert_eq!(
        outputs["greeting_sha256"]["value"],
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
        "SHA-256 of \"hello\\n\""
    );
    w.expect(0, &["plan", "-detailed-exitcode", "-no-color"]);

    // Content and mode change in place: the same file, never replaced.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&greeting).unwrap());
    w.config(&CONFIG.replace("content = \"hello\\n\"", "content = \"good morning\\n\"\n  mode    = \"0600\""));
    w.expect(2, &["plan", "-detailed-exitcode", "-no-color", "-out=change.plan"]);
    let plan = w.plan_json("change.plan");
    let changes = actions(&plan, "resource_changes");
    assert!(changes.contains(&("hangartest_file.greeting".into(), vec!["update".into()])), "{changes:?}");
    w.ok(&["apply", "-no-color", "change.plan"]);
    assert_eq!(std::fs::read_to_string(&greeting).unwrap(), "good morning\n");
    assert_eq!(mode_of(&greeting), 0o600);
    // A change of mode alone keeps the very inode.
    w.config(&CONFIG.replace("content = \"hello\\n\"", "content = \"good morning\\n\"\n  mode    = \"0640\""));
    let rewritten = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&greeting).unwrap());
    w.ok(&["apply", "-auto-approve", "-no-color"]);
    assert_eq!(mode_of(&greeting), 0o640);
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&greeting).unwrap()), rewritten);
    assert_ne!(rewritten, inode, "new content is written beside the file and renamed over it");

    // Changed outside Terraform: a refresh-only plan says so, and names it.
    std::fs::write(&greeting, "edited by hand\n").unwrap();
    std::fs::set_permissions(&greeting, std::fs::Permissions::from_mode(0o666)).unwrap();
    let text = w.expect(2, &["plan", "-refresh-only", "-detailed-exitcode", "-no-color", "-out=drift.plan"]);
    assert!(text.contains("Objects have changed outside of Terraform"), "{text}");
    assert!(text.contains("# hangartest_file.greeting has been changed"), "{text}");
    let plan = w.plan_json("drift.plan");
    let drift = actions(&plan, "resource_drift");
    assert_eq!(drift, [("hangartest_file.greeting".to_string(), vec!["update".to_string()])]);
    let after = &plan["resource_drift"][0]["change"]["after"];
    assert_eq!(after["content"], "edited by hand\n");
    assert_eq!(after["mode"], "0666");
    assert_eq!(actions(&plan, "resource_changes").iter().filter(|(_, a)| a != &["no-op"]).count(), 0, "refresh-only changes nothing");
    // An ordinary plan puts it back.
    w.ok(&["apply", "-auto-approve", "-no-color"]);
    assert_eq!(std::fs::read_to_string(&greeting).unwrap(), "good morning\n");
    assert_eq!(mode_of(&greeting), 0o640);
    w.expect(0, &["plan", "-refresh-only", "-detailed-exitcode", "-no-color"]);

    // Removed outside Terraform: deleted, says the refresh; created again by an apply.
    std::fs::remove_file(&greeting).unwrap();
    let text = w.expect(2, &["plan", "-refresh-only", "-detailed-exitcode", "-no-color"]);
    assert!(text.contains("# hangartest_file.greeting has been deleted"), "{text}");
    let text = w.ok(&["apply", "-auto-approve", "-no-color"]);
    assert!(text.contains("1 added, 0 changed, 0 destroyed"), "{text}");
    assert_eq!(std::fs::read_to_string(&greeting).unwrap(), "good morning\n");

    // Destroyed: the file, then its directory; the data source's file is not theirs.
    w.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(!greeting.exists() && !site.exists());
    assert!(seed.exists());
}

#[test]
fn existing_files_are_imported_by_path_and_never_overwritten() {
    let w = Work::new("provider-import");
    let path = w.out.join("made-by-hand.conf");
    std::fs::write(&path, "key = value\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    w.config(
        r#"
resource "hangartest_file" "conf" {
  path    = "@OUT@/made-by-hand.conf"
  content = "key = value\n"
  mode    = "0600"
}
"#,
    );
    w.ok(&["init", "-no-color"]);

    // Creating over an existing file fails, saying what to do, and leaves it be.
    let text = w.expect(1, &["apply", "-auto-approve", "-no-color"]);
    assert!(text.contains(&format!("Error: {} already exists", path.display())), "{text}");
    assert!(text.contains("terraform import"), "{text}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "key = value\n");

    let p = path.display().to_string();
    let text = w.ok(&["import", "-no-color", "hangartest_file.conf", &p]);
    assert!(text.contains("Import successful"), "{text}");
    w.expect(0, &["plan", "-detailed-exitcode", "-no-color"]);
    let state: Value = serde_json::from_str(&w.ok(&["show", "-json"])).unwrap();
    let attrs = &state["values"]["root_module"]["resources"][0]["values"];
    assert_eq!(attrs["id"], p.as_str());
    assert_eq!(attrs["mode"], "0600");

    // What cannot be imported says why.
    w.ok(&["state", "rm", "hangartest_file.conf"]);
    let text = w.expect(1, &["import", "-no-color", "hangartest_file.conf", "relative/made-by-hand.conf"]);
    assert!(text.contains("the path \"relative/made-by-hand.conf\" is relative"), "{text}");
    let missing = w.out.join("nothing-here").display().to_string();
    let text = w.expect(1, &["import", "-no-color", "hangartest_file.conf", &missing]);
    assert!(text.contains(&format!("cannot import a hangartest_file: {missing} does not exist")), "{text}");
}

#[test]
fn bad_configurations_are_refused_with_one_line_each() {
    let w = Work::new("provider-invalid");
    w.config(
        r#"
resource "hangartest_file" "relative" {
  path    = "out/x.txt"
  content = "x"
}

resource "hangartest_file" "short_mode" {
  path    = "@OUT@/a.txt"
  content = "x"
  mode    = "644"
}

resource "hangartest_directory" "setuid" {
  path = "@OUT@/d"
  mode = "4755"
}

resource "hangartest_file" "dotted" {
  path    = "@OUT@/../escape.txt"
  content = "x"
}
"#,
    );
    w.ok(&["init", "-no-color"]);
    let text = w.expect(1, &["plan", "-no-color"]);
    let out = w.out.display().to_string();
    for line in [
        "Error: the path \"out/x.txt\" is relative: give an absolute path".to_string(),
        "Error: the mode \"644\" is not four octal digits such as \"0644\"".to_string(),
        "Error: the mode \"4755\" sets setuid, setgid or sticky bits, which this provider does not manage".to_string(),
        format!("Error: the path \"{out}/../escape.txt\" is not in normal form"),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    // Each names its resource.
    for address in ["hangartest_file.relative", "hangartest_file.short_mode", "hangartest_directory.setuid", "hangartest_file.dotted"] {
        assert!(text.contains(&format!("with {address},")), "{address} not named in:\n{text}");
    }
    assert_eq!(std::fs::read_dir(&w.out).unwrap().count(), 0, "nothing was made");

    // A data source read when planning: the file must be there.
    w.config(
        r#"
data "hangartest_file" "missing" {
  path = "@OUT@/not-there.txt"
}
"#,
    );
    let text = w.expect(1, &["plan", "-no-color"]);
    assert!(text.contains(&format!("Error: {out}/not-there.txt does not exist")), "{text}");
    assert!(text.contains("with data.hangartest_file.missing,"), "{text}");
}

#[test]
fn a_directory_with_files_nobody_declared_is_not_removed() {
    let w = Work::new("provider-dir");
    w.config(
        r#"
resource "hangartest_directory" "d" {
  path = "@OUT@/d"
}
"#,
    );
    w.ok(&["init", "-no-color"]);
    w.ok(&["apply", "-auto-approve", "-no-color"]);
    let d = w.out.join("d");
    assert_eq!(mode_of(&d), 0o755);
    std::fs::write(d.join("stranger.txt"), "x").unwrap();
    let text = w.expect(1, &["destroy", "-auto-approve", "-no-color"]);
    assert!(text.contains(&format!("Error: {} is not empty", d.display())), "{text}");
    assert!(d.join("stranger.txt").exists());
    std::fs::remove_file(d.join("stranger.txt")).unwrap();
    w.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(!d.exists());
}

#[test]
fn the_binary_run_by_hand_says_what_it_is() {
    let bin = hangar_testkit::cargo_bin(provider::BINARY);
    let out = Command::new(&bin).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Terraform starts it"));
    let out = Command::new(&bin).env_remove("TF_PLUGIN_MAGIC_COOKIE").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("it is not run by hand"), "{err}");
}
