//! Export options: their canonical JSON and the MD5 of it that rendered export keys carry.

use std::fmt::Write as _;

use md5::{Digest as _, Md5};

/// Lower-case hex MD5 of `bytes` (32 digits).
pub fn md5_hex(bytes: &[u8]) -> String {
    let digest: [u8; 16] = Md5::digest(bytes).into();
    let mut out = String::with_capacity(32);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The most bytes export options may take as canonical JSON.
pub const MAX_OPTIONS_JSON_BYTES: usize = 16 << 10;
/// The most values (at every level, objects and lists included) export options may hold.
pub const MAX_OPTIONS_VALUES: usize = 1024;
/// The deepest export options may nest (objects and lists).
pub const MAX_OPTIONS_DEPTH: usize = 16;

/// What is left of the limits while options are written.
struct Limits {
    values: usize,
    depth: usize,
}

/// Canonical JSON of export options: object keys sorted, integral numbers without a fraction (`1`, never
/// `1.0`), other numbers in Rust's shortest round-trip form, no whitespace. Absent and empty options are both
/// `{}`. Non-finite numbers are refused, and so are options over [`MAX_OPTIONS_VALUES`] values,
/// [`MAX_OPTIONS_DEPTH`] levels or [`MAX_OPTIONS_JSON_BYTES`] bytes: a Get pays for its options' size.
pub fn canonical_options_json(options: Option<&prost_types::Struct>) -> Result<String, String> {
    let mut out = String::new();
    let mut limits = Limits {
        values: MAX_OPTIONS_VALUES,
        depth: MAX_OPTIONS_DEPTH,
    };
    match options {
        Some(s) => write_struct(&mut out, s, &mut limits)?,
        None => out.push_str("{}"),
    }
    if out.len() > MAX_OPTIONS_JSON_BYTES {
        return Err(format!(
            "are {} bytes as canonical JSON, more than {MAX_OPTIONS_JSON_BYTES}",
            out.len()
        ));
    }
    Ok(out)
}

fn enter(limits: &mut Limits) -> Result<(), String> {
    if limits.depth == 0 {
        return Err(format!("nest deeper than {MAX_OPTIONS_DEPTH} levels"));
    }
    limits.depth -= 1;
    Ok(())
}

fn write_struct(
    out: &mut String,
    s: &prost_types::Struct,
    limits: &mut Limits,
) -> Result<(), String> {
    enter(limits)?;
    out.push('{');
    // prost_types::Struct keeps its fields in a BTreeMap: iteration is already sorted by key.
    for (i, (k, v)) in s.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, k);
        out.push(':');
        write_value(out, v, limits)?;
    }
    out.push('}');
    limits.depth += 1;
    Ok(())
}

fn write_value(
    out: &mut String,
    v: &prost_types::Value,
    limits: &mut Limits,
) -> Result<(), String> {
    use prost_types::value::Kind;
    if limits.values == 0 {
        return Err(format!("hold more than {MAX_OPTIONS_VALUES} values"));
    }
    limits.values -= 1;
    if out.len() > MAX_OPTIONS_JSON_BYTES {
        return Err(format!(
            "are more than {MAX_OPTIONS_JSON_BYTES} bytes as canonical JSON"
        ));
    }
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
        Some(Kind::StructValue(s)) => write_struct(out, s, limits)?,
        Some(Kind::ListValue(l)) => {
            enter(limits)?;
            out.push('[');
            for (i, item) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, limits)?;
            }
            out.push(']');
            limits.depth += 1;
        }
    }
    Ok(())
}

fn write_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("serializing a str cannot fail"));
}

#[cfg(test)]
mod tests {
    use cache_proto::pb;

    use super::*;
    use crate::keys::test_support::{key, ks, options};

    fn nested(depth: usize) -> prost_types::Struct {
        let mut s = prost_types::Struct::default();
        for _ in 1..depth {
            let mut outer = prost_types::Struct::default();
            outer.fields.insert(
                "a".into(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(s)),
                },
            );
            s = outer;
        }
        s
    }

    #[test]
    fn options_beyond_the_limits_are_refused() {
        assert!(canonical_options_json(Some(&nested(MAX_OPTIONS_DEPTH))).is_ok());
        let deep = canonical_options_json(Some(&nested(MAX_OPTIONS_DEPTH + 1))).unwrap_err();
        assert!(deep.starts_with("nest deeper than"), "{deep}");
        let wide = options(serde_json::Value::Object(
            (0..=MAX_OPTIONS_VALUES)
                .map(|i| (format!("k{i}"), serde_json::Value::Null))
                .collect(),
        ));
        let err = canonical_options_json(Some(&wide)).unwrap_err();
        assert!(err.starts_with("hold more than"), "{err}");
        let long = options(serde_json::json!({ "s": "x".repeat(MAX_OPTIONS_JSON_BYTES) }));
        let err = canonical_options_json(Some(&long)).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
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
}
