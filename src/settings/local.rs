//! The settings `classify`, `inspect` and `bench` share with `serve` when they load a model in
//! this process: the same rows of the table as flags, so that their names, defaults, docs and
//! checks are written once.

use std::path::PathBuf;

use clap::{ArgMatches, Args, Command, FromArgMatches};

use super::{Spec, Value, SPECS};
use crate::engine::{DTypeChoice, DeviceChoice};

/// The row of `key`. Every key named below is in the table (the CLI tests parse each command).
fn spec(key: &str) -> &'static Spec {
    SPECS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("{key} is not a row of the settings table"))
}

/// The value of `key`'s flag in `m`, or the row's default when it was not given.
fn take<T: Value>(m: &ArgMatches, key: &str) -> Result<T, clap::Error> {
    let spec = spec(key);
    let mut given = spec.given(m);
    if given.is_empty() {
        given.push(spec.default());
    }
    T::parse(&given).map_err(|e| {
        clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("--{}: {e}\n", spec.flag()),
        )
    })
}

/// A clap `Args` struct whose fields are rows of the table, each field named as its key and of
/// the row's type.
macro_rules! table_args {
    ($(#[doc = $doc:literal])* $name:ident { $($key:ident: $ty:ty),* $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            $(pub $key: $ty,)*
        }

        impl FromArgMatches for $name {
            fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
                Ok($name {
                    $($key: take::<$ty>(m, stringify!($key))?,)*
                })
            }

            fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(m)?;
                Ok(())
            }
        }

        impl Args for $name {
            fn augment_args(cmd: Command) -> Command {
                cmd$(.arg(spec(stringify!($key)).arg()))*
            }

            fn augment_args_for_update(cmd: Command) -> Command {
                Self::augment_args(cmd)
            }
        }
    };
}

table_args! {
    /// `--device` and `--dtype`: where and in what precision the model runs.
    EngineArgs {
        device: DeviceChoice,
        dtype: DTypeChoice,
    }
}

table_args! {
    /// `--cache-dir` and `--no-weights-cache`: how a load uses the weights cache.
    CacheArgs {
        cache_dir: Option<PathBuf>,
        no_weights_cache: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Both {
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        cache: CacheArgs,
    }

    #[test]
    fn the_flags_parse_as_serve_parses_them_and_default_alike() {
        use clap::Parser;
        let b = Both::try_parse_from(["x"]).unwrap();
        assert_eq!(
            (b.engine.device, b.engine.dtype),
            (DeviceChoice::Auto, DTypeChoice::Auto)
        );
        assert_eq!((b.cache.cache_dir, b.cache.no_weights_cache), (None, false));
        let b = Both::try_parse_from([
            "x",
            "--device",
            "cpu",
            "--dtype",
            "int8",
            "--cache-dir",
            "/c",
            "--no-weights-cache",
        ])
        .unwrap();
        assert_eq!(b.engine.device, DeviceChoice::Cpu);
        assert_eq!(b.engine.dtype.to_string(), "int8");
        assert_eq!(
            b.cache.cache_dir.as_deref(),
            Some(std::path::Path::new("/c"))
        );
        assert!(b.cache.no_weights_cache);
        let e = Both::try_parse_from(["x", "--device", "gpu"]).unwrap_err();
        assert!(e.to_string().contains("unknown device"), "{e}");
    }
}
