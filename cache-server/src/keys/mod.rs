//! Cache keys: validation of `CacheKey` / `Selector` / patterns at the edge, and the one documented, injective
//! rendering to storage keys.
//!
//! A storage key is `<prefix>:<namespace>:<rendered>` where `<rendered>` is, per type:
//!
//! | type | rendered |
//! | --- | --- |
//! | export result | `export_result:<id>:<format>:<md5(options)>[:user:<u>][:project:<p>]` |
//! | metadata | `metadata:<id>[:user:<u>][:project:<p>]` |
//! | object info | `object:<id>[:user:<u>][:project:<p>]` |
//! | user preference | `user:<u>:preference:<id>[:project:<p>]` |
//! | system config | `config:<id>[:user:<u>][:project:<p>]` |
//!
//! Every component is percent-escaped for `% : * ? [ ] \ { }` and space, so a component never contains the
//! separator or a glob metacharacter, and the literal markers (`user`, `project`, `preference`) sit at
//! positions the parser knows: the rendering is injective and [`parse_rendered`] inverts it. Control
//! characters are rejected rather than escaped.
//!
//! The parts live in private submodules and are re-exported here: `cache_type` ([`CacheType`]), `field`
//! ([`InvalidField`] and the text checks), `render` (escaping, rendering and [`parse_rendered`]), `options`
//! (canonical export options and their MD5), `glob` ([`glob_match`]) and `selector` ([`Selector`]).

use std::sync::Arc;

use cache_proto::pb;

mod cache_type;
mod field;
mod glob;
mod options;
mod render;
mod selector;
#[cfg(test)]
pub(crate) mod test_support;

pub use cache_type::CacheType;
pub use field::{InvalidField, check_text};
pub use glob::glob_match;
#[cfg(any(test, feature = "fuzzing"))]
pub use glob::glob_match_reference;
pub use options::canonical_options_json;
#[cfg(any(test, feature = "fuzzing"))]
pub use options::{MAX_OPTIONS_DEPTH, MAX_OPTIONS_JSON_BYTES, MAX_OPTIONS_VALUES};
pub use render::{escape_into, parse_rendered};
pub use selector::Selector;

use field::check_component;
use render::render_into;

/// Longest id, format, user id or project id accepted, in bytes of UTF-8.
pub const MAX_COMPONENT_BYTES: usize = 512;
/// Longest rendered storage key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 2048;
/// Longest invalidation pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// The identifying fields of an entry, used to match selectors. Empty strings mean "not scoped".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyTags {
    /// The entry's type.
    pub cache_type: CacheType,
    /// `CacheKey.id`.
    pub id: String,
    /// The user scope, or empty.
    pub user_id: String,
    /// The project scope, or empty.
    pub project_id: String,
}

/// A validated key: its tags, its format and options, and its rendered storage key.
#[derive(Debug, Clone)]
pub struct Key {
    /// The identifying fields.
    pub tags: KeyTags,
    /// The export format (export results only), else empty.
    pub format: String,
    /// Canonical JSON of the export options (export results only), else empty.
    pub options_json: String,
    /// The full storage key, `<prefix>:<namespace>:<rendered>`.
    pub storage_key: Arc<str>,
    /// Length of the keyspace base the storage key starts with.
    base_len: usize,
}

impl Key {
    /// The base of the keyspace the key lives in (`<prefix>:<namespace>:`, a prefix of its storage key).
    pub fn base(&self) -> &str {
        &self.storage_key[..self.base_len]
    }
}

/// The storage namespace: `<prefix>:<namespace>:`. With a tokens file, each tenant's calls live in the
/// keyspace whose namespace is the tenant's name (see `crate::auth`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keyspace {
    base: Arc<str>,
}

impl Keyspace {
    /// Builds a keyspace; both parts are escaped like key components.
    pub fn new(prefix: &str, namespace: &str) -> Self {
        let mut base = String::new();
        escape_into(&mut base, prefix);
        base.push(':');
        escape_into(&mut base, namespace);
        base.push(':');
        Self { base: base.into() }
    }

