//! `hangar supervise` with generic children (shell scripts that crash, hang on
//! SIGTERM, fork grandchildren, ignore signals, exit at once): ordering,
//! readiness, restarts, the start limit, stopping whole groups, reaping, reload,
//! logs, systemd notification and privilege dropping.

mod common;

use std::time::{Duration, Instant};

use common::{Sup, alive, children_of, processes_with, wait_gone};
use hangar_supervisor::protocol::State;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn dependants_start_only_after_their_dependencies_are_ready() {
    let mut sup = Sup::new("sv-order");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    let work = sup.shared_dir("work");
    // `base` becomes ready only once it has written its flag, a while after starting.
    let base = sup.script(
        "base.sh",
        &format!("sleep 1\ntouch {w}/base.ready\nexec {sl} 1000", w = work.display()),
    );
    // `app` records whether `base` was ready when `app` started.
    let app = sup.script(
        "app.sh",
        &format!(
            "if [ -e {w}/base.ready ]; then echo yes > {w}/app.saw; else echo no > {w}/app.saw; fi\nexec {sl} 1000",
            w = work.display()
        ),
    );
    sup.write_config(
        None,
        "",
        &format!(
            "[[supervisor.service]]\nname = \"app\"\ncommand = \"{app}\"\ndepends_on = [\"base\"]\n\
             [[supervisor.service]]\nname = \"base\"\ncommand = \"{base}\"\n\
             ready = {{ kind = \"exec\", command = \"/usr/bin/test\", args = [\"-e\", \"{w}/base.ready\"] }}\n",
            app = app.display(),
            base = base.display(),
            w = work.display()
        ),
    );
    sup.start().await;
    // While base is not ready, app waits and says for what.
    let early = sup.status("app").await;
    if sup.status("base").await.state != State::Ready {
        assert_eq!(early.state, State::Waiting, "{early:?}");
        // (Empty only if asked before app's task first ran.)
        assert!(early.detail.is_empty() || early.detail.contains("waiting for base"), "{early:?}");
        assert!(early.pid.is_none());
    }
    sup.wait_state("app", State::Ready, LONG).await;
    assert_eq!(std::fs::read_to_string(work.join("app.saw")).unwrap().trim(), "yes");
    // Status lists dependencies first.
    let names: Vec<String> = sup.statuses().await.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["base", "app"]);
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn crashing_child_backs_off_then_fails_at_the_start_limit_until_an_operator_starts_it() {
    let mut sup = Sup::new("sv-limit");
    let work = sup.shared_dir("work");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    // Exits 1 at once unless the operator has "fixed" it.
    let flaky = sup.script(
        "flaky.sh",
        &format!(
            "echo start >> {w}/starts\nif [ -e {w}/fixed ]; then exec {sl} 1000; fi\necho broken >&2\nexit 1",
            w = work.display()
        ),
    );
    // Exits 0 at once, every time: an exit is a failure whatever its status.
    sup.write_config(
        None,
        "backoff_initial_ms = 200\nbackoff_max_ms = 400\nstart_limit_burst = 4\nstart_limit_interval_secs = 600",
        &format!(
            "[[supervisor.service]]\nname = \"flaky\"\ncommand = \"{}\"\n\
             [[supervisor.service]]\nname = \"quick\"\ncommand = \"/bin/true\"\n",
            flaky.display()
        ),
    );
    sup.start().await;
    let failed = sup.wait_state("flaky", State::Failed, LONG).await;
    assert_eq!(failed.restarts, 3, "{failed:?}");
    assert_eq!(failed.last_exit.unwrap().code, Some(1));
    assert!(failed.detail.contains("hangar ctl start flaky"), "{failed:?}");
    let quick = sup.wait_state("quick", State::Failed, LONG).await;
    assert_eq!(quick.last_exit.unwrap().code, Some(0));

    // Back-off: starts are 200, 400, 400 ms apart. The notes are written just
    // after each fork, so a slow fork under load shortens a gap: 100 ms of slack
    // still tells a back-off (and its doubling) from an immediate restart.
    let log = sup.log("flaky");
    let starts: Vec<chrono::DateTime<chrono::Utc>> = log
        .lines()
        .filter(|l| l.contains("[supervisor] started"))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 4, "{log}");
    for (w, min_ms) in starts.windows(2).zip([200, 400, 400]) {
        assert!((w[1] - w[0]).num_milliseconds() >= min_ms - 100, "starts too close: {starts:?}");
    }
    assert!(log.contains("broken"), "child output is in its log: {log}");

    // FAILED stays failed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(std::fs::read_to_string(work.join("starts")).unwrap().lines().count(), 4);
    let table = sup.ctl(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.lines().any(|l| l.starts_with("flaky") && l.contains("failed")), "{text}");

    // Starting it while still broken: ctl says so and exits 1.
    let out = sup.ctl(&["start", "flaky"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("flaky exited while starting"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Fixed, started by the operator: ready.
    std::fs::write(work.join("fixed"), "").unwrap();
    sup.wait_state("flaky", State::Backoff, LONG).await;
    let out = sup.ctl(&["start", "flaky"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("flaky ready"));
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stop_kills_the_whole_group_and_leaves_no_orphan_or_zombie() {
    let mut sup = Sup::new("sv-stop");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    // Ignores SIGTERM, forks grandchildren in its group (one also ignoring
    // SIGTERM), and one that leaves the group with setsid.
    let stubborn = sup.script(
        "stubborn.sh",
        &format!(
            "trap '' TERM\n\
             sh -c 'trap \"\" TERM; while :; do sleep 1; done; : {m}' &\n\
             {sl} 1000 &\n\
             setsid {sl} 1001 &\n\
             while :; do sleep 1; done\n: {m}"
        ),
    );
    let polite = sup.script("polite.sh", &format!("{sl} 1000 &\nwait\n: {m}"));
    sup.write_config(
        None,
        "",
        &format!(
            "[[supervisor.service]]\nname = \"stubborn\"\ncommand = \"{}\"\nargs = [\"{m}\"]\n\
             [[supervisor.service]]\nname = \"polite\"\ncommand = \"{}\"\nargs = [\"{m}\"]\n",
            stubborn.display(),
            polite.display()
        ),
    );
    sup.start().await;
    let s = sup.wait_state("stubborn", State::Ready, LONG).await;
    let pgid = s.pid.unwrap() as i32;
    hangar_testkit::wait_for("the grandchildren", LONG, || async {
        (processes_with(&m).len() >= 6).then_some(())
    })
    .await;

    let started = Instant::now();
    let out = sup.ctl(&["stop", "stubborn"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() >= Duration::from_secs(2), "SIGKILL came before the stop timeout");
    assert_eq!(sup.status("stubborn").await.state, State::Stopped);
    // Nothing of its group is left, and the escaped process was dealt with as an orphan.
    assert!(!hangar_supervisor_group_alive(pgid), "process group {pgid} survived");
    let log = sup.log("stubborn");
    assert!(log.contains("SIGKILL"), "{log}");
    wait_gone(&format!("{sl}\u{0}1001"), Duration::from_secs(10)).await;

    // The polite one is still running; SIGTERM to the supervisor stops it and exits 0.
    assert_eq!(sup.status("polite").await.state, State::Ready);
    let sup_pid = sup.pid();
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
    assert!(children_of(sup_pid).is_empty());
}

fn hangar_supervisor_group_alive(pgid: i32) -> bool {
    !matches!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[tokio::test]
async fn sigkill_of_each_child_brings_it_back_ready_and_reaps_everything() {
    let mut sup = Sup::new("sv-kill");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    let work = sup.shared_dir("work");
    let svc = |name: &str| {
        sup.script(
            &format!("{name}.sh"),
            &format!("{sl} 1000 &\nsleep 0.2\ntouch {w}/{name}.$$\nwait\n: {m}", w = work.display()),
        )
    };
    let (a, b) = (svc("a"), svc("b"));
    let ready = |name: &str| {
        format!(
            "ready = {{ kind = \"exec\", command = \"/bin/sh\", args = [\"-c\", \"ls {w}/{name}.* >/dev/null 2>&1\"] }}",
            w = work.display()
        )
    };
    sup.write_config(
        None,
        "",
        &format!(
            "[[supervisor.service]]\nname = \"a\"\ncommand = \"{}\"\nargs = [\"{m}\"]\n{}\n\
             [[supervisor.service]]\nname = \"b\"\ncommand = \"{}\"\nargs = [\"{m}\"]\ndepends_on = [\"a\"]\n{}\n",
            a.display(),
            ready("a"),
            b.display(),
            ready("b")
        ),
    );
    sup.start().await;
    sup.wait_state("b", State::Ready, LONG).await;
    for name in ["a", "b"] {
        let before = sup.status(name).await;
        let other = sup.status(if name == "a" { "b" } else { "a" }).await;
        let pid = before.pid.unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let t = Instant::now();
        let after = hangar_testkit::wait_for(&format!("{name} to come back"), LONG, || async {
            let s = sup.status(name).await;
            (s.state == State::Ready && s.pid != before.pid).then_some(s)
        })
        .await;
        eprintln!("{name}: ready again {:?} after SIGKILL", t.elapsed());
        assert_eq!(after.restarts, before.restarts + 1);
        assert_eq!(after.last_exit.unwrap().signal, Some(Signal::SIGKILL as i32));
        // Killing a dependency does not restart its dependant; killing a dependant leaves the dependency.
        assert_eq!(sup.status(&other.name).await.pid, other.pid);
        // The killed child's grandchild went with its group; no zombie under the supervisor.
        assert!(!hangar_supervisor_group_alive(pid));
    }
    let zombies: Vec<_> = children_of(sup.pid()).into_iter().filter(|(_, s)| *s == 'Z').collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sighup_reload_applies_added_removed_and_changed_services_and_keeps_others() {
    let mut sup = Sup::new("sv-reload");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    let svc = |name: &str, arg: &str| {
        format!("[[supervisor.service]]\nname = \"{name}\"\ncommand = \"{sl}\"\nargs = [\"{arg}\"]\n")
    };
    sup.write_config(None, "", &(svc("keep", "1000") + &svc("change", "1000") + &svc("drop", "1000")));
    sup.start().await;
    for n in ["keep", "change", "drop"] {
        sup.wait_state(n, State::Ready, LONG).await;
    }
    let keep = sup.status("keep").await.pid;
    let change = sup.status("change").await.pid;
    let drop_pid = sup.status("drop").await.pid.unwrap() as i32;

    sup.write_config(None, "", &(svc("keep", "1000") + &svc("change", "2000") + &svc("added", "1000")));
    sup.signal(Signal::SIGHUP);
    sup.wait_state("added", State::Ready, LONG).await;
    hangar_testkit::wait_for("the changed service to restart", LONG, || async {
        let s = sup.status("change").await;
        (s.state == State::Ready && s.pid != change).then_some(())
    })
    .await;
    let names: Vec<String> = sup.statuses().await.into_iter().map(|s| s.name).collect();
    assert!(!names.contains(&"drop".to_string()), "{names:?}");
    assert!(!alive(drop_pid), "removed service still running");
    assert_eq!(sup.status("keep").await.pid, keep, "an unchanged service was touched");
    let new_change = sup.status("change").await.pid.unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{new_change}/cmdline")).unwrap();
    assert!(cmdline.contains("2000"), "{cmdline}");

    // A broken configuration: nothing changes, and status says why.
    std::fs::write(&sup.config, "[supervisor\nbroken").unwrap();
    sup.signal(Signal::SIGHUP);
    let reload_error = hangar_testkit::wait_for("the reload error", LONG, || async {
        sup.client().status().await.unwrap().1
    })
    .await;
    assert!(reload_error.contains("hangar.toml"), "{reload_error}");
    assert_eq!(sup.status("keep").await.pid, keep);
    let out = sup.ctl(&["--socket", sup.socket.to_str().unwrap(), "status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("last configuration reload failed"));

    // A configuration that parses but does not validate is refused the same way.
    sup.write_config(None, "", &(svc("keep", "1000") + "[[supervisor.service]]\nname = \"x\"\ncommand = \"/bin/true\"\ndepends_on = [\"nope\"]\n"));
    sup.signal(Signal::SIGHUP);
    hangar_testkit::wait_for("the validation error", LONG, || async {
        sup.client().status().await.unwrap().1.filter(|e| e.contains("nope"))
    })
    .await;
    assert_eq!(sup.status("keep").await.pid, keep);
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn ctl_start_stop_restart_tail_and_their_errors() {
    let mut sup = Sup::new("sv-ctl");
    let m = sup.marker();
    let talker = sup.script("talker.sh", &format!("i=0\nwhile :; do i=$((i+1)); echo line-$i; sleep 0.05; done\n: {m}"));
    sup.write_config(
        None,
        "",
        &format!("[[supervisor.service]]\nname = \"talker\"\ncommand = \"{}\"\nargs = [\"{m}\"]\n", talker.display()),
    );
    sup.start().await;
    let first = sup.wait_state("talker", State::Ready, LONG).await;

    let out = sup.ctl(&["restart", "talker"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = sup.status("talker").await;
    assert_eq!(after.state, State::Ready);
    assert_ne!(after.pid, first.pid);
    assert_eq!(after.restarts, 1);

    let out = sup.ctl(&["stop", "talker"]);
    assert!(out.status.success());
    assert_eq!(sup.status("talker").await.state, State::Stopped);
    assert!(!alive(after.pid.unwrap() as i32));
    let again = sup.ctl(&["stop", "talker"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already stopped"));
    let out = sup.ctl(&["start", "talker"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("talker ready (pid"));

    // tail: the last lines, then following.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = sup.ctl(&["tail", "talker", "-n", "3"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 3, "{text}");
    let mut follow = sup.hangar();
    follow.args(["ctl", "tail", "talker", "-n", "1", "-f"]).stdout(std::process::Stdio::piped());
    let mut child = follow.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let collected = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 65536];
        let mut all = String::new();
        let deadline = Instant::now() + LONG;
        while all.matches("line-").count() < 10 && Instant::now() < deadline {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        all
    })
    .await
    .unwrap();
    assert!(collected.matches("line-").count() >= 10, "{collected}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Errors: one line, exit 1; usage errors exit 2.
    let out = sup.ctl(&["restart", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown service \"nosuch\"") && err.contains("talker"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(sup.ctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(sup.ctl(&["start"]).status.code(), Some(2));
    let help = sup.ctl(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("tail"));

    let json = sup.ctl(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["services"][0]["name"], "talker");
    assert_eq!(doc["services"][0]["state"], "ready");

    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
    // No supervisor: ctl says so in one line.
    let out = sup.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("supervisor not running") && err.contains("control.sock"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn hostile_control_requests_get_errors_and_change_nothing() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut sup = Sup::new("sv-hostile");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    sup.write_config(
        None,
        "",
        &format!("[[supervisor.service]]\nname = \"s\"\ncommand = \"{sl}\"\nargs = [\"1000\"]\n"),
    );
    sup.start().await;
    let s = sup.wait_state("s", State::Ready, LONG).await;

    async fn send(socket: &std::path::Path, bytes: &[u8]) -> serde_json::Value {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (r, mut w) = stream.into_split();
        // The peer may answer and close before everything is written.
        let _ = w.write_all(bytes).await;
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json\n".to_vec(), "not JSON"),
        (b"{\"cmd\":\"status\"}\n".to_vec(), "no protocol version"),
        (b"{\"v\":2,\"cmd\":\"status\"}\n".to_vec(), "unsupported protocol version 2"),
        (b"{\"v\":1,\"cmd\":\"reboot\"}\n".to_vec(), "bad request"),
        (b"{\"v\":1,\"cmd\":\"stop\"}\n".to_vec(), "bad request"),
        (b"{\"v\":1,\"cmd\":\"stop\",\"service\":\"../../etc\"}\n".to_vec(), "unknown service"),
        (vec![b'x'; 70 * 1024], "longer than"),
    ];
    for (bytes, expect) in cases {
        let resp = send(&sup.socket, &bytes).await;
        assert_eq!(resp["ok"], false, "{resp}");
        assert!(resp["error"].as_str().unwrap().contains(expect), "{expect}: {resp}");
        assert_eq!(resp["v"], 1);
    }
    // A client that connects and says nothing does not block others.
    let _idle = tokio::net::UnixStream::connect(&sup.socket).await.unwrap();
    assert_eq!(sup.status("s").await.pid, s.pid);
    // The socket is 0660 and owned by the service user.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&sup.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, if nix::unistd::Uid::effective().is_root() { 0o660 } else { 0o600 });
    assert_eq!(meta.uid(), sup.user.uid.as_raw());
    // Another account gets a clear refusal, not "not running".
    if nix::unistd::Uid::effective().is_root() {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new(hangar_testkit::cargo_bin("hangar"))
            .args(["ctl", "--socket"])
            .arg(&sup.socket)
            .args(["stop", "s"])
            .uid(65534)
            .gid(65534)
            .current_dir("/")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not allowed to control the supervisor"), "{err}");
        assert_eq!(sup.status("s").await.pid, s.pid);
    }
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_one_line() {
    let sup = Sup::new("sv-badcfg");
    let cases = [
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\nuser = \"root\"\n", "services never run as root"),
        ("[[supervisor.service]]\nname = \"../a\"\ncommand = \"/bin/true\"\n", "not a valid service name"),
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"true\"\n", "absolute path"),
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\ndepends_on = [\"b\"]\n[[supervisor.service]]\nname = \"b\"\ncommand = \"/bin/true\"\ndepends_on = [\"a\"]\n", "dependency cycle"),
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\n[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\n", "defined twice"),
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\nstop_signal = \"NOPE\"\n", "not a signal"),
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\nready = { kind = \"https\", url = \"http://x/\", ca_file = \"/c\" }\n", "not an https:// URL"),
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\nready = { kind = \"smtp\" }\n", "unknown variant"),
        ("[[supervisor.service]]\nname = \"a\"\ncommand = \"/bin/true\"\nrestart = \"always\"\n", "unknown field `restart`"),
    ];
    for (services, expect) in cases {
        sup.write_config(None, "", services);
        let out = sup.hangar().arg("supervise").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{expect}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.contains(expect), "{expect}: {err}");
        assert!(last.starts_with("hangar: error:"), "{err}");
    }
    // No [supervisor] section at all.
    std::fs::write(&sup.config, common::DUMMY_DATABASE).unwrap();
    let out = sup.hangar().arg("supervise").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [supervisor] section"));
}

#[tokio::test]
async fn a_second_supervisor_on_the_same_socket_is_refused() {
    let mut sup = Sup::new("sv-twice");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    sup.write_config(
        None,
        "",
        &format!("[[supervisor.service]]\nname = \"s\"\ncommand = \"{sl}\"\nargs = [\"1000\"]\n"),
    );
    sup.start().await;
    let out = sup.hangar().arg("supervise").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another supervisor is already listening on"), "{err}");
    assert_eq!(processes_with(&m).len(), 1, "the second supervisor started something");
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn children_run_unprivileged_with_a_clean_environment() {
    let mut sup = Sup::new("sv-user");
    let work = sup.shared_dir("work");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    let who = sup.script(
        "who.sh",
        &format!("grep -E '^(Uid|Gid|Groups):' /proc/self/status > {w}/ids\nenv > {w}/env\nexec {sl} 1000", w = work.display()),
    );
    let (socket_path, _) = (std::env::temp_dir().join(format!("notify-{}.sock", std::process::id())), ());
    let _ = std::fs::remove_file(&socket_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    sup.write_config(
        None,
        "",
        &format!(
            "[[supervisor.service]]\nname = \"who\"\ncommand = \"{}\"\nenv = {{ HANGAR_SERVICE_SETTING = \"on\" }}\n",
            who.display()
        ),
    );
    sup.start_with(|c| {
        c.env("NOTIFY_SOCKET", &socket_path).env("SECRET_OF_THE_CALLER", "x");
    })
    .await;
    sup.wait_state("who", State::Ready, LONG).await;
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");

    hangar_testkit::wait_for("the child's report", LONG, || async { work.join("env").exists().then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ids = std::fs::read_to_string(work.join("ids")).unwrap();
    let uid_line = ids.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == sup.user.uid.to_string()), "{ids}");
    let gid_line = ids.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert!(gid_line.split_whitespace().skip(1).all(|g| g == sup.user.gid.to_string()), "{ids}");
    let groups = ids.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(!groups.split_whitespace().skip(1).any(|g| g == "0"), "root group kept: {ids}");
    let env = std::fs::read_to_string(work.join("env")).unwrap();
    assert!(env.contains("HANGAR_SERVICE_SETTING=on"), "{env}");
    assert!(env.contains(&format!("USER={}", sup.user.name)), "{env}");
    assert!(!env.contains("NOTIFY_SOCKET"), "a child must not speak for the supervisor: {env}");
    assert!(!env.contains("SECRET_OF_THE_CALLER"), "{env}");

    assert_eq!(sup.terminate(), Some(0));
    let mut saw_stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping);
    let _ = std::fs::remove_file(&socket_path);
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn logs_rotate_by_size_and_reopen_on_sighup() {
    let mut sup = Sup::new("sv-logs");
    let m = sup.marker();
    // About 100 bytes a line, quickly.
    let chatty = sup.script(
        "chatty.sh",
        &format!("while :; do echo 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'; sleep 0.001; done\n: {m}"),
    );
    sup.write_config(
        None,
        "log_max_bytes = 20000\nlog_keep = 2",
        &format!("[[supervisor.service]]\nname = \"chatty\"\ncommand = \"{}\"\nargs = [\"{m}\"]\n", chatty.display()),
    );
    sup.start().await;
    let log = sup.log_dir.join("chatty.log");
    let rotated2 = sup.log_dir.join("chatty.log.2");
    hangar_testkit::wait_for("two rotations", LONG, || async { rotated2.exists().then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in [&log, &sup.log_dir.join("chatty.log.1"), &rotated2] {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= 20000, "{} is {len} bytes", p.display());
    }
    assert!(!sup.log_dir.join("chatty.log.3").exists(), "more files kept than log_keep");

    // An external rotation moves the file away; SIGHUP makes the supervisor write a new one.
    let moved = sup.log_dir.join("moved.log");
    std::fs::rename(&log, &moved).unwrap();
    sup.signal(Signal::SIGHUP);
    hangar_testkit::wait_for("a reopened log", LONG, || async { log.exists().then_some(()) }).await;
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_supervisor_killed_outright_cleans_up_when_started_again() {
    let mut sup = Sup::new("sv-crashsup");
    let m = sup.marker();
    let sl = sup.sleep_bin();
    sup.write_config(
        None,
        "",
        &format!("[[supervisor.service]]\nname = \"s\"\ncommand = \"{sl}\"\nargs = [\"1000\"]\n"),
    );
    sup.start().await;
    let old = sup.wait_state("s", State::Ready, LONG).await.pid.unwrap() as i32;
    // SIGKILL: the child survives its supervisor, re-parented away.
    sup.process.as_mut().unwrap().kill();
    sup.process = None;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(alive(old));
    sup.start().await;
    let new = sup.wait_state("s", State::Ready, LONG).await.pid.unwrap() as i32;
    assert_ne!(new, old);
    hangar_testkit::wait_for("the old child to be killed", LONG, || async { (!alive(old)).then_some(()) }).await;
    assert_eq!(processes_with(&m), vec![new]);
    assert_eq!(sup.terminate(), Some(0));
    wait_gone(&m, Duration::from_secs(5)).await;
}
