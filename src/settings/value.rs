//! The types a setting can have, and how each parses from a flag, from TOML and from its
//! default text.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

use crate::engine::{DTypeChoice, DeviceChoice};

/// How a setting is given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `--key VALUE`; the last one given wins.
    One,
    /// `--key`, no value: sets it to true.
    Switch,
    /// `--key VALUE`, repeatable: every one given, in order.
    Many,
}

/// A type a setting can have: how a flag value, a TOML value and the default text parse into
/// it, and how it prints back as TOML.
pub trait Value: Sized + Clone {
    const SHAPE: Shape;
    /// One flag value, or the default text (`""` is "unset" for optional settings).
    fn parse(text: &[String]) -> Result<Self, String>;
    fn from_toml(v: toml::Value) -> Result<Self, String>;
    /// `None`: unset, printed as a comment.
    fn to_toml(&self) -> Option<toml::Value>;
    /// Makes a path from the file relative to the file's directory.
    fn rebase(&mut self, _base: &Path) {}
    /// The values allowed, for `--help`, when they are a short list.
    const CHOICES: &'static [&'static str] = &[];
}

/// The value types one flag value parses into.
pub trait Scalar: Sized + Clone {
    fn parse_one(s: &str) -> Result<Self, String>;
    fn from_toml(v: toml::Value) -> Result<Self, String>;
    fn to_toml(&self) -> toml::Value;
    fn rebase(&mut self, _base: &Path) {}
    /// As [`Value::CHOICES`].
    const CHOICES: &'static [&'static str] = &[];
}

fn want(what: &str, v: &toml::Value) -> String {
    format!("expected {what}, found {} {v}", v.type_str())
}

fn last(text: &[String]) -> &str {
    text.last().map_or("", String::as_str)
}

macro_rules! scalar_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            const SHAPE: Shape = Shape::One;
            const CHOICES: &'static [&'static str] = <$t as Scalar>::CHOICES;
            fn parse(text: &[String]) -> Result<Self, String> {
                <$t as Scalar>::parse_one(last(text))
            }
            fn from_toml(v: toml::Value) -> Result<Self, String> {
                <$t as Scalar>::from_toml(v)
            }
            fn to_toml(&self) -> Option<toml::Value> {
                Some(<$t as Scalar>::to_toml(self))
            }
            fn rebase(&mut self, base: &Path) {
                <$t as Scalar>::rebase(self, base)
            }
        }
    )*};
}

macro_rules! integer_scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn parse_one(s: &str) -> Result<Self, String> {
                s.parse().map_err(|e| format!("{s:?}: {e} (expected a whole number)"))
            }
            fn from_toml(v: toml::Value) -> Result<Self, String> {
                match v {
                    toml::Value::Integer(n) => <$t>::try_from(n)
                        .map_err(|_| format!("{n} is out of range")),
                    other => Err(want("a whole number", &other)),
                }
            }
            fn to_toml(&self) -> toml::Value {
                toml::Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}

integer_scalar!(usize, u64, u32);

/// A string-typed scalar parsed with `FromStr` and printed with `Display`.
macro_rules! string_scalar {
    ($($t:ty => $parse:expr $(, one of $choices:expr)?;)*) => {$(
        impl Scalar for $t {
            $(const CHOICES: &'static [&'static str] = $choices;)?
            fn parse_one(s: &str) -> Result<Self, String> {
                ($parse)(s)
            }
            fn from_toml(v: toml::Value) -> Result<Self, String> {
                match v {
                    toml::Value::String(s) => Self::parse_one(&s),
                    other => Err(want("a string", &other)),
                }
            }
            fn to_toml(&self) -> toml::Value {
                toml::Value::String(self.to_string())
            }
        }
    )*};
}

string_scalar!(
    String => |s: &str| Ok::<_, String>(s.to_string());
    DeviceChoice => |s: &str| s.parse::<DeviceChoice>(), one of &["auto", "cpu", "cuda", "cuda:N"];
    DTypeChoice => |s: &str| s.parse::<DTypeChoice>(), one of &["auto", "f32", "f16", "bf16", "int8"];
    SocketAddr => socket_addr;
);

/// `HOST:PORT` with HOST an IP address (`[::1]` for IPv6) or a name, which resolves to its
/// first address here, once, as the client resolves it.
fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |why: String| format!("{s:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:4433)");
    let (host, port) = s
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && !p.is_empty())
        .ok_or_else(|| bad("no port".into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("{port:?} is not a port number")))?;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve {host:?}: {e}")))?
        .next()
        .ok_or_else(|| bad(format!("{host:?} has no address")))
}

impl Scalar for PathBuf {
    fn parse_one(s: &str) -> Result<Self, String> {
        Ok(PathBuf::from(s))
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Ok(PathBuf::from(s)),
            other => Err(want("a path", &other)),
        }
    }
    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.display().to_string())
    }
    fn rebase(&mut self, base: &Path) {
        if self.is_relative() {
            *self = base.join(&*self);
        }
    }
}

/// Permission bits in octal, `660`: in the file either `660` or `"660"`, both read as octal
/// digits like the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Scalar for Mode {
    fn parse_one(s: &str) -> Result<Self, String> {
        parse_mode(s).map(Mode)
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) => Self::parse_one(&n.to_string()),
            toml::Value::String(s) => Self::parse_one(&s),
            other => Err(want("an octal mode like 660", &other)),
        }
    }
    fn to_toml(&self) -> toml::Value {
        toml::Value::String(format!("{:o}", self.0))
    }
}

/// A set of CPUs in the kernel's list format (`cpuset(7)`, as `taskset -c` and systemd's
/// `CPUAffinity=` take it): `2`, `2-3`, `0,2-5`. Sorted, without repeats, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// CPUs beyond this are refused: the kernel's affinity mask (`CPU_SETSIZE`) stops there.
pub const MAX_CPU: usize = 1023;

