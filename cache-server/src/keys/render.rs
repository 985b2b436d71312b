//! The injective rendering of key tags to storage keys, its percent-escaping, and [`parse_rendered`], which
//! inverts it.

use std::fmt::Write as _;

use super::options::md5_hex;
use super::{CacheType, KeyTags};

fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '%' | ':' | '*' | '?' | '[' | ']' | '\\' | '{' | '}' | ' '
    )
}

/// Appends `component` percent-escaped as in rendered keys (`%`, `:`, glob characters, braces, space).
// Hand-written, not `percent-encoding`: that crate always escapes non-ASCII bytes (stored keys would change).
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

pub(super) fn render_into(out: &mut String, tags: &KeyTags, format: &str, options_json: &str) {
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

#[cfg(test)]
mod tests {
    use cache_proto::pb;
    use proptest::prelude::*;

    use super::*;
    use crate::keys::test_support::{arb_key, key, ks};
    use crate::keys::{Keyspace, canonical_options_json};

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
    }
}
