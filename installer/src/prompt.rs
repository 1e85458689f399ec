//! The two prompters: dialoguer on a terminal, and an answers file (TOML, one
//! key per question, unknown keys refused) for automation.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dialoguer::theme::ColorfulTheme;
use hangar_crypto::SecretString;

use crate::answers::{Check, KEYS, PromptError, Prompter, Question};
use crate::error::InstallError;

/// Answers from a TOML file.
pub struct FilePrompter {
    path: PathBuf,
    table: toml::Table,
}

/// The file holds the administrator's password: only its keys are shown.
impl std::fmt::Debug for FilePrompter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePrompter").field("path", &self.path).field("keys", &self.table.keys().collect::<Vec<_>>()).finish()
    }
}

impl FilePrompter {
    /// Reads the file and refuses unknown keys and loose permissions (it holds
    /// the administrator's password) before any question is asked.
    pub fn load(path: &Path) -> Result<FilePrompter, InstallError> {
        let refuse = |problem: String| InstallError::Answers { path: path.to_path_buf(), problem };
        let text = std::fs::read_to_string(path).map_err(|source| InstallError::AnswersRead { path: path.to_path_buf(), source })?;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(refuse(format!("holds secrets and must not be readable by group or others (mode {mode:04o}; chmod 600)")));
        }
        let table: toml::Table = toml::from_str(&text).map_err(|e| refuse(e.message().to_string()))?;
        let mut unknown: Vec<&str> = table.keys().map(String::as_str).filter(|k| !KEYS.contains(k)).collect();
        unknown.sort();
        if let Some(first) = unknown.first() {
            return Err(refuse(format!("unknown key `{first}`")));
        }
        Ok(FilePrompter { path: path.to_path_buf(), table })
    }

    fn origin(&self) -> String {
        format!("answers file {}", self.path.display())
    }

    fn get(&self, q: Question) -> Result<&toml::Value, PromptError> {
        self.table.get(q.key).ok_or(PromptError::Missing { origin: self.origin(), key: q.key, prompt: q.prompt })
    }

    fn invalid(&self, q: Question, problem: impl Into<String>) -> PromptError {
        PromptError::Invalid { origin: self.origin(), key: q.key, problem: problem.into() }
    }

    fn text(&self, q: Question) -> Result<String, PromptError> {
        match self.get(q)? {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| self.invalid(q, "must be a list of strings")))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join(", ")),
            _ => Err(self.invalid(q, "must be a string")),
        }
    }
}

impl Prompter for FilePrompter {
    fn interactive(&self) -> bool {
        false
    }

    fn input(&mut self, q: Question, _default: Option<&str>, check: Check<'_>) -> Result<String, PromptError> {
        let value = self.text(q)?;
        check(&value).map_err(|p| self.invalid(q, p))?;
        Ok(value)
    }

    fn password(&mut self, q: Question, check: Check<'_>) -> Result<SecretString, PromptError> {
        let value = match self.get(q)? {
            toml::Value::String(s) => s.clone(),
            _ => return Err(self.invalid(q, "must be a string")),
        };
        // The check's message never quotes the value.
        check(&value).map_err(|p| self.invalid(q, p))?;
        Ok(SecretString::new(value))
    }

    fn confirm(&mut self, q: Question, _default: bool) -> Result<bool, PromptError> {
        self.get(q)?.as_bool().ok_or_else(|| self.invalid(q, "must be true or false"))
    }

    fn select(&mut self, q: Question, items: &[(&str, &str)], _default: usize) -> Result<usize, PromptError> {
        let value = self.text(q)?;
        items.iter().position(|(k, _)| *k == value).ok_or_else(|| {
            let keys: Vec<&str> = items.iter().map(|(k, _)| *k).collect();
            self.invalid(q, format!("{value:?} is not one of {}", keys.join(", ")))
        })
    }

    fn choose(&mut self, q: Question, items: &[(&str, &str)], default: usize) -> Result<usize, PromptError> {
        if self.table.contains_key(q.key) { self.select(q, items, default) } else { Ok(default) }
    }

    fn optional(&mut self, q: Question, default: &str, check: Check<'_>) -> Result<String, PromptError> {
        let value = match self.table.get(q.key) {
            None => default.to_string(),
            Some(_) => self.text(q)?,
        };
        check(&value).map_err(|p| self.invalid(q, p))?;
        Ok(value)
    }

    fn say(&mut self, _text: &str) {}
}

/// Prompts on the terminal (dialoguer).
#[derive(Default)]
pub struct TtyPrompter {
    theme: ColorfulTheme,
}

impl std::fmt::Debug for TtyPrompter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtyPrompter").finish_non_exhaustive()
    }
}

fn terminal(q: Question) -> impl Fn(dialoguer::Error) -> PromptError {
    move |e| PromptError::Terminal { prompt: q.prompt, problem: e.to_string() }
}

impl Prompter for TtyPrompter {
    fn interactive(&self) -> bool {
        true
    }

    fn input(&mut self, q: Question, default: Option<&str>, check: Check<'_>) -> Result<String, PromptError> {
        let mut input = dialoguer::Input::<String>::with_theme(&self.theme).with_prompt(q.prompt);
        if let Some(d) = default {
            input = input.default(d.to_string()).allow_empty(d.is_empty());
        }
        input.validate_with(|s: &String| check(s)).interact_text().map_err(terminal(q))
    }

    fn password(&mut self, q: Question, check: Check<'_>) -> Result<SecretString, PromptError> {
        dialoguer::Password::with_theme(&self.theme)
            .with_prompt(q.prompt)
            .with_confirmation("Repeat it", "the two entries differ")
            .validate_with(|s: &String| check(s))
            .interact()
            .map(SecretString::new)
            .map_err(terminal(q))
    }

    fn confirm(&mut self, q: Question, default: bool) -> Result<bool, PromptError> {
        dialoguer::Confirm::with_theme(&self.theme)
            .with_prompt(q.prompt)
            .default(default)
            .interact()
            .map_err(terminal(q))
    }

    fn select(&mut self, q: Question, items: &[(&str, &str)], default: usize) -> Result<usize, PromptError> {
        let labels: Vec<&str> = items.iter().map(|(_, l)| *l).collect();
        dialoguer::Select::with_theme(&self.theme)
            .with_prompt(q.prompt)
            .items(&labels)
            .default(default)
            .interact()
            .map_err(terminal(q))
    }

    fn say(&mut self, text: &str) {
        eprintln!("{text}");
    }
}
