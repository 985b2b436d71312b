//! Properties of keys (validation, the injective rendering and its parser), of invalidation globs and of the
//! canonical JSON of export options, for any input.

use cache_proto::pb;
use prost_types::value::Kind;

use crate::keys::{
    CacheType, Key, Keyspace, MAX_KEY_BYTES, MAX_OPTIONS_DEPTH, MAX_OPTIONS_JSON_BYTES,
    MAX_OPTIONS_VALUES, canonical_options_json, glob_match, glob_match_reference, parse_rendered,
};

/// Longest pattern × text product [`glob`] compares against the (quadratic) reference; longer inputs are only
/// matched.
const REFERENCE_CELLS: usize = 1 << 20;

/// Validating `key` never panics. A valid key renders under the keyspace's base, to at most
/// [`MAX_KEY_BYTES`] bytes with no glob character, brace or space anywhere and no control character after the
/// base; its tags are the request's fields, and [`parse_rendered`] gives them back.
pub fn key(keyspace: &Keyspace, key: &pb::CacheKey) -> Option<Key> {
    let valid = keyspace.key(Some(key), "key").ok()?;
    let storage_key = &*valid.storage_key;
    assert!(storage_key.len() <= MAX_KEY_BYTES, "{}", storage_key.len());
    assert!(
        !storage_key.contains(['*', '?', '[', ']', '\\', '{', '}', ' ']),
        "{storage_key:?}"
    );
    let rendered = storage_key
        .strip_prefix(keyspace.base())
        .expect("a key renders under its keyspace");
    assert!(!rendered.contains(char::is_control), "{rendered:?}");
    let tags = &valid.tags;
    assert_eq!(tags.cache_type.to_proto() as i32, key.r#type);
    assert_eq!(
        (&*tags.id, &*tags.user_id, &*tags.project_id),
        (&*key.id, &*key.user_id, &*key.project_id)
    );
    assert_eq!(
        parse_rendered(rendered).as_ref(),
        Some(tags),
        "{rendered:?}"
    );
    Some(valid)
}

/// Two valid keys render to the same storage key exactly when they name the same entry: same tags, format and
/// canonical options.
pub fn keys_are_injective(keyspace: &Keyspace, a: &pb::CacheKey, b: &pb::CacheKey) {
    let (Some(ka), Some(kb)) = (key(keyspace, a), key(keyspace, b)) else {
        return;
    };
    let same_entry =
        ka.tags == kb.tags && ka.format == kb.format && ka.options_json == kb.options_json;
    assert_eq!(
        ka.storage_key == kb.storage_key,
        same_entry,
        "{:?} {:?}",
        ka.storage_key,
        kb.storage_key
    );
}

/// Parsing any text as a rendered key never panics; tags it yields that make a valid key render to a key that
/// parses back to them (so a key read back from Redis names the entry it was stored as).
pub fn rendered(keyspace: &Keyspace, text: &str) {
    let Some(tags) = parse_rendered(text) else {
        return;
    };
    let is_export = tags.cache_type == CacheType::ExportResult;
    let request = pb::CacheKey {
        r#type: tags.cache_type.to_proto() as i32,
        id: tags.id.clone(),
        format: if is_export {
            "f".to_owned()
        } else {
            String::new()
        },
        options: None,
        user_id: tags.user_id.clone(),
        project_id: tags.project_id.clone(),
    };
    if let Some(valid) = key(keyspace, &request) {
        assert_eq!(valid.tags, tags);
    }
}

/// Matching never panics, and agrees with [`glob_match_reference`] (compared where the reference is cheap).
pub fn glob(pattern: &[u8], text: &[u8]) {
    let matched = glob_match(pattern, text);
    if pattern.len().saturating_mul(text.len()) <= REFERENCE_CELLS {
        assert_eq!(
            matched,
            glob_match_reference(pattern, text),
            "{:?} {:?}",
            String::from_utf8_lossy(pattern),
            String::from_utf8_lossy(text)
        );
    }
}

/// Canonicalisation never panics nor overflows the stack, however deep the options. It refuses exactly the
/// options with a non-finite number, nested more than [`MAX_OPTIONS_DEPTH`] levels, holding more than
/// [`MAX_OPTIONS_VALUES`] values or longer than [`MAX_OPTIONS_JSON_BYTES`] as JSON; otherwise it produces
/// a JSON object that canonicalises to itself once parsed back (numbers parse back exactly only with
/// serde_json's `float_roundtrip` feature: the fuzz targets enable it, the proptests draw numbers that any
/// parser reads exactly).
pub fn options(options: &prost_types::Struct) {
    let (depth, finite, values) = shape(options);
    let json = match canonical_options_json(Some(options)) {
        Ok(json) => json,
        Err(reason) => {
            assert!(
                depth > MAX_OPTIONS_DEPTH
                    || !finite
                    || values > MAX_OPTIONS_VALUES
                    || reason.contains("bytes"),
                "{reason}"
            );
            return;
        }
    };
    assert!(
        depth <= MAX_OPTIONS_DEPTH && finite && values <= MAX_OPTIONS_VALUES,
        "{depth} levels, finite: {finite}, {values} values"
    );
    assert!(json.len() <= MAX_OPTIONS_JSON_BYTES, "{} bytes", json.len());
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("canonical JSON parses");
    let serde_json::Value::Object(object) = parsed else {
        panic!("canonical JSON of options is an object: {json}");
    };
    let again = cache_proto::json::struct_from_json_object(object);
    assert_eq!(canonical_options_json(Some(&again)).as_ref(), Ok(&json));
}

/// The nesting depth of options (the options object is level 1), whether every number is finite, and how many
/// values they hold at every level, found without recursion.
fn shape(options: &prost_types::Struct) -> (usize, bool, usize) {
    let mut deepest = 1;
    let mut finite = true;
    let mut values = 0;
    let mut pending: Vec<(&prost_types::Value, usize)> =
        options.fields.values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = pending.pop() {
        values += 1;
        match &value.kind {
            Some(Kind::NumberValue(n)) => finite &= n.is_finite(),
            Some(Kind::StructValue(s)) => {
                deepest = deepest.max(depth + 1);
                pending.extend(s.fields.values().map(|v| (v, depth + 1)));
            }
            Some(Kind::ListValue(l)) => {
                deepest = deepest.max(depth + 1);
                pending.extend(l.values.iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    (deepest, finite, values)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost_types::{ListValue, Struct, Value};

    use super::*;
    use crate::keys::test_support::{arb_key, ks};

    /// Any text, with control characters, separators, escapes and over-long runs in the mix.
    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "(:|%|%3A|%2a|%\\+1|user|project|preference|[a-z]|é|\\*|\\{|\\n|\\x7f| ){0,10}",
            1 => ".{0,30}",
            1 => (0usize..3, "[a-z:]").prop_map(|(n, s)| s.repeat([511, 512, 513][n])),
        ]
    }

    /// Any key request: unknown types, any text in every field, and options with any numbers.
    fn arb_any_key() -> impl Strategy<Value = pb::CacheKey> {
        (
            -1..7i32,
            arb_text(),
            arb_text(),
            arb_text(),
            arb_text(),
            proptest::option::of(arb_options()),
        )
            .prop_map(
                |(t, id, format, user_id, project_id, options)| pb::CacheKey {
                    r#type: t,
                    id,
                    format,
                    options,
                    user_id,
                    project_id,
                },
            )
    }

    fn value(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    /// Export options of any shape, nested up to 8 levels; numbers are integers below 2^53 or short multiples of
    /// 2^-10 (whose shortest decimal forms any JSON parser reads back exactly), or a non-finite one now and then.
    fn arb_options() -> impl Strategy<Value = Struct> {
        let leaf = prop_oneof![
            Just(None),
            Just(Some(Kind::NullValue(0))),
            any::<bool>().prop_map(|b| Some(Kind::BoolValue(b))),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(|n| Some(Kind::NumberValue(n as f64))),
            any::<i16>().prop_map(|m| Some(Kind::NumberValue(f64::from(m) / 1024.0))),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)]
                .prop_map(|n| Some(Kind::NumberValue(n))),
            ".{0,8}".prop_map(|s| Some(Kind::StringValue(s))),
        ];
        let kind = leaf.prop_recursive(8, 64, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                    Some(Kind::ListValue(ListValue {
                        values: items.into_iter().map(|kind| Value { kind }).collect(),
                    }))
                }),
                proptest::collection::btree_map(".{0,4}", inner, 0..4).prop_map(|fields| {
                    Some(Kind::StructValue(Struct {
                        fields: fields
                            .into_iter()
                            .map(|(k, kind)| (k, Value { kind }))
                            .collect(),
                    }))
                }),
            ]
        });
        proptest::collection::btree_map(".{0,6}", kind, 0..4).prop_map(|fields| Struct {
            fields: fields
                .into_iter()
                .map(|(k, kind)| (k, Value { kind }))
                .collect(),
        })
    }

    /// Options `depth` levels deep (the options object is level 1), nesting lists or objects.
    fn nested(depth: usize, lists: bool) -> Struct {
        let mut kind = if lists {
            Kind::ListValue(ListValue::default())
        } else {
            Kind::StructValue(Struct::default())
        };
        for _ in 2..depth {
            kind = if lists {
                Kind::ListValue(ListValue {
                    values: vec![value(kind)],
                })
            } else {
                Kind::StructValue(Struct {
                    fields: [("a".to_owned(), value(kind))].into(),
                })
            };
        }
        match depth {
            0 | 1 => Struct::default(),
            _ => Struct {
                fields: [("a".to_owned(), value(kind))].into(),
            },
        }
    }

    /// Takes options apart without recursion (dropping 100,000 levels would overflow the stack by itself).
    fn dismantle(options: Struct) {
        let mut pending: Vec<Value> = options.fields.into_values().collect();
        while let Some(v) = pending.pop() {
            match v.kind {
                Some(Kind::StructValue(s)) => pending.extend(s.fields.into_values()),
                Some(Kind::ListValue(l)) => pending.extend(l.values),
                _ => {}
            }
        }
    }

    #[test]
    fn nesting_is_refused_past_the_limit_only() {
        for lists in [false, true] {
            for depth in [1, 2, MAX_OPTIONS_DEPTH - 1, MAX_OPTIONS_DEPTH] {
                let deep = nested(depth, lists);
                assert_eq!(shape(&deep).0, depth);
                assert!(
                    canonical_options_json(Some(&deep)).is_ok(),
                    "{depth} {lists}"
                );
                options(&deep);
            }
            let too_deep = nested(MAX_OPTIONS_DEPTH + 1, lists);
            let err = canonical_options_json(Some(&too_deep)).unwrap_err();
            assert!(err.contains("levels"), "{err}");
            options(&too_deep);
        }
    }

    /// Regression: canonicalisation recursed once per level with no bound, so options built in process (an
    /// embedding caller, a test) 100,000 levels deep overflowed the stack and aborted the process.
    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        for lists in [false, true] {
            let deep = nested(100_000, lists);
            let result = std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn_scoped(s, || canonical_options_json(Some(&deep)))
                    .expect("spawn")
                    .join()
                    .expect("no overflow")
            });
            assert!(result.is_err());
            dismantle(deep);
        }
    }

    /// A request that decodes may carry options past the depth limit: validation refuses them by name.
    #[test]
    fn decodable_requests_past_the_depth_limit_are_refused_by_name() {
        use prost::Message as _;
        for lists in [false, true] {
            let mut request = pb::SetRequest {
                key: Some(crate::keys::test_support::key(
                    pb::CacheType::ExportResult,
                    "o",
                    "f",
                    "",
                    "",
                )),
                ..Default::default()
            };
            request.key.as_mut().unwrap().options = Some(nested(MAX_OPTIONS_DEPTH + 1, lists));
            let decoded = pb::SetRequest::decode(&request.encode_to_vec()[..]).expect("decodes");
            let err = ks().key(decoded.key.as_ref(), "key").unwrap_err();
            assert!(err.to_string().starts_with("key.options"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn any_key_validates_without_panicking(k in arb_any_key()) {
            key(&ks(), &k);
        }

        #[test]
        fn keys_under_any_keyspace_are_injective(
            prefix in arb_text(),
            namespace in arb_text(),
            a in arb_key(),
            b in arb_key(),
        ) {
            let keyspace = Keyspace::new(&prefix, &namespace);
            keys_are_injective(&keyspace, &a, &b);
            keys_are_injective(&keyspace, &a, &a);
        }

        #[test]
        fn any_text_parses_without_panicking(text in arb_text()) {
            rendered(&ks(), &text);
        }

        #[test]
        fn rendered_keys_parse_back(k in arb_key()) {
            let valid = key(&ks(), &k).expect("arb_key makes valid keys");
            rendered(&ks(), valid.storage_key.strip_prefix(ks().base()).unwrap());
        }

        #[test]
        fn glob_agrees_with_the_reference_on_keys(
            p in "(\\*|\\?|:|[a-c]|\\[a-c\\]|\\[\\^a\\]|\\\\\\*|%3A){0,10}",
            t in "(:|[a-c]|\\*|%3A){0,20}",
        ) {
            glob(p.as_bytes(), t.as_bytes());
        }

        #[test]
        fn options_canonicalise_to_a_fixed_point(o in arb_options()) {
            options(&o);
        }
    }
}
