//! JSON to `google.protobuf.Struct` / `google.protobuf.Value`: the one conversion shared by the server, the
//! SDK and the integration tests (export options travel as a `Struct`).
//!
//! The mapping is the protobuf JSON mapping of the well-known types:
//!
//! | JSON | `Value.kind` |
//! | --- | --- |
//! | `null` | `null_value` (`NULL_VALUE`) |
//! | `true` / `false` | `bool_value` |
//! | number | `number_value`, as an `f64` (integers beyond 2^53 are rounded, as JSON parsers do) |
//! | string | `string_value` |
//! | array | `list_value`, in order |
//! | object | `struct_value` (field order is not kept: a `Struct` is a map) |
//!
//! A `Value` always has a kind: this conversion never produces an empty one.

use prost_types::value::Kind;
use prost_types::{ListValue, NullValue, Struct, Value};

/// Converts a JSON value to a `google.protobuf.Value`.
///
/// Numbers become `f64` ([`serde_json::Number::as_f64`]). A number with no `f64` form (only possible with
/// serde_json's `arbitrary_precision` feature, which this workspace does not enable, for out-of-range
/// literals) becomes NaN, which the server refuses in export options, rather than a silent 0.
pub fn value_from_json(json: serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(NullValue::NullValue as i32),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(struct_from_json_object(object)),
    };
    Value { kind: Some(kind) }
}

/// Converts a JSON object to a `google.protobuf.Struct`, each field with [`value_from_json`].
pub fn struct_from_json_object(object: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: object
            .into_iter()
            .map(|(name, value)| (name, value_from_json(value)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    fn object(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match json {
            serde_json::Value::Object(o) => o,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn scalars_map_to_their_kinds() {
        assert_eq!(value_from_json(json!(null)), v(Kind::NullValue(0)));
        assert_eq!(value_from_json(json!(true)), v(Kind::BoolValue(true)));
        assert_eq!(value_from_json(json!(false)), v(Kind::BoolValue(false)));
        assert_eq!(
            value_from_json(json!("mm")),
            v(Kind::StringValue("mm".into()))
        );
        assert_eq!(
            value_from_json(json!("")),
            v(Kind::StringValue(String::new()))
        );
    }

    #[test]
    fn numbers_are_f64() {
        assert_eq!(value_from_json(json!(3)), v(Kind::NumberValue(3.0)));
        assert_eq!(value_from_json(json!(3.0)), v(Kind::NumberValue(3.0)));
        assert_eq!(value_from_json(json!(-7)), v(Kind::NumberValue(-7.0)));
        assert_eq!(value_from_json(json!(0.5)), v(Kind::NumberValue(0.5)));
        assert_eq!(
            value_from_json(json!(u64::MAX)),
            v(Kind::NumberValue(u64::MAX as f64))
        );
        assert_eq!(
            value_from_json(json!(i64::MIN)),
            v(Kind::NumberValue(i64::MIN as f64))
        );
        // Beyond 2^53 integers round to the nearest f64, as in any JSON reader of Struct.
        assert_eq!(
            value_from_json(json!(9_007_199_254_740_993_u64)),
            v(Kind::NumberValue(9_007_199_254_740_992.0))
        );
        let parsed: serde_json::Value = serde_json::from_str("1e300").unwrap();
        assert_eq!(value_from_json(parsed), v(Kind::NumberValue(1e300)));
    }

    #[test]
    fn arrays_keep_their_order_and_objects_nest() {
        let converted = struct_from_json_object(object(json!({
            "b": [1, "x", null, [true]],
            "a": {"y": {"z": 0.25}, "x": false},
            "e": {},
            "f": [],
        })));
        let expected = Struct {
            fields: [
                (
                    "a".to_owned(),
                    v(Kind::StructValue(Struct {
                        fields: [
                            ("x".to_owned(), v(Kind::BoolValue(false))),
                            (
                                "y".to_owned(),
                                v(Kind::StructValue(Struct {
                                    fields: [("z".to_owned(), v(Kind::NumberValue(0.25)))]
                                        .into_iter()
                                        .collect(),
                                })),
                            ),
                        ]
                        .into_iter()
                        .collect(),
                    })),
                ),
                (
                    "b".to_owned(),
                    v(Kind::ListValue(ListValue {
                        values: vec![
                            v(Kind::NumberValue(1.0)),
                            v(Kind::StringValue("x".into())),
                            v(Kind::NullValue(0)),
                            v(Kind::ListValue(ListValue {
                                values: vec![v(Kind::BoolValue(true))],
                            })),
                        ],
                    })),
                ),
                ("e".to_owned(), v(Kind::StructValue(Struct::default()))),
                ("f".to_owned(), v(Kind::ListValue(ListValue::default()))),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(converted, expected);
        assert_eq!(
            value_from_json(
                json!({"b": [1, "x", null, [true]], "a": {"y": {"z": 0.25}, "x": false}, "e": {}, "f": []})
            ),
            v(Kind::StructValue(expected))
        );
    }

    #[test]
    fn field_order_and_integral_number_form_do_not_matter() {
        let a = struct_from_json_object(object(json!({"b": 1, "a": {"y": [1.0, "x"], "x": true}})));
        let b = struct_from_json_object(object(json!({"a": {"x": true, "y": [1, "x"]}, "b": 1.0})));
        assert_eq!(a, b);
        assert_eq!(
            struct_from_json_object(serde_json::Map::new()),
            Struct::default()
        );
    }

    #[test]
    fn strings_are_taken_as_they_are() {
        let s = "a \"quoted\" \\ line\nwith \u{1F600} and \u{7f}";
        assert_eq!(
            value_from_json(json!(s)),
            v(Kind::StringValue(s.to_owned()))
        );
        let converted = struct_from_json_object(object(json!({ s: 1 })));
        assert!(converted.fields.contains_key(s));
    }
}
