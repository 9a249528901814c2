//! The `--config` file: TOML whose keys are the table's rows, each value kept with its line so
//! that an error can point at it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{SettingsError, Value, SPECS};

/// 1-based line of byte offset `at` in `text`.
pub(super) fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line of the top-level `key = …` in `text` (1 when it cannot be found, which only a key
/// written in an unusual form would be).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let quoted = format!("\"{key}\"");
            let rest = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(quoted.as_str()));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// The `--config` file, parsed: each key with its value and line. Unknown keys are refused.
#[derive(Debug, Clone, Default)]
pub struct FileValues {
    pub path: Option<PathBuf>,
    values: BTreeMap<String, (toml::Value, usize)>,
    /// The `[models.NAME]` tables, in file order, with their lines.
    tables: Vec<(super::ModelConfig, usize)>,
}

impl FileValues {
    /// Parses TOML text; errors are one line (`line N: message`), without the file name.
    pub fn parse(text: &str) -> Result<FileValues, String> {
        // A plain table: toml's `Spanned` cannot sit above the `[models.NAME]` tables, so a
        // key's line is found in the text instead (`key_line`).
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => format!("line {}: {message}", line_of(text, span.start)),
                None => message,
            }
        })?;
        let mut values = BTreeMap::new();
        for (key, v) in table {
            let line = key_line(text, &key);
            if key == "models" {
                continue;
            }
            if !SPECS.iter().any(|s| s.key == key) {
                let known: Vec<&str> = SPECS.iter().map(|s| s.key).collect();
                return Err(format!(
                    "line {line}: unknown key `{key}`, expected one of {} or [models.NAME] tables",
                    known.join(", ")
                ));
            }
            values.insert(key, (v, line));
        }
        let tables = super::models::tables(text)?;
        Ok(FileValues {
            path: None,
            values,
            tables,
        })
    }

    /// Reads and parses `path`. Errors name the file.
    pub fn from_path(path: &Path) -> Result<FileValues, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file = Self::parse(&text).map_err(|message| SettingsError::File {
            path: path.to_path_buf(),
            message,
        })?;
        file.path = Some(path.to_path_buf());
        let base = path.parent().unwrap_or(Path::new("."));
        for (m, _) in &mut file.tables {
            if m.path.is_relative() {
                m.path = base.join(&m.path);
            }
        }
        Ok(file)
    }

    /// The `[models.NAME]` tables, in file order, with their lines.
    pub fn model_tables(&self) -> &[(super::ModelConfig, usize)] {
        &self.tables
    }

    /// The file's value of `key`, made relative to the file's directory where it is a path.
    pub fn get<T: Value>(&self, key: &'static str) -> Option<Result<T, SettingsError>> {
        let (v, line) = self.values.get(key)?;
        let path = self.path.clone().unwrap_or_default();
        Some(
            T::from_toml(v.clone())
                .map(|mut t| {
                    let base = path.parent().unwrap_or(Path::new("."));
                    t.rebase(base);
                    t
                })
                .map_err(|e| SettingsError::File {
                    path,
                    message: format!("line {line}: {key}: {e}"),
                }),
        )
    }

    /// `message` about the value of `key`, at its line: for a value that parsed but is out of
    /// its row's range.
    pub(super) fn error_at(&self, key: &str, message: String) -> SettingsError {
        let line = self.values.get(key).map_or(0, |(_, line)| *line);
        SettingsError::File {
            path: self.path.clone().unwrap_or_default(),
            message: format!("line {line}: {message}"),
        }
    }

    /// The first model directory the file names.
    pub fn model(&self) -> Result<Option<PathBuf>, SettingsError> {
        Ok(self.models()?.into_iter().next().map(|m| m.path))
    }

    /// The models the file names (its `model` key or its tables), for a reload that re-reads
    /// them.
    pub fn models(&self) -> Result<Vec<super::ModelConfig>, SettingsError> {
        let key = self.get::<super::ModelList>("model").transpose()?;
        super::models::resolve(None, key.as_ref(), &self.tables, self.path.as_deref())
            .map_err(SettingsError::Models)
    }
}
