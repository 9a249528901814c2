//! The models a daemon serves: `--model [NAME=]DIR` (repeatable) or the file's `model` key,
//! or one `[models.NAME]` table per model with the keys that can differ between models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::value::{Scalar, Shape, Value};
use super::Source;
use crate::engine::DTypeChoice;
use crate::sched::route::Class;

/// One `--model` value: `DIR`, or `NAME=DIR` to serve it under NAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelArg {
    pub name: Option<String>,
    pub path: PathBuf,
}

/// Whether `name` may name a model: `[a-z0-9_-]{1,64}`, so that it is safe as a metrics label,
/// in a log line and in a systemd instance name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model name {name:?}: expected 1 to 64 of a-z, 0-9, _ and -"
        ))
    }
}

impl Scalar for ModelArg {
    fn parse_one(s: &str) -> Result<Self, String> {
        // `NAME=DIR` only when what precedes the `=` could be a name: a directory whose path
        // holds a `=` (`/srv/m=1`) is still a directory.
        match s.split_once('=') {
            Some((name, path)) if check_name(name).is_ok() && !path.is_empty() => Ok(ModelArg {
                name: Some(name.to_string()),
                path: PathBuf::from(path),
            }),
            Some((name, "")) if check_name(name).is_ok() => {
                Err(format!("{s:?}: no directory after {name}="))
            }
            _ if s.is_empty() => Err("an empty model directory".into()),
            _ => Ok(ModelArg {
                name: None,
                path: PathBuf::from(s),
            }),
        }
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Self::parse_one(&s),
            other => Err(format!(
                "expected a directory, found {} {other}",
                other.type_str()
            )),
        }
    }
    fn to_toml(&self) -> toml::Value {
        toml::Value::String(match &self.name {
            Some(n) => format!("{n}={}", self.path.display()),
            None => self.path.display().to_string(),
        })
    }
    fn rebase(&mut self, base: &Path) {
        if self.path.is_relative() {
            self.path = base.join(&self.path);
        }
    }
}

/// The `model` setting: every `--model` given, in order. In the file one string (as before
/// the daemon served several) or an array of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelList(pub Vec<ModelArg>);

impl Value for ModelList {
    const SHAPE: Shape = Shape::Many;
    fn parse(text: &[String]) -> Result<Self, String> {
        text.iter()
            .filter(|s| !s.is_empty())
            .map(|s| ModelArg::parse_one(s))
            .collect::<Result<_, _>>()
            .map(ModelList)
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Array(items) => items
                .into_iter()
                .map(ModelArg::from_toml)
                .collect::<Result<_, _>>()
                .map(ModelList),
            one => ModelArg::from_toml(one).map(|m| ModelList(vec![m])),
        }
    }
    fn to_toml(&self) -> Option<toml::Value> {
        match self.0.as_slice() {
            [] => None,
            [one] => Some(one.to_toml()),
            many => Some(toml::Value::Array(
                many.iter().map(Scalar::to_toml).collect(),
            )),
        }
    }
    fn rebase(&mut self, base: &Path) {
        for m in &mut self.0 {
            m.rebase(base);
        }
    }
}

/// One `[models.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    path: PathBuf,
    dtype: Option<String>,
    priority: Option<String>,
    weight: Option<u32>,
    queue_capacity: Option<usize>,
    max_batch_tokens: Option<usize>,
}

/// The keys a `[models.NAME]` table may have.
pub const TABLE_KEYS: &str = "path, dtype, priority, weight, queue_capacity, max_batch_tokens";

/// Fair-share weights allowed.
const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=1000;

/// One model as the daemon is to serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// `None`: a bare `--model DIR`, named after its directory as responses have always named
    /// it.
    pub name: Option<String>,
    pub path: PathBuf,
    /// `None`: the daemon's `dtype`.
    pub dtype: Option<DTypeChoice>,
    pub priority: Class,
    pub weight: u32,
    /// `None`: the daemon's `queue_capacity`.
    pub queue_capacity: Option<usize>,
    /// `None`: the daemon's `max_batch_tokens`.
    pub max_batch_tokens: Option<usize>,
    /// Where it was given: a flag, the file's `model` key, or a `[models.NAME]` table
    /// (`File`).
    pub source: Source,
}