    /// `<prefix>:<namespace>:`, the start of every key this service stores.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The storage key of the entry of type `t` and id `id` with no user or project scope; `None` where
    /// there is no such entry (see [`CacheType::has_unscoped_key`]).
    pub fn unscoped_key(&self, t: CacheType, id: &str) -> Option<String> {
        if !t.has_unscoped_key() {
            return None;
        }
        let tags = KeyTags {
            cache_type: t,
            id: id.to_owned(),
            user_id: String::new(),
            project_id: String::new(),
        };
        let mut key = String::with_capacity(self.base.len() + 16 + id.len());
        key.push_str(&self.base);
        render_into(&mut key, &tags, "", "");
        Some(key)
    }

    /// Validates a proto key and renders it. `field` is the path of the key in the request (e.g. `key`).
    pub fn key(&self, key: Option<&pb::CacheKey>, field: &str) -> Result<Key, InvalidField> {
        let key = key.ok_or_else(|| InvalidField::new(field, "is required"))?;
        let f = |name: &str| format!("{field}.{name}");
        let cache_type = CacheType::from_proto(key.r#type)
            .ok_or_else(|| InvalidField::new(f("type"), "must be set to a known cache type"))?;
        check_component(&key.id, true, || f("id"))?;
        check_component(&key.user_id, false, || f("user_id"))?;
        check_component(&key.project_id, false, || f("project_id"))?;
        check_component(&key.format, false, || f("format"))?;
        let has_options = key.options.as_ref().is_some_and(|o| !o.fields.is_empty());
        let (format, options_json) = if cache_type == CacheType::ExportResult {
            if key.format.is_empty() {
                return Err(InvalidField::new(
                    f("format"),
                    "is required for export results",
                ));
            }
            let options_json = canonical_options_json(key.options.as_ref())
                .map_err(|reason| InvalidField::new(f("options"), reason))?;
            (key.format.clone(), options_json)
        } else {
            if !key.format.is_empty() {
                return Err(InvalidField::new(
                    f("format"),
                    "is only allowed for export results",
                ));
            }
            if has_options {
                return Err(InvalidField::new(
                    f("options"),
                    "are only allowed for export results",
                ));
            }
            (String::new(), String::new())
        };
        if cache_type == CacheType::UserPreference && key.user_id.is_empty() {
            return Err(InvalidField::new(
                f("user_id"),
                "is required for user preferences",
            ));
        }
        let tags = KeyTags {
            cache_type,
            id: key.id.clone(),
            user_id: key.user_id.clone(),
            project_id: key.project_id.clone(),
        };
        let mut storage_key = String::with_capacity(self.base.len() + 64);
        storage_key.push_str(&self.base);
        render_into(&mut storage_key, &tags, &format, &options_json);
        if storage_key.len() > MAX_KEY_BYTES {
            return Err(InvalidField::new(
                field,
                format!(
                    "renders to {} bytes, more than {MAX_KEY_BYTES}",
                    storage_key.len()
                ),
            ));
        }
        Ok(Key {
            tags,
            format,
            options_json,
            storage_key: storage_key.into(),
            base_len: self.base.len(),
        })
    }

    /// Validates a selector. `field` is its path in the request.
    pub fn selector(&self, selector: &pb::Selector, field: &str) -> Result<Selector, InvalidField> {
        let f = |name: &str| format!("{field}.{name}");
        let cache_type = match selector.r#type {
            0 => None,
            t => Some(
                CacheType::from_proto(t)
                    .ok_or_else(|| InvalidField::new(f("type"), "is not a known cache type"))?,
            ),
        };
        check_component(&selector.object_id, false, || f("object_id"))?;
        check_component(&selector.user_id, false, || f("user_id"))?;
        check_component(&selector.project_id, false, || f("project_id"))?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let selector = Selector {
            cache_type,
            object_id: non_empty(&selector.object_id),
            user_id: non_empty(&selector.user_id),
            project_id: non_empty(&selector.project_id),
        };
        if selector.cache_type.is_none()
            && selector.object_id.is_none()
            && selector.user_id.is_none()
            && selector.project_id.is_none()
        {
            return Err(InvalidField::new(
                field,
                "must set at least one of type, object_id, user_id, project_id",
            ));
        }
        Ok(selector)
    }

