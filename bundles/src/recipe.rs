//! Recipes: what a bundle holds, as data.
//!
//! A recipe is a TOML file naming the bundle's kind, version and platform and a
//! list of sources, each mapped to a destination in the bundle. Sources are
//! generic (a file, a directory tree, a glob, an empty directory, or a command
//! whose output directory is collected), so adding a component to a bundle is
//! an edit of data, never of code. Values may use `${var}` (from `[vars]`, then
//! `--var name=value`), `${env:NAME}` and the built-ins `${recipe_dir}` and, in a
//! command, `${out}`; `$$` is a literal `$`. Relative paths are relative to the
//! recipe's directory.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::keys::SigningKey;
use crate::manifest::{Kind, Manifest, Mode};
use crate::writer::{BuildOptions, Layout, build_bundle};
use crate::{BuildError, Progress};

/// The recipe format this build reads.
pub const RECIPE_FORMAT: u32 = 1;
const DEFAULT_LEVEL: i32 = 9;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    format: u32,
    kind: Kind,
    version: String,
    platform: String,
    #[serde(default)]
    expires_after_days: Option<u32>,
    #[serde(default)]
    compression: CompressionSpec,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default, rename = "source")]
    sources: Vec<Source>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompressionSpec {
    level: i32,
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec {
            level: DEFAULT_LEVEL,
        }
    }
}

/// One source of a recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A single file.
    File {
        path: String,
        dest: String,
        #[serde(default)]
        mode: Option<Mode>,
    },
    /// A directory and everything below it.
    Tree { path: String, dest: String },
    /// Every file or directory a glob matches, each under `dest` by its name.
    Glob { pattern: String, dest: String },
    /// An empty directory.
    Dir {
        dest: String,
        #[serde(default)]
        mode: Option<Mode>,
    },
    /// A command run with `${out}` set to an empty directory; what it leaves
    /// there is collected at `dest`.
    Command {
        run: Vec<String>,
        dest: String,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
}

/// A loaded recipe with its variables resolved.
#[derive(Debug)]
pub struct Recipe {
    path: PathBuf,
    dir: PathBuf,
    file: RecipeFile,
    overrides: BTreeMap<String, String>,
}

/// Options of [`Recipe::build`].
#[derive(Default)]
pub struct RecipeBuild<'a> {
    /// Keys to sign with; none leaves the bundle unsigned.
    pub signing_keys: &'a [SigningKey],
    /// Overrides the recipe's zstd level.
    pub compression_level: Option<i32>,
    /// Called with source bytes read so far and the total.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
}

impl std::fmt::Debug for RecipeBuild<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipeBuild")
            .field("signing_keys", &self.signing_keys)
            .field("compression_level", &self.compression_level)
            .finish_non_exhaustive()
    }
}