impl ModelConfig {
    fn plain(arg: ModelArg, source: Source) -> ModelConfig {
        ModelConfig {
            name: arg.name,
            path: arg.path,
            dtype: None,
            priority: Class::Normal,
            weight: 1,
            queue_capacity: None,
            max_batch_tokens: None,
            source,
        }
    }

    /// Its `[models.NAME]` table as `check-config` prints it, each key with its source.
    pub fn report(&self, name: &str) -> String {
        let source = self.source;
        let mut out = format!("[models.{name}]  # {source}\n");
        let path = toml::Value::String(self.path.display().to_string());
        out.push_str(&format!("path = {path}  # {source}\n"));
        let set = |key: &str, v: Option<String>, inherited: &str| match v {
            Some(v) => format!("{key} = {v}  # {source}\n"),
            None => format!("# {key} {inherited}  # default\n"),
        };
        out.push_str(&set(
            "dtype",
            self.dtype.map(|d| format!("\"{d}\"")),
            "from the daemon's dtype",
        ));
        out.push_str(&format!(
            "priority = \"{}\"  # {}\n",
            self.priority.as_str(),
            if self.priority == Class::Normal {
                "default"
            } else {
                "file"
            }
        ));
        out.push_str(&format!(
            "weight = {}  # {}\n",
            self.weight,
            if self.weight == 1 { "default" } else { "file" }
        ));
        out.push_str(&set(
            "queue_capacity",
            self.queue_capacity.map(|n| n.to_string()),
            "from the daemon's queue_capacity",
        ));
        out.push_str(&set(
            "max_batch_tokens",
            self.max_batch_tokens.map(|n| n.to_string()),
            "from the daemon's max_batch_tokens",
        ));
        out
    }
}

/// The file's `[models.NAME]` tables, in the order the file has them, each checked, with the
/// line of its table for errors.
pub(super) fn tables(text: &str) -> Result<Vec<(ModelConfig, usize)>, String> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        models: BTreeMap<String, toml::Value>,
    }
    let only: Only = toml::from_str(text).map_err(|e| e.message().trim().replace('\n', " "))?;
    let mut out = Vec::new();
    for (name, value) in only.models {
        // Where its table starts, for the order and the line: `[models.NAME]`, or the first
        // `models.NAME.` key of a dotted or inline form.
        let at = [format!("[models.{name}]"), format!("models.{name}")]
            .iter()
            .find_map(|needle| text.find(needle.as_str()))
            .unwrap_or(text.len());
        let line = super::file::line_of(text, at);
        let bad = |m: String| format!("line {line}: models.{name}: {m}");
        check_name(&name).map_err(bad)?;
        let table: Table = value.try_into().map_err(|e: toml::de::Error| {
            bad(format!(
                "{} (keys: {TABLE_KEYS})",
                e.message().trim().replace('\n', " ")
            ))
        })?;
        let dtype = table
            .dtype
            .map(|d| d.parse::<DTypeChoice>())
            .transpose()
            .map_err(|e| bad(format!("dtype: {e}")))?;
        let priority = table
            .priority
            .map(|p| Class::parse(&p))
            .transpose()
            .map_err(bad)?
            .unwrap_or_default();
        let weight = table.weight.unwrap_or(1);
        if !WEIGHTS.contains(&weight) {
            return Err(bad(format!("weight {weight}: expected 1 to 1000")));
        }
        for (key, v) in [
            ("queue_capacity", table.queue_capacity),
            ("max_batch_tokens", table.max_batch_tokens),
        ] {
            if v == Some(0) {
                return Err(bad(format!("{key} 0: expected at least 1")));
            }
        }
        let config = ModelConfig {
            name: Some(name.clone()),
            path: table.path,
            dtype,
            priority,
            weight,
            queue_capacity: table.queue_capacity,
            max_batch_tokens: table.max_batch_tokens,
            source: Source::File,
        };
        out.push((config, at));
    }
    out.sort_by_key(|&(_, at)| at);
    Ok(out
        .into_iter()
        .map(|(c, at)| (c, super::file::line_of(text, at)))
        .collect())
}

