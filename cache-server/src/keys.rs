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

use std::fmt::{self, Write as _};
use std::sync::Arc;

use cache_proto::pb;
use md5::{Digest as _, Md5};

/// Longest id, format, user id or project id accepted, in bytes of UTF-8.
pub const MAX_COMPONENT_BYTES: usize = 512;
/// Longest rendered storage key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 2048;
/// Longest invalidation pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// A caller mistake in a request field, mapped to `INVALID_ARGUMENT`; `field` is the path in the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Path of the offending field, e.g. `key.id` or `requests[3].key.format`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, e.g. `requests[3].` for batch calls.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// The kind of entry (a validated `pb::CacheType`, never unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheType {
    /// Export of an object to a format.
    ExportResult,
    /// Metadata of an object.
    Metadata,
    /// Information about an object.
    ObjectInfo,
    /// A user's preference.
    UserPreference,
    /// A system configuration value.
    SystemConfig,
}

impl CacheType {
    /// Every type, in proto order.
    pub const ALL: [CacheType; 5] = [
        CacheType::ExportResult,
        CacheType::Metadata,
        CacheType::ObjectInfo,
        CacheType::UserPreference,
        CacheType::SystemConfig,
    ];

    /// Converts a proto enum value; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::CacheType::try_from(value).ok()? {
            pb::CacheType::Unspecified => None,
            pb::CacheType::ExportResult => Some(Self::ExportResult),
            pb::CacheType::Metadata => Some(Self::Metadata),
            pb::CacheType::ObjectInfo => Some(Self::ObjectInfo),
            pb::CacheType::UserPreference => Some(Self::UserPreference),
            pb::CacheType::SystemConfig => Some(Self::SystemConfig),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::CacheType {
        match self {
            Self::ExportResult => pb::CacheType::ExportResult,
            Self::Metadata => pb::CacheType::Metadata,
            Self::ObjectInfo => pb::CacheType::ObjectInfo,
            Self::UserPreference => pb::CacheType::UserPreference,
            Self::SystemConfig => pb::CacheType::SystemConfig,
        }
    }

    /// The first segment of rendered keys of this type.
    pub fn segment(self) -> &'static str {
        match self {
            Self::ExportResult => "export_result",
            Self::Metadata => "metadata",
            Self::ObjectInfo => "object",
            Self::UserPreference => "user",
            Self::SystemConfig => "config",
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::ExportResult => "export_result",
            Self::Metadata => "metadata",
            Self::ObjectInfo => "object_info",
            Self::UserPreference => "user_preference",
            Self::SystemConfig => "system_config",
        }
    }

    /// Dense index in `0..5`, for per-type counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether `id` names an object (export results, metadata, object info) rather than a preference or
    /// configuration name; an untyped object selector matches only these.
    pub fn is_object(self) -> bool {
        matches!(self, Self::ExportResult | Self::Metadata | Self::ObjectInfo)
    }

    /// Whether type and id alone name the entry that has no user or project scope: not for export results
    /// (format and options vary) nor user preferences (always scoped to a user).
    pub fn has_unscoped_key(self) -> bool {
        !matches!(self, Self::ExportResult | Self::UserPreference)
    }
}

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
}

/// The storage namespace: `<prefix>:<namespace>:`. The namespace is reserved for tenants.
#[derive(Debug, Clone)]
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
    pub fn parse(&self, storage_key: &str) -> Option<KeyTags> {
        parse_rendered(storage_key.strip_prefix(self.base())?)
    }
}

/// A validated invalidation selector: an entry matches if it matches every field that is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Only entries of this type.
    pub cache_type: Option<CacheType>,
    /// Entries with this id (object types only, unless `cache_type` is set).
    pub object_id: Option<String>,
    /// Entries scoped to this user.
    pub user_id: Option<String>,
    /// Entries scoped to this project.
    pub project_id: Option<String>,
}

