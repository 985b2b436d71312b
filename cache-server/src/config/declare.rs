//! `settings!`: one declaration per setting, from which the layer struct (clap flags + TOML keys), the
//! environment reader, the overlay, the effective config struct and the documentation table are generated.
//!
//! One invocation declares one group: the top level, or one TOML table such as `[redis]`. Each setting is one
//! line (its doc comment is the documentation table's description and the `--help` text):
//!
//! ```text
//! /// Redis port
//! port: u16 = "6379", env "REDIS_PORT", flag "redis-port";
//! /// Redis ACL username
//! username: String = unset, env "REDIS_USERNAME", flag "redis-username";
//! /// largest value accepted, in bytes (at most 1 GiB)
//! max_value_bytes: u64 = "67108864" ("64 MiB"), env "CACHE_MAX_VALUE_BYTES", flag "max-value-bytes";
//! ```
//!
//! - the type is what is written (any `SettingType`); the config holds its `Value`
//!   (`Duration` for a `HumanDuration`), or an `Option` of it when the default is `unset`;
//! - the default is a string parsed like a flag value (a unit test parses every default), or `unset`; an
//!   optional `("note")` follows it in the documentation table;
//! - the file key is the field name, inside the group's table;
//! - `#[raw]` before the name keeps the setting out of the config struct: a `derived` field computes what
//!   the config holds from it (e.g. the memory capacity in bytes from `max_size_mb`).
//!
//! For every setting the layer also gets a method of the same name returning its effective value (the
//! layer's, else the default), which the `derived` functions use.