/// The models to serve: the `--model` flags when given, else the file's `model` key or its
/// `[models.NAME]` tables (not both). Named ones must have good, unique names.
pub(super) fn resolve(
    flags: Option<&ModelList>,
    file_key: Option<&ModelList>,
    file_tables: &[(ModelConfig, usize)],
    file: Option<&Path>,
) -> Result<Vec<ModelConfig>, String> {
    let at_file = |m: String| match file {
        Some(p) => format!("{}: {m}", p.display()),
        None => m,
    };
    let models: Vec<ModelConfig> = match (flags, file_key, file_tables) {
        (Some(flags), ..) => flags
            .0
            .iter()
            .cloned()
            .map(|a| ModelConfig::plain(a, Source::Flag))
            .collect(),
        (None, Some(_), [_, ..]) => {
            return Err(at_file(
                "both `model` and [models.NAME] tables: give one or the other".into(),
            ))
        }
        (None, Some(key), []) => key
            .0
            .iter()
            .cloned()
            .map(|a| ModelConfig::plain(a, Source::File))
            .collect(),
        (None, None, tables) => tables.iter().map(|(c, _)| c.clone()).collect(),
    };
    let mut seen = BTreeMap::new();
    for m in &models {
        if let Some(name) = &m.name {
            check_name(name).map_err(|e| format!("--model: {e}"))?;
            if let Some(other) = seen.insert(name.clone(), m.path.clone()) {
                return Err(format!(
                    "model name {name:?} is given twice ({} and {})",
                    other.display(),
                    m.path.display()
                ));
            }
        }
    }
    if models.len() > 1 {
        if let Some(bare) = models.iter().find(|m| m.name.is_none()) {
            return Err(format!(
                "--model {}: with several models each needs a name: --model NAME={}",
                bare.path.display(),
                bare.path.display()
            ));
        }
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_flag_is_a_directory_or_a_name_and_a_directory() {
        let p = |s: &str| ModelArg::parse_one(s);
        assert_eq!(
            p("ner=/srv/ner").unwrap(),
            ModelArg {
                name: Some("ner".into()),
                path: "/srv/ner".into()
            }
        );
        assert_eq!(p("/srv/m=1").unwrap().name, None);
        assert_eq!(p("Big=dir").unwrap().name, None, "not a name: a directory");
        assert!(p("ner=").unwrap_err().contains("no directory"));
        for bad in ["", "A", "a b", &"x".repeat(65), "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("a-b_9").is_ok());
    }

    #[test]
    fn tables_keep_file_order_and_name_bad_keys_and_values() {
        let text = "[models.zeta]\npath = \"z\"\npriority = \"high\"\nweight = 3\n\n\
                    [models.alpha]\npath = \"a\"\ndtype = \"int8\"\n";
        let t = tables(text).unwrap();
        let names: Vec<_> = t.iter().map(|(c, _)| c.name.clone().unwrap()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!((t[0].0.priority, t[0].0.weight), (Class::High, 3));
        assert_eq!(t[1].0.dtype, Some(DTypeChoice::Int8));
        let e = tables("x = 1\n[models.ner]\npth = \"n\"\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("models.ner") && e.contains("pth"),
            "{e}"
        );
        let e = tables("[models.Ner]\npath = \"n\"\n").unwrap_err();
        assert!(e.contains("models.Ner") && e.contains("a-z"), "{e}");
        let e = tables("[models.n]\npath = \"n\"\nweight = 0\n").unwrap_err();
        assert!(e.contains("weight 0"), "{e}");
        let e = tables("[models.n]\npath = \"n\"\npriority = \"urgent\"\n").unwrap_err();
        assert!(e.contains("urgent"), "{e}");
    }

    #[test]
    fn duplicates_and_unnamed_models_among_several_are_refused() {
        let list = |v: &[&str]| {
            ModelList::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let e = resolve(Some(&list(&["a=/x", "a=/y"])), None, &[], None).unwrap_err();
        assert!(e.contains("\"a\" is given twice"), "{e}");
        let e = resolve(Some(&list(&["a=/x", "/y"])), None, &[], None).unwrap_err();
        assert!(e.contains("each needs a name"), "{e}");
        let one = resolve(Some(&list(&["/y"])), None, &[], None).unwrap();
        assert_eq!(one[0].name, None);
    }
}
