//! Checking out a run's commit with the system `git`: a fresh repository per
//! run, the one commit fetched shallowly when the server allows it (the whole
//! history otherwise), never a prompt, and the VCS's CA given through
//! `GIT_SSL_CAINFO`, which overrides whatever the worker's environment had.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::logs::LogStream;
use super::process::{self, Cmd, Ended};
use super::{EngineError, RunHooks, StopSignal};

pub(crate) struct Git {
    pub vcs_ca: Option<PathBuf>,
    pub grace: Duration,
}

pub(crate) enum Checkout {
    Done,
    Stopped(String),
    /// Git failed doing this; its output is in the log.
    Failed(String),
}

impl Git {
    fn env(&self) -> Vec<(String, String)> {
        // The worker's own environment minus anything that would redirect git.
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("GIT_"))
            .collect();
        env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
        env.push(("GIT_ASKPASS".into(), "/bin/false".into()));
        env.push(("GIT_CONFIG_NOSYSTEM".into(), "1".into()));
        if let Some(ca) = &self.vcs_ca {
            env.push(("GIT_SSL_CAINFO".into(), ca.display().to_string()));
        }
        env
    }

    fn cmd(&self, cwd: &Path, args: &[&str], display: &str) -> Cmd {
        Cmd {
            program: PathBuf::from("git"),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.to_path_buf(),
            env: self.env(),
            display: display.to_string(),
        }
    }

    /// Puts `sha` of `url` into `dest` (created).
    pub(crate) async fn checkout<H: RunHooks>(
        &self,
        url: &str,
        sha: &str,
        dest: &Path,
        log: &mut LogStream<'_, H>,
        stop: &StopSignal,
    ) -> Result<Checkout, EngineError> {
        if !(sha.len() == 40 || sha.len() == 64) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EngineError::BadCommit {
                sha: sha.to_string(),
            });
        }
        std::fs::create_dir_all(dest).map_err(|source| EngineError::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        log.line(&format!("checking out commit {sha}")).await;
        let steps: [(&[&str], &str); 2] = [
            (&["init", "--quiet", "."], "git init"),
            (
                &["remote", "add", "origin", url],
                "git remote add origin <repository>",
            ),
        ];
        for (args, display) in steps {
            match self.step(dest, args, display, log, stop).await? {
                Checkout::Done => {}
                other => return Ok(other),
            }
        }
        let shallow = [
            "-c",
            "protocol.version=2",
            "fetch",
            "--quiet",
            "--depth=1",
            "--no-tags",
            "origin",
            sha,
        ];
        match self
            .step(
                dest,
                &shallow,
                &format!("git fetch --depth=1 origin {sha}"),
                log,
                stop,
            )
            .await?
        {
            Checkout::Done => {}
            Checkout::Stopped(r) => return Ok(Checkout::Stopped(r)),
            Checkout::Failed(_) => {
                log.line("the server does not serve single commits: fetching every branch")
                    .await;
                let all = [
                    "fetch",
                    "--quiet",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                ];
                match self.step(dest, &all, "git fetch origin", log, stop).await? {
                    Checkout::Done => {}
                    other => return Ok(other),
                }
            }
        }
        let checkout = [
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--detach",
            sha,
        ];
        match self
            .step(dest, &checkout, &format!("git checkout {sha}"), log, stop)
            .await?
        {
            Checkout::Done => Ok(Checkout::Done),
            Checkout::Failed(_) => Ok(Checkout::Failed(format!(
                "commit {sha} is not in the repository"
            ))),
            other => Ok(other),
        }
    }

    /// The checked-out commit's whole message (masked before its subject is
    /// taken, so a secret cut by the bound cannot slip out in part), or `None`
    /// when git cannot say: a missing message never fails a run.
    pub(crate) async fn message<H: RunHooks>(
        &self,
        dest: &Path,
        log: &mut LogStream<'_, H>,
    ) -> Option<String> {
        let cmd = self.cmd(
            dest,
            &["log", "-1", "--format=%B", "HEAD"],
            "git log -1 --format=%B HEAD",
        );
        match process::capture(&cmd, log).await {
            Ok((0, out)) => Some(String::from_utf8_lossy(&out).into_owned()),
            Ok((code, _)) => {
                log.line(&format!(
                    "git log exited with {code}: the commit's message is not reported"
                ))
                .await;
                None
            }
            Err(e) => {
                log.line(&format!(
                    "the commit's message is not reported: {}",
                    hangar_types::error_chain(&e)
                ))
                .await;
                None
            }
        }
    }

    async fn step<H: RunHooks>(
        &self,
        cwd: &Path,
        args: &[&str],
        display: &str,
        log: &mut LogStream<'_, H>,
        stop: &StopSignal,
    ) -> Result<Checkout, EngineError> {
        if let Some(r) = stop.current() {
            return Ok(Checkout::Stopped(r));
        }
        let cmd = self.cmd(cwd, args, display);
        Ok(
            match process::run(&cmd, log, stop, true, self.grace).await? {
                Ended::Exited(0) => Checkout::Done,
                Ended::Stopped(r) => Checkout::Stopped(r),
                Ended::Exited(c) => Checkout::Failed(format!("{display} failed (exit code {c})")),
                Ended::Signaled(s) => {
                    Checkout::Failed(format!("{display} was killed by signal {s}"))
                }
            },
        )
    }
}