impl Selector {
    /// Whether an entry with these tags matches.
    pub fn matches(&self, tags: &KeyTags) -> bool {
        let type_ok = match self.cache_type {
            Some(t) => t == tags.cache_type,
            None => self.object_id.is_none() || tags.cache_type.is_object(),
        };
        type_ok
            && self.object_id.as_deref().is_none_or(|id| id == tags.id)
            && self.user_id.as_deref().is_none_or(|u| u == tags.user_id)
            && self
                .project_id
                .as_deref()
                .is_none_or(|p| p == tags.project_id)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = self.cache_type {
            parts.push(format!("type={}", t.label()));
        }
        if self.object_id.is_some() {
            parts.push("object".to_owned());
        }
        if self.user_id.is_some() {
            parts.push("user".to_owned());
        }
        if self.project_id.is_some() {
            parts.push("project".to_owned());
        }
        f.write_str(&parts.join(","))
    }
}

/// Checks one key component; `field` names it in the error (built only on error: this runs on every call).
fn check_component(
    value: &str,
    required: bool,
    field: impl FnOnce() -> String,
) -> Result<(), InvalidField> {
    if value.is_empty() {
        return if required {
            Err(InvalidField::new(field(), "must not be empty"))
        } else {
            Ok(())
        };
    }
    check_text(value, MAX_COMPONENT_BYTES, field)
}