/// Declares one group of settings: see the module documentation.
macro_rules! settings {
    (
        $(#[doc = $layer_doc:literal])+
        layer $Layer:ident;
        $(#[doc = $config_doc:literal])+
        config $Config:ident;
        table $table:literal;
        settings {
            $(
                $(#[doc = $doc:literal])+
                $(#[$raw:ident])?
                $field:ident: $ty:ty = $default:tt $(($note:literal))?, env $env:literal, flag $flag:literal;
            )*
        }
        $(nested {
            $(#[doc = $ndoc:literal])+
            $nfield:ident: $NLayer:ident => $NConfig:ident;
        })?
        $(derived {
            $(
                $(#[doc = $ddoc:literal])+
                $dfield:ident: $dty:ty = $dfn:path;
            )*
        })?
    ) => {
        $(#[doc = $layer_doc])+
        #[derive(Debug, Clone, Default, serde::Deserialize, clap::Args)]
        #[serde(default, deny_unknown_fields)]
        pub struct $Layer {
            $(
                $(#[doc = $doc])+
                #[arg(
                    long = $flag,
                    help = $crate::config::declare::help(
                        &[$($doc),+], $env, $crate::config::declare::settings!(@shown $default $(($note))?),
                    ),
                )]
                pub $field: Option<$ty>,
            )*
            $(
                $(#[doc = $ndoc])+
                #[command(flatten)]
                pub $nfield: $NLayer,
            )?
        }

        $(#[doc = $config_doc])+
        #[derive(Debug, Clone)]
        pub struct $Config {
            $(
                // `#[raw]` settings get no field: `cfg(any())` is always false.
                $(#[cfg_attr(any(), $raw)] #[cfg(any())])?
                $(#[doc = $doc])+
                pub $field: $crate::config::declare::settings!(@ty $ty, $default),
            )*
            $(
                $(#[doc = $ndoc])+
                pub $nfield: $NConfig,
            )?
            $($(
                $(#[doc = $ddoc])+
                pub $dfield: $dty,
            )*)?
        }

        impl $Layer {
            $(
                #[doc = concat!("The effective `", stringify!($field), "`: this layer's value, else the default.")]
                pub fn $field(&self) -> $crate::config::declare::settings!(@ty $ty, $default) {
                    $crate::config::declare::settings!(@value self.$field.clone(), $ty, $env, $default)
                }
            )*

            /// Reads this layer from environment variables (`env` is passed in: loading never reads the process
            /// environment itself). Empty values count as unset.
            ///
            /// # Errors
            /// A value that does not parse, naming the variable, its value and what was expected.
            pub fn from_env(
                env: &std::collections::HashMap<String, String>,
            ) -> Result<Self, $crate::config::ConfigError> {
                Ok(Self {
                    $($field: $crate::config::declare::env_value(env, $env)?,)*
                    $($nfield: $NLayer::from_env(env)?,)?
                })
            }

            /// Overlays `other` on `self`: every setting `other` sets wins.
            #[must_use]
            pub fn overlay(self, other: Self) -> Self {
                Self {
                    $($field: other.$field.or(self.$field),)*
                    $($nfield: self.$nfield.overlay(other.$nfield),)?
                }
            }

            /// The effective settings of this group (defaults applied, derived fields computed), not yet
            /// validated.
            ///
            /// # Errors
            /// A derived field that cannot be computed.
            pub fn resolve(&self) -> Result<$Config, $crate::config::ConfigError> {
                Ok($Config {
                    $(
                        $(#[cfg_attr(any(), $raw)] #[cfg(any())])?
                        $field: self.$field(),
                    )*
                    $($nfield: self.$nfield.resolve()?,)?
                    $($($dfield: $dfn(self)?,)*)?
                })
            }

            /// The documentation rows of this group's settings (nested groups not included), in declaration
            /// order.
            pub fn rows() -> Vec<$crate::config::table::Row> {
                vec![$(
                    $crate::config::table::Row {
                        setting: $crate::config::declare::join(&[$($doc),+]),
                        env: $env,
                        flag: concat!("--", $flag),
                        file_key: $crate::config::declare::file_key($table, stringify!($field)),
                        default: $crate::config::declare::settings!(@shown $default $(($note))?),
                    },
                )*]
            }
        }
    };

    (@ty $ty:ty, unset) => { Option<<$ty as $crate::config::SettingType>::Value> };
    (@ty $ty:ty, $default:literal) => { <$ty as $crate::config::SettingType>::Value };

    (@value $v:expr, $ty:ty, $env:literal, unset) => {
        $v.filter(|v| !$crate::config::SettingType::is_unset(v))
            .map($crate::config::SettingType::value)
    };
    (@value $v:expr, $ty:ty, $env:literal, $default:literal) => {
        $crate::config::SettingType::value(
            $v.unwrap_or_else(|| $crate::config::declare::default_value::<$ty>($env, $default)),
        )
    };

    (@shown unset) => { "unset" };
    (@shown unset ($note:literal)) => { concat!("unset (", $note, ")") };
    (@shown $default:literal) => { concat!("`", $default, "`") };
    (@shown $default:literal ($note:literal)) => { concat!("`", $default, "` (", $note, ")") };
}

pub(crate) use settings;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use super::ConfigError;

/// Reads one environment variable; empty (or blank) counts as unset.
pub(crate) fn env_value<T: FromStr>(
    env: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: fmt::Display,
{
    match env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|e: T::Err| ConfigError::Env {
            name,
            value: v.to_owned(),
            expected: e.to_string(),
        }),
    }
}

/// Parses a declared default. Every default is parsed by a unit test, so this cannot fail at run time.
pub(crate) fn default_value<T: FromStr>(env: &str, default: &str) -> T
where
    T::Err: fmt::Display,
{
    default
        .parse()
        .unwrap_or_else(|e| panic!("the declared default {default:?} of {env} does not parse: {e}"))
}

/// One line from the lines of a doc comment.
pub(crate) fn join(doc: &[&str]) -> String {
    doc.iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `--help` text of a flag: its description, environment variable and default (if it has one).
pub(crate) fn help(doc: &[&str], env: &str, default: &str) -> String {
    let text = join(doc).replace('`', "");
    if default.starts_with("unset") {
        format!("{text} [env: {env}]")
    } else {
        format!(
            "{text} [env: {env}] [default: {}]",
            default.replace('`', "")
        )
    }
}

/// The file key of a field: `field` at the top level, `table.field` inside a table.
pub(crate) fn file_key(table: &str, field: &str) -> String {
    if table.is_empty() {
        field.to_owned()
    } else {
        format!("{table}.{field}")
    }
}
