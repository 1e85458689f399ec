//! Progress of the checks and steps: a trait the steps report through, drawn
//! with indicatif on a terminal and printed as plain lines otherwise.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub trait Reporter {
    /// One line of the preflight checklist.
    fn check(&self, ok: bool, what: &str, detail: &str);
    /// A failed check the operator chose to go on past.
    fn warn(&self, what: &str, detail: &str);
    fn step_start(&self, step: &str, what: &str);
    /// Bytes done of a long step (the bundle's verification).
    fn progress(&self, done: u64, total: u64);
    fn step_done(&self, step: &str, detail: &str, took: Duration);
    fn step_failed(&self, step: &str, problem: &str, took: Duration);
    fn info(&self, text: &str);
}

/// Plain lines on standard output: the non-interactive face, and the timings.
#[derive(Debug, Default)]
pub struct LineReporter {
    last_percent: Mutex<Option<u64>>,
}

impl Reporter for LineReporter {
    fn check(&self, ok: bool, what: &str, detail: &str) {
        println!("[{}] {what}: {detail}", if ok { "ok" } else { "!!" });
    }

    fn warn(&self, what: &str, detail: &str) {
        println!("[--] {what}: {detail}");
    }

    fn step_start(&self, step: &str, what: &str) {
        println!("[..] {step}: {what}");
        *self.last_percent.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn progress(&self, done: u64, total: u64) {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let mut last = self.last_percent.lock().unwrap_or_else(|e| e.into_inner());
        // A line per quarter is enough for a log.
        if last.is_none_or(|l| pct / 25 > l / 25) {
            println!("     {pct}% ({done} of {total} bytes)");
            *last = Some(pct);
        }
    }

    fn step_done(&self, step: &str, detail: &str, took: Duration) {
        println!("[ok] {step}: {detail} ({:.1} s)", took.as_secs_f64());
        let _ = std::io::stdout().flush();
    }

    fn step_failed(&self, step: &str, problem: &str, took: Duration) {
        println!("[!!] {step}: {problem} ({:.1} s)", took.as_secs_f64());
    }

    fn info(&self, text: &str) {
        println!("{text}");
    }
}

/// A spinner per step and a bar for the bundle, on the terminal.
#[derive(Debug, Default)]
pub struct TuiReporter {
    bar: Mutex<Option<ProgressBar>>,
}

impl TuiReporter {
    fn take(&self) -> Option<ProgressBar> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Reporter for TuiReporter {
    fn check(&self, ok: bool, what: &str, detail: &str) {
        eprintln!("  {} {what}: {detail}", if ok { "✔" } else { "✘" });
    }

    fn warn(&self, what: &str, detail: &str) {
        eprintln!("  ⚠ {what}: {detail}");
    }

    fn step_start(&self, step: &str, what: &str) {
        let bar = ProgressBar::new_spinner().with_message(format!("{step}: {what}"));
        bar.enable_steady_tick(Duration::from_millis(120));
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn progress(&self, done: u64, total: u64) {
        let guard = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = guard.as_ref() {
            if bar.length() != Some(total) {
                bar.set_length(total);
                if let Ok(style) = ProgressStyle::with_template("{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}") {
                    bar.set_style(style.progress_chars("=> "));
                }
            }
            bar.set_position(done);
        }
    }

    fn step_done(&self, step: &str, detail: &str, took: Duration) {
        if let Some(bar) = self.take() {
            bar.finish_and_clear();
        }
        eprintln!("  ✔ {step}: {detail} ({:.1} s)", took.as_secs_f64());
    }

    fn step_failed(&self, step: &str, problem: &str, took: Duration) {
        if let Some(bar) = self.take() {
            bar.finish_and_clear();
        }
        eprintln!("  ✘ {step}: {problem} ({:.1} s)", took.as_secs_f64());
    }

    fn info(&self, text: &str) {
        match self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}
