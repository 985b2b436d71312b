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

/// Deepest nesting of objects and lists accepted in export options (the options object itself is level 1).
///
/// Canonicalisation recurses once per level, so this bounds its stack use whatever the caller built. It is
/// above what a request can carry: prost's decoding limit of 100 nested messages admits fewer levels (each
/// costs a `Value` and a `Struct` or `ListValue` message, an object field a map entry too), so no request
/// that decodes is refused for its depth.
pub const MAX_OPTIONS_DEPTH: usize = 64;

/// Canonical JSON of export options: object keys sorted, integral numbers without a fraction (`1`, never
/// `1.0`), other numbers in Rust's shortest round-trip form, no whitespace. Absent and empty options are both
/// `{}`. Non-finite numbers, and nesting deeper than [`MAX_OPTIONS_DEPTH`], are refused.
pub fn canonical_options_json(options: Option<&prost_types::Struct>) -> Result<String, String> {
    let mut out = String::new();
    match options {
        Some(s) => write_struct(&mut out, s, 1)?,
        None => out.push_str("{}"),
    }
    Ok(out)
}

/// Refuses level `depth` (1 for the options object) past [`MAX_OPTIONS_DEPTH`].
fn check_depth(depth: usize) -> Result<(), String> {
    if depth > MAX_OPTIONS_DEPTH {
        return Err(format!(
            "must not nest objects and lists more than {MAX_OPTIONS_DEPTH} levels deep"
        ));
    }
    Ok(())
}

fn write_struct(out: &mut String, s: &prost_types::Struct, depth: usize) -> Result<(), String> {
    check_depth(depth)?;
    out.push('{');
    // prost_types::Struct keeps its fields in a BTreeMap: iteration is already sorted by key.
    for (i, (k, v)) in s.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, k);
        out.push(':');
        write_value(out, v, depth)?;
    }
    out.push('}');
    Ok(())
}

/// Writes a value held by an object or list at level `depth` (a value that is itself one is at `depth + 1`).
fn write_value(out: &mut String, v: &prost_types::Value, depth: usize) -> Result<(), String> {
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
        Some(Kind::StructValue(s)) => write_struct(out, s, depth + 1)?,
        Some(Kind::ListValue(l)) => {
            check_depth(depth + 1)?;
            out.push('[');
            for (i, item) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth + 1)?;
            }
            out.push(']');
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