impl Scalar for CpuList {
    fn parse_one(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?}: {why} (expected a CPU list like 2-3 or 0,2-5)");
        let cpu = |t: &str| -> Result<usize, String> {
            let n: usize = t.trim().parse().map_err(|_| bad("not a CPU number"))?;
            if n > MAX_CPU {
                return Err(bad(&format!("CPU {n} is over {MAX_CPU}")));
            }
            Ok(n)
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (cpu(a)?, cpu(b)?);
                    if a > b {
                        return Err(bad("a range must go up"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(cpu(part)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Self::parse_one(&s),
            toml::Value::Integer(n) => Self::parse_one(&n.to_string()),
            other => Err(want("a CPU list like \"2-3\"", &other)),
        }
    }
    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.to_string())
    }
}

impl std::fmt::Display for CpuList {
    /// Runs of consecutive CPUs as ranges, the way the kernel prints a list.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

scalar_value!(
    usize,
    u64,
    u32,
    String,
    PathBuf,
    SocketAddr,
    Mode,
    CpuList,
    DeviceChoice,
    DTypeChoice
);

impl<T: Scalar> Value for Option<T> {
    const SHAPE: Shape = Shape::One;
    fn parse(text: &[String]) -> Result<Self, String> {
        match last(text) {
            "" => Ok(None),
            s => T::parse_one(s).map(Some),
        }
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        T::from_toml(v).map(Some)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        self.as_ref().map(T::to_toml)
    }
    fn rebase(&mut self, base: &Path) {
        if let Some(v) = self {
            v.rebase(base);
        }
    }
}

impl<T: Scalar> Value for Vec<T> {
    const SHAPE: Shape = Shape::Many;
    fn parse(text: &[String]) -> Result<Self, String> {
        text.iter()
            .filter(|s| !s.is_empty())
            .map(|s| T::parse_one(s))
            .collect()
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Array(items) => items.into_iter().map(T::from_toml).collect(),
            other => Err(want("an array", &other)),
        }
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Array(self.iter().map(T::to_toml).collect()))
    }
}

impl Value for bool {
    const SHAPE: Shape = Shape::Switch;
    fn parse(text: &[String]) -> Result<Self, String> {
        match last(text) {
            "" | "false" => Ok(false),
            "true" => Ok(true),
            s => Err(format!("{s:?} is not true or false")),
        }
    }
    fn from_toml(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Boolean(b) => Ok(b),
            other => Err(want("true or false", &other)),
        }
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(*self))
    }
}

/// A row's range as `--help` and the errors word it: `at least 1`, `at most 9`, or both.
pub fn describe<T: Display, R: RangeBounds<T>>(range: &R) -> String {
    let low = match range.start_bound() {
        Bound::Included(a) => Some(format!("at least {a}")),
        Bound::Excluded(a) => Some(format!("over {a}")),
        Bound::Unbounded => None,
    };
    let high = match range.end_bound() {
        Bound::Included(b) => Some(format!("at most {b}")),
        Bound::Excluded(b) => Some(format!("under {b}")),
        Bound::Unbounded => None,
    };
    match (low, high) {
        (Some(l), Some(h)) => format!("{l} and {h}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => "anything".to_string(),
    }
}

/// Refuses a value outside its row's range, naming the key: a value that makes no sense is an
/// error to fix, never quietly replaced by the nearest one that does.
pub fn within<T: PartialOrd + Display, R: RangeBounds<T>>(
    key: &str,
    v: &T,
    range: &R,
) -> Result<(), String> {
    if range.contains(v) {
        Ok(())
    } else {
        Err(format!("{key} must be {}, got {v}", describe(range)))
    }
}

/// Parses an octal permission mode like `660`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode like 660"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--quic localhost:4433` as the help's HOST:PORT promises: a name resolves (to loopback
    /// here); what is not HOST:PORT says why.
    #[test]
    fn listen_addresses_take_names_and_say_what_is_wrong() {
        assert!(socket_addr("localhost:4433").unwrap().ip().is_loopback());
        assert_eq!(socket_addr("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert_eq!(
            socket_addr("localhost").unwrap_err(),
            "\"localhost\": no port (expected HOST:PORT, e.g. 127.0.0.1:4433)"
        );
        assert!(socket_addr("localhost:http")
            .unwrap_err()
            .contains("\"http\" is not a port number"));
    }

    #[test]
    fn ranges_name_the_key_the_bound_and_the_value() {
        assert_eq!(within("n", &1usize, &(1..)), Ok(()));
        assert_eq!(
            within("n", &0usize, &(1..)).unwrap_err(),
            "n must be at least 1, got 0"
        );
        assert_eq!(
            within("n", &10u64, &(1..=9)).unwrap_err(),
            "n must be at least 1 and at most 9, got 10"
        );
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        let p = |s: &str| CpuList::parse_one(s).map(|c| c.0);
        assert_eq!(p("2"), Ok(vec![2]));
        assert_eq!(p("0,2-4"), Ok(vec![0, 2, 3, 4]));
        assert_eq!(p("3,1,1-2"), Ok(vec![1, 2, 3]));
        for bad in ["", "a", "3-1", "1-", "-1", "1,,2", "1024"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("CPU"), "{bad:?}: {e}");
        }
        // Printed back in the same format, runs as ranges.
        let printed = CpuList::parse_one("0,2-4,7,8").unwrap().to_string();
        assert_eq!(printed, "0,2-4,7-8");
        assert_eq!(
            CpuList::parse_one(&printed).unwrap().0,
            vec![0, 2, 3, 4, 7, 8]
        );
    }
}