    /// Validates an operator's glob and anchors it under this keyspace. The keyspace part may be given or not.
    pub fn pattern(&self, pattern: &str, field: &str) -> Result<String, InvalidField> {
        if pattern.is_empty() {
            return Err(InvalidField::new(field, "must not be empty"));
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(InvalidField::new(
                field,
                format!("is longer than {MAX_PATTERN_BYTES} bytes"),
            ));
        }
        if pattern.chars().any(char::is_control) {
            return Err(InvalidField::new(
                field,
                "must not contain control characters",
            ));
        }
        let relative = pattern.strip_prefix(self.base()).unwrap_or(pattern);
        if relative.ends_with('\\') && !relative.ends_with("\\\\") {
            return Err(InvalidField::new(
                field,
                "must not end with a lone escape character",
            ));
        }
        Ok(format!("{}{relative}", self.base))
    }

    /// Splits a storage key of this keyspace into its tags; `None` for keys that are not entries of ours.
    #[cfg(test)]
    pub fn parse(&self, storage_key: &str) -> Option<KeyTags> {
        parse_rendered(storage_key.strip_prefix(self.base())?)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{key, ks};
    use super::*;

    #[test]
    fn unscoped_key_is_the_rendered_key_of_the_entry_with_no_scope() {
        let ks = ks();
        for t in CacheType::ALL {
            let format = if t == CacheType::ExportResult {
                "json"
            } else {
                ""
            };
            let user = if t == CacheType::UserPreference {
                "u"
            } else {
                ""
            };
            let rendered = ks
                .key(Some(&key(t.to_proto(), "a b:c%", format, user, "")), "key")
                .unwrap()
                .storage_key;
            match ks.unscoped_key(t, "a b:c%") {
                Some(k) => {
                    assert!(t.has_unscoped_key());
                    assert_eq!(k, &*rendered, "{t:?}");
                }
                None => assert!(
                    matches!(t, CacheType::ExportResult | CacheType::UserPreference),
                    "{t:?}"
                ),
            }
        }
    }

    #[test]
    fn rejects_bad_keys_naming_the_field() {
        let ks = ks();
        let cases = [
            (key(pb::CacheType::Unspecified, "x", "", "", ""), "key.type"),
            (key(pb::CacheType::Metadata, "", "", "", ""), "key.id"),
            (
                key(
                    pb::CacheType::Metadata,
                    &"x".repeat(MAX_COMPONENT_BYTES + 1),
                    "",
                    "",
                    "",
                ),
                "key.id",
            ),
            (key(pb::CacheType::Metadata, "a\nb", "", "", ""), "key.id"),
            (
                key(pb::CacheType::Metadata, "a", "", "u\u{7f}", ""),
                "key.user_id",
            ),
            (
                key(pb::CacheType::ExportResult, "a", "", "", ""),
                "key.format",
            ),
            (
                key(pb::CacheType::Metadata, "a", "json", "", ""),
                "key.format",
            ),
            (
                key(pb::CacheType::UserPreference, "theme", "", "", ""),
                "key.user_id",
            ),
        ];
        for (k, field) in cases {
            let err = ks.key(Some(&k), "key").unwrap_err();
            assert_eq!(err.field, field, "{k:?} -> {err}");
        }
        assert_eq!(ks.key(None, "key").unwrap_err().field, "key");
        let mut k = key(pb::CacheType::Metadata, "a", "", "", "");
        k.r#type = 99;
        assert_eq!(ks.key(Some(&k), "key").unwrap_err().field, "key.type");
    }

    #[test]
    fn pattern_is_anchored_under_the_keyspace() {
        assert_eq!(
            ks().pattern("metadata:*", "pattern").unwrap(),
            "cache:default:metadata:*"
        );
        assert_eq!(
            ks().pattern("cache:default:metadata:*", "pattern").unwrap(),
            "cache:default:metadata:*"
        );
        assert!(ks().pattern("", "pattern").is_err());
        assert!(ks().pattern("a\u{0}", "pattern").is_err());
    }
}
