//! The types settings are written in, and [`SettingType`]: how each becomes the value [`Config`] holds.
//!
//! [`Config`]: super::Config

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A type a setting is written in (flag, environment variable, file value) and the type [`Config`] holds for
/// it: the same type for most, [`Duration`] for a [`HumanDuration`], `Option<SocketAddr>` for a
/// [`MetricsListen`].
///
/// [`Config`]: super::Config
pub trait SettingType: FromStr + Clone {
    /// What the effective configuration holds.
    type Value;

    /// The effective value.
    fn value(self) -> Self::Value;

    /// Whether the value means "not set" (an empty string, secret or path): a setting without a default
    /// is then left unset.
    fn is_unset(&self) -> bool {
        false
    }
}

/// Types held as they are written.
macro_rules! held_as_written {
    ($($t:ty),* $(,)?) => {$(
        impl SettingType for $t {
            type Value = $t;
            fn value(self) -> $t {
                self
            }
        }
    )*};
}

held_as_written!(
    u8,
    u16,
    u32,
    u64,
    usize,
    f64,
    bool,
    SocketAddr,
    BackendMode,
    LogFormat,
    Reflection
);

impl SettingType for Switch {
    type Value = bool;
    fn value(self) -> bool {
        self.0
    }
}

impl SettingType for String {
    type Value = String;
    fn value(self) -> String {
        self
    }
    fn is_unset(&self) -> bool {
        self.is_empty()
    }
}

impl SettingType for PathBuf {
    type Value = PathBuf;
    fn value(self) -> PathBuf {
        self
    }
    fn is_unset(&self) -> bool {
        self.as_os_str().is_empty()
    }
}

impl SettingType for Secret {
    type Value = Secret;
    fn value(self) -> Secret {
        self
    }
    fn is_unset(&self) -> bool {
        self.0.is_empty()
    }
}

impl SettingType for HumanDuration {
    type Value = Duration;
    fn value(self) -> Duration {
        self.0
    }
}

impl SettingType for MetricsListen {
    type Value = Option<SocketAddr>;
    fn value(self) -> Option<SocketAddr> {
        self.0
    }
}

/// Where entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendMode {
    /// Only the in-process memory tier.
    Memory,
    /// Only Redis: Redis unreachable means UNAVAILABLE.
    Redis,
    /// Redis, falling back to the memory tier while Redis is unreachable.
    Hybrid,
}

impl BackendMode {
    /// The lowercase name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Hybrid => "hybrid",
        }
    }
}

impl FromStr for BackendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err("expected one of memory, redis, hybrid".to_owned()),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".to_owned()),
        }
    }
}

/// Who may use server reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reflection {
    /// Everyone (grpcurl works without a descriptor set).
    On,
    /// Nobody: reflection is not served.
    Off,
    /// Callers with a valid token of the tokens file.
    Auth,
}

impl FromStr for Reflection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "auth" => Ok(Self::Auth),
            _ => Err("expected on, off or auth".to_owned()),
        }
    }
}

/// A switch written `on` / `off` (also `true` / `false`, `yes` / `no`, `1` / `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl FromStr for Switch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Ok(Self(true)),
            "off" | "false" | "no" | "0" => Ok(Self(false)),
            _ => Err("expected on or off".to_owned()),
        }
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bool(bool),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Bool(b) => Ok(Self(b)),
            Written::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A duration written the human way (`250ms`, `5s`, `1h`) in files and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("{e} (expected e.g. 250ms, 5s, 1h)"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An address to listen on, or `off` (also `none` or empty): none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "none" | "" => Ok(Self(None)),
            addr => addr
                .parse()
                .map(|a| Self(Some(a)))
                .map_err(|_| format!("{addr:?} must be host:port or \"off\"")),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