impl Recipe {
    /// Reads `path`; `vars` (from `--var`) override the recipe's `[vars]`.
    pub fn load(path: &Path, vars: &[(String, String)]) -> Result<Recipe, BuildError> {
        let text = fs::read_to_string(path).map_err(|source| BuildError::ReadRecipe {
            path: path.to_path_buf(),
            source,
        })?;
        let file: RecipeFile = toml::from_str(&text).map_err(|source| BuildError::ParseRecipe {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let absolute = std::path::absolute(path).map_err(|source| BuildError::ReadRecipe {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
        let recipe = Recipe {
            path: path.to_path_buf(),
            dir,
            file,
            overrides: vars.iter().cloned().collect(),
        };
        if recipe.file.format != RECIPE_FORMAT {
            return Err(recipe.invalid(format!(
                "format {} is not {RECIPE_FORMAT}",
                recipe.file.format
            )));
        }
        for name in recipe.overrides.keys() {
            if matches!(name.as_str(), "recipe_dir" | "out") {
                return Err(recipe.invalid(format!("`{name}` is built in and cannot be set")));
            }
        }
        Ok(recipe)
    }

    fn invalid(&self, reason: String) -> BuildError {
        BuildError::Recipe {
            path: self.path.clone(),
            reason,
        }
    }

    pub fn kind(&self) -> Kind {
        self.file.kind
    }

    pub fn version(&self) -> Result<semver::Version, BuildError> {
        let text = self.expand(&self.file.version, None)?;
        text.parse()
            .map_err(|_| self.invalid(format!("version {text:?} is not a semantic version")))
    }

    pub fn platform(&self) -> Result<String, BuildError> {
        self.expand(&self.file.platform, None)
    }

    pub fn sources(&self) -> &[Source] {
        &self.file.sources
    }

    /// Collects every source (running commands) into a layout; command output
    /// lives in `work` until the bundle is written.
    pub fn assemble(&self, work: &Path) -> Result<Layout, BuildError> {
        let mut layout = Layout::new();
        for (i, source) in self.file.sources.iter().enumerate() {
            match source {
                Source::File { path, dest, mode } => {
                    let from = self.path_of(path)?;
                    layout.add_file(&self.expand(dest, None)?, &from, mode.map(|m| m.0))?;
                }
                Source::Tree { path, dest } => {
                    layout.add_tree(&self.expand(dest, None)?, &self.path_of(path)?)?;
                }
                Source::Dir { dest, mode } => {
                    layout.add_dir(&self.expand(dest, None)?, mode.map_or(0o755, |m| m.0))?;
                }
                Source::Glob { pattern, dest } => {
                    let pattern = self.path_of(pattern)?.to_string_lossy().into_owned();
                    let dest = self.expand(dest, None)?;
                    let mut matches: Vec<PathBuf> = glob::glob(&pattern)
                        .map_err(|source| BuildError::BadGlob {
                            pattern: pattern.clone(),
                            source,
                        })?
                        .map(|m| {
                            m.map_err(|e| BuildError::Source {
                                path: e.path().to_path_buf(),
                                source: io::Error::other(e.to_string()),
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    if matches.is_empty() {
                        return Err(BuildError::GlobEmpty { pattern });
                    }
                    matches.sort();
                    for m in matches {
                        let name = m
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let at = if dest.is_empty() {
                            name
                        } else {
                            format!("{dest}/{name}")
                        };
                        if m.is_dir() {
                            layout.add_tree(&at, &m)?;
                        } else {
                            layout.add_file(&at, &m, None)?;
                        }
                    }
                }
                Source::Command { run, dest, env } => {
                    let out = work.join(format!("source-{i}"));
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&out)
                        .map_err(|source| BuildError::Write {
                            path: out.clone(),
                            source,
                        })?;
                    self.run(run, env, &out)?;
                    layout.add_tree(&self.expand(dest, None)?, &out)?;
                }
            }
        }
        Ok(layout)
    }

    fn run(
        &self,
        run: &[String],
        env: &BTreeMap<String, String>,
        out: &Path,
    ) -> Result<(), BuildError> {
        let argv: Vec<String> = run
            .iter()
            .map(|a| self.expand(a, Some(out)))
            .collect::<Result<_, _>>()?;
        let Some((program, args)) = argv.split_first() else {
            return Err(self.invalid("a command source has an empty `run`".into()));
        };
        let shown = argv.join(" ");
        let program = if program.contains('/') {
            self.dir.join(program)
        } else {
            PathBuf::from(program)
        };
        let mut command = Command::new(&program);
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        for (k, v) in env {
            command.env(k, self.expand(v, Some(out))?);
        }
        // The command's output is diagnostics: keep our stdout for --json.
        if let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() {
            command.stdout(Stdio::from(fd));
        }
        tracing::info!(command = %shown, "running recipe command");
        let status = command.status().map_err(|source| BuildError::Spawn {
            command: shown.clone(),
            source,
        })?;
        if !status.success() {
            return Err(BuildError::CommandFailed {
                command: shown,
                status: status.to_string(),
            });
        }
        Ok(())
    }

    /// Assembles the sources and writes the bundle to `out`.
    pub fn build(&self, out: &Path, options: RecipeBuild<'_>) -> Result<Manifest, BuildError> {
        let version = self.version()?;
        let platform = self.platform()?;
        let created = created_now()?;
        let expires = self
            .file
            .expires_after_days
            .map(|days| created + Duration::days(i64::from(days)));
        let work = WorkDir::create()?;
        let layout = self.assemble(&work.0)?;
        let level = options
            .compression_level
            .unwrap_or(self.file.compression.level);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        build_bundle(
            &layout,
            out,
            BuildOptions {
                kind: self.file.kind,
                version,
                platform,
                created,
                expires,
                compression_level: level,
                threads,
                signing_keys: options.signing_keys,
                progress: options.progress,
            },
        )
    }

    /// Expands variables in `value`, then resolves it against the recipe directory.
    fn path_of(&self, value: &str) -> Result<PathBuf, BuildError> {
        Ok(self.dir.join(self.expand(value, None)?))
    }

    fn expand(&self, value: &str, out: Option<&Path>) -> Result<String, BuildError> {
        self.expand_depth(value, out, 0)
    }

    fn expand_depth(
        &self,
        value: &str,
        out: Option<&Path>,
        depth: u32,
    ) -> Result<String, BuildError> {
        if depth > 8 {
            return Err(self.invalid(format!("variables nest too deeply in {value:?}")));
        }
        let mut result = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(at) = rest.find('$') {
            result.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                result.push('$');
                rest = after;
                continue;
            }
            let Some(body) = rest.strip_prefix('{') else {
                return Err(self.invalid(format!("a `$` not followed by `{{` or `$` in {value:?}")));
            };
            let end = body
                .find('}')
                .ok_or_else(|| self.invalid(format!("unterminated `${{` in {value:?}")))?;
            let name = &body[..end];
            rest = &body[end + 1..];
            let resolved = if let Some(env_name) = name.strip_prefix("env:") {
                std::env::var(env_name).map_err(|_| {
                    self.invalid(format!("environment variable {env_name} is not set"))
                })?
            } else if name == "recipe_dir" {
                self.dir.to_string_lossy().into_owned()
            } else if name == "out" {
                out.ok_or_else(|| {
                    self.invalid("`${out}` is only defined in a command source".into())
                })?
                .to_string_lossy()
                .into_owned()
            } else if let Some(v) = self.overrides.get(name) {
                v.clone()
            } else if let Some(v) = self.file.vars.get(name) {
                self.expand_depth(v, out, depth + 1)?
            } else {
                return Err(BuildError::UnknownVariable {
                    path: self.path.clone(),
                    name: name.to_owned(),
                });
            };
            result.push_str(&resolved);
        }
        result.push_str(rest);
        Ok(result)
    }
}

/// The creation time: `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
fn created_now() -> Result<DateTime<Utc>, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or_else(|| BuildError::Recipe {
                path: PathBuf::from("SOURCE_DATE_EPOCH"),
                reason: format!("{text:?} is not a Unix time"),
            }),
        Err(_) => {
            let now = Utc::now();
            Ok(DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now))
        }
    }
}

/// A private scratch directory for command output, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir, BuildError> {
        let suffix: u64 = rand::random();
        let path = std::env::temp_dir().join(format!("hangar-bundle-{suffix:016x}"));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| BuildError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(text: &str, vars: &[(&str, &str)]) -> Result<Recipe, BuildError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        fs::write(&path, text).unwrap();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Recipe::load(&path, &vars)
    }

    const HEAD: &str = "format = 1\nkind = \"tools\"\nversion = \"${v}\"\nplatform = \"any\"\n";

    #[test]
    fn variables_expand_with_overrides_first() {
        let r = recipe(
            &format!("{HEAD}[vars]\nv = \"1.${{minor}}.0\"\nminor = \"2\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(r.version().unwrap().to_string(), "1.2.0");
        let r = recipe(&format!("{HEAD}[vars]\nv = \"1.0.0\"\n"), &[("v", "3.0.0")]).unwrap();
        assert_eq!(r.version().unwrap().to_string(), "3.0.0");
        assert_eq!(r.expand("$${v}", None).unwrap(), "${v}");
    }

    #[test]
    fn unknown_variables_and_fields_are_errors() {
        let r = recipe(HEAD, &[]).unwrap();
        let e = r.version().unwrap_err();
        assert!(
            matches!(e, BuildError::UnknownVariable { ref name, .. } if name == "v"),
            "{e}"
        );
        assert!(matches!(
            recipe(&format!("{HEAD}colour = \"red\"\n"), &[]),
            Err(BuildError::ParseRecipe { .. })
        ));
        assert!(matches!(
            recipe(HEAD, &[("recipe_dir", "/")]),
            Err(BuildError::Recipe { .. })
        ));
    }
}