/// Checks a text field: at most `max` bytes, no control characters. `field` names it in the error (built
/// only on error).
pub fn check_text(
    value: &str,
    max: usize,
    field: impl FnOnce() -> String,
) -> Result<(), InvalidField> {
    if value.len() > max {
        return Err(InvalidField::new(
            field(),
            format!("is {} bytes, more than {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field(),
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '%' | ':' | '*' | '?' | '[' | ']' | '\\' | '{' | '}' | ' '
    )
}

/// Appends `component` percent-escaped as in rendered keys (`%`, `:`, glob characters, braces, space).
// Hand-written, not `percent-encoding`: that crate always escapes non-ASCII bytes, which would change stored keys.
pub fn escape_into(out: &mut String, component: &str) {
    if !component.chars().any(needs_escape) {
        out.push_str(component);
        return;
    }
    for c in component.chars() {
        if needs_escape(c) {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
}

fn unescape(component: &str) -> Option<String> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = component.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn render_into(out: &mut String, tags: &KeyTags, format: &str, options_json: &str) {
    out.push_str(tags.cache_type.segment());
    out.push(':');
    if tags.cache_type == CacheType::UserPreference {
        escape_into(out, &tags.user_id);
        out.push_str(":preference:");
        escape_into(out, &tags.id);
    } else {
        escape_into(out, &tags.id);
        if tags.cache_type == CacheType::ExportResult {
            out.push(':');
            escape_into(out, format);
            out.push(':');
            out.push_str(&md5_hex(options_json.as_bytes()));
        }
        if !tags.user_id.is_empty() {
            out.push_str(":user:");
            escape_into(out, &tags.user_id);
        }
    }
    if !tags.project_id.is_empty() {
        out.push_str(":project:");
        escape_into(out, &tags.project_id);
    }
}

/// Inverts the rendering (without the keyspace part); `None` if `rendered` is not a rendered key.
pub fn parse_rendered(rendered: &str) -> Option<KeyTags> {
    let segments: Vec<&str> = rendered.split(':').collect();
    let (cache_type, id, user_id, rest) = match segments.as_slice() {
        ["user", user, "preference", id, rest @ ..] => {
            (CacheType::UserPreference, *id, unescape(user)?, rest)
        }
        [kind, id, rest @ ..] => {
            let cache_type = match *kind {
                "export_result" => CacheType::ExportResult,
                "metadata" => CacheType::Metadata,
                "object" => CacheType::ObjectInfo,
                "config" => CacheType::SystemConfig,
                _ => return None,
            };
            let rest = if cache_type == CacheType::ExportResult {
                match rest {
                    [_format, hash, rest @ ..] if hash.len() == 32 => rest,
                    _ => return None,
                }
            } else {
                rest
            };
            match rest {
                ["user", user, rest @ ..] if cache_type != CacheType::UserPreference => {
                    (cache_type, *id, unescape(user)?, rest)
                }
                _ => (cache_type, *id, String::new(), rest),
            }
        }
        _ => return None,
    };
    let project_id = match rest {
        [] => String::new(),
        ["project", project] => unescape(project)?,
        _ => return None,
    };
    Some(KeyTags {
        cache_type,
        id: unescape(id)?,
        user_id,
        project_id,
    })
}

/// Lower-case hex MD5 of `bytes` (32 digits).
pub fn md5_hex(bytes: &[u8]) -> String {
    let digest: [u8; 16] = Md5::digest(bytes).into();
    let mut out = String::with_capacity(32);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Canonical JSON of export options: object keys sorted, integral numbers without a fraction (`1`, never
/// `1.0`), other numbers in Rust's shortest round-trip form, no whitespace. Absent and empty options are both
/// `{}`. Non-finite numbers are refused.
pub fn canonical_options_json(options: Option<&prost_types::Struct>) -> Result<String, String> {
    let mut out = String::new();
    match options {
        Some(s) => write_struct(&mut out, s)?,
        None => out.push_str("{}"),
    }
    Ok(out)
}

fn write_struct(out: &mut String, s: &prost_types::Struct) -> Result<(), String> {
    out.push('{');
    // prost_types::Struct keeps its fields in a BTreeMap: iteration is already sorted by key.
    for (i, (k, v)) in s.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, k);
        out.push(':');
        write_value(out, v)?;
    }
    out.push('}');
    Ok(())
}

fn write_value(out: &mut String, v: &prost_types::Value) -> Result<(), String> {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => out.push_str("null"),
        Some(Kind::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                return Err("numbers must be finite".to_owned());
            }
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                let _ = write!(out, "{}", *n as i64);
            } else {
                let _ = write!(out, "{n}");
            }
        }
        Some(Kind::StringValue(s)) => write_json_string(out, s),
        Some(Kind::StructValue(s)) => write_struct(out, s)?,
        Some(Kind::ListValue(l)) => {
            out.push('[');
            for (i, item) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
    }
    Ok(())
}

fn write_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("serializing a str cannot fail"));
}

/// Converts canonical options JSON back to a `Struct` for `CacheEntry.export_options`.
pub fn options_struct(options_json: &str) -> Option<prost_types::Struct> {
    if options_json.is_empty() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(options_json).ok()?;
    match json_to_value(value).kind {
        Some(prost_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Redis-compatible glob matching (`*`, `?`, `[abc]`, `[a-z]`, `[^a]`, `\x`), on bytes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let (mut star_p, mut star_t) = (usize::MAX, 0usize);
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = p;
                    star_t = t;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        if star_p == usize::MAX {
            return false;
        }
        p = star_p + 1;
        star_t += 1;
        t = star_t;
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against the class starting at `pattern[start] == b'['`; returns (matched, index after `]`),
/// or `None` if the class is not closed.
fn match_class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = if pattern[i] <= pattern[i + 2] {
                (pattern[i], pattern[i + 2])
            } else {
                (pattern[i + 2], pattern[i])
            };
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ks() -> Keyspace {
        Keyspace::new("cache", "default")
    }

    fn key(t: pb::CacheType, id: &str, format: &str, user: &str, project: &str) -> pb::CacheKey {
        pb::CacheKey {
            r#type: t as i32,
            id: id.into(),
            format: format.into(),
            options: None,
            user_id: user.into(),
            project_id: project.into(),
        }
    }

    fn options(json: serde_json::Value) -> prost_types::Struct {
        match json_to_value(json).kind {
            Some(prost_types::value::Kind::StructValue(s)) => s,
            _ => unreachable!(),
        }
    }

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
    fn renders_the_documented_layouts() {
        let ks = ks();
        let empty_hash = md5_hex(b"{}");
        let cases = [
            (
                key(pb::CacheType::ExportResult, "obj1", "json", "u1", "p1"),
                format!("cache:default:export_result:obj1:json:{empty_hash}:user:u1:project:p1"),
            ),
            (
                key(pb::CacheType::Metadata, "42", "", "7", ""),
                "cache:default:metadata:42:user:7".to_owned(),
            ),
            (
                key(pb::CacheType::ObjectInfo, "42", "", "", ""),
                "cache:default:object:42".to_owned(),
            ),
            (
                key(pb::CacheType::UserPreference, "theme", "", "u1", ""),
                "cache:default:user:u1:preference:theme".to_owned(),
            ),
            (
                key(pb::CacheType::SystemConfig, "flags", "", "", ""),
                "cache:default:config:flags".to_owned(),
            ),
        ];
        for (k, expected) in cases {
            assert_eq!(&*ks.key(Some(&k), "key").unwrap().storage_key, expected);
        }
    }

    #[test]
    fn escapes_separators_and_glob_characters() {
        let k = ks()
            .key(
                Some(&key(pb::CacheType::ObjectInfo, "a:b*c%d", "", "", "")),
                "key",
            )
            .unwrap();
        assert_eq!(&*k.storage_key, "cache:default:object:a%3Ab%2Ac%25d");
    }

    /// Escaped components are part of every stored key: these bytes must never change. Non-ASCII text is
    /// kept as is (a `percent-encoding` `AsciiSet` would escape every non-ASCII byte, e.g. `é` to `%C3%A9`).
    #[test]
    fn escaped_components_are_fixed() {
        let cases = [
            ("a:b", "a%3Ab"),
            ("a b", "a%20b"),
            ("a*b", "a%2Ab"),
            ("100%", "100%25"),
            ("{tag}", "%7Btag%7D"),
            ("?[]\\", "%3F%5B%5D%5C"),
            ("%3A", "%253A"),
            ("é", "é"),
            ("日本", "日本"),
            ("😀", "😀"),
            ("ü:é %7B", "ü%3Aé%20%257B"),
            ("plain-id_1.2", "plain-id_1.2"),
            ("~!@#$^&()+=,;'\"<>/|`", "~!@#$^&()+=,;'\"<>/|`"),
        ];
        for (component, escaped) in cases {
            let mut out = String::from("x:");
            escape_into(&mut out, component);
            assert_eq!(out, format!("x:{escaped}"), "{component:?}");
            assert_eq!(unescape(escaped).as_deref(), Some(component), "{escaped:?}");
        }
        assert_eq!(
            Keyspace::new("ca:che", "d e{f}").base(),
            "ca%3Ache:d%20e%7Bf%7D:"
        );
    }

    #[test]
    fn options_hash_ignores_field_order_and_number_format() {
        let a = options(serde_json::json!({"b": 1, "a": {"y": [1.0, "x"], "x": true}}));
        let b = options(serde_json::json!({"a": {"x": true, "y": [1, "x"]}, "b": 1.0}));
        assert_eq!(
            canonical_options_json(Some(&a)).unwrap(),
            canonical_options_json(Some(&b)).unwrap()
        );
        assert_eq!(
            canonical_options_json(Some(&a)).unwrap(),
            r#"{"a":{"x":true,"y":[1,"x"]},"b":1}"#
        );
        let c = options(serde_json::json!({"b": 2}));
        assert_ne!(
            canonical_options_json(Some(&a)).unwrap(),
            canonical_options_json(Some(&c)).unwrap()
        );
        let mut k1 = key(pb::CacheType::ExportResult, "o", "ifc", "", "");
        k1.options = Some(a);
        let mut k2 = k1.clone();
        k2.options = Some(b);
        assert_eq!(
            ks().key(Some(&k1), "key").unwrap().storage_key,
            ks().key(Some(&k2), "key").unwrap().storage_key
        );
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
    fn selector_matches_object_across_object_types_only() {
        let sel = ks()
            .selector(
                &pb::Selector {
                    object_id: "42".into(),
                    ..Default::default()
                },
                "selector",
            )
            .unwrap();
        let tags = |t, id: &str| KeyTags {
            cache_type: t,
            id: id.into(),
            user_id: "u".into(),
            project_id: String::new(),
        };
        assert!(sel.matches(&tags(CacheType::ExportResult, "42")));
        assert!(sel.matches(&tags(CacheType::Metadata, "42")));
        assert!(sel.matches(&tags(CacheType::ObjectInfo, "42")));
        assert!(!sel.matches(&tags(CacheType::UserPreference, "42")));
        assert!(!sel.matches(&tags(CacheType::Metadata, "420")));
        assert!(ks().selector(&pb::Selector::default(), "selector").is_err());
    }

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match(b"cache:*", b"cache:x:y"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[^a-c]x", b"bx"));
        assert!(glob_match(b"a\\*", b"a*"));
        assert!(!glob_match(b"a\\*", b"ab"));
        assert!(glob_match(b"*:user:7*", b"metadata:42:user:7:project:1"));
        assert!(!glob_match(b"metadata:4", b"metadata:42"));
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

    fn arb_component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            proptest::collection::vec(
                prop_oneof![
                    Just(':'),
                    Just('%'),
                    Just('*'),
                    Just('u'),
                    Just('1'),
                    Just('p'),
                    Just('é'),
                    Just('3'),
                    Just('A'),
                    any::<char>()
                ],
                0..6
            )
            .prop_map(|cs| cs.into_iter().filter(|c| !c.is_control()).collect()),
            Just("user".to_owned()),
            Just("project".to_owned()),
            Just("preference".to_owned()),
            Just("%3A".to_owned()),
        ]
    }

    fn arb_key() -> impl Strategy<Value = pb::CacheKey> {
        (
            1..=5i32,
            arb_component(),
            arb_component(),
            arb_component(),
            arb_component(),
            proptest::option::of(0..3u8),
        )
            .prop_map(|(t, id, format, user, project, opt)| {
                let id = if id.is_empty() { "i".to_owned() } else { id };
                let is_export = t == pb::CacheType::ExportResult as i32;
                let format = if is_export && format.is_empty() {
                    "f".to_owned()
                } else if is_export {
                    format
                } else {
                    String::new()
                };
                let user = if t == pb::CacheType::UserPreference as i32 && user.is_empty() {
                    "u".to_owned()
                } else {
                    user
                };
                let options = if is_export {
                    opt.map(|n| options(serde_json::json!({ "n": n })))
                } else {
                    None
                };
                pb::CacheKey {
                    r#type: t,
                    id,
                    format,
                    options,
                    user_id: user,
                    project_id: project,
                }
            })
    }

    fn semantic(k: &pb::CacheKey) -> (i32, String, String, String, String, String) {
        (
            k.r#type,
            k.id.clone(),
            k.format.clone(),
            canonical_options_json(k.options.as_ref()).unwrap(),
            k.user_id.clone(),
            k.project_id.clone(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn rendering_is_injective(a in arb_key(), b in arb_key()) {
            let ks = ks();
            let (ka, kb) = (ks.key(Some(&a), "key").unwrap(), ks.key(Some(&b), "key").unwrap());
            prop_assert_eq!(ka.storage_key == kb.storage_key, semantic(&a) == semantic(&b));
        }

        #[test]
        fn parse_inverts_rendering(a in arb_key()) {
            let ks = ks();
            let k = ks.key(Some(&a), "key").unwrap();
            prop_assert_eq!(ks.parse(&k.storage_key), Some(k.tags.clone()));
        }

        #[test]
        fn glob_never_panics(p in "[a-c*?\\[\\]\\\\^-]{0,8}", t in "[a-c\\[\\]]{0,8}") {
            let _ = glob_match(p.as_bytes(), t.as_bytes());
        }
    }
}
