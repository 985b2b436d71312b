//! Builders of structured inputs from fuzzer bytes, shared by the targets: key requests, keyspaces and export
//! options, drawn with `arbitrary` so that every byte string makes one (short inputs make short ones).

use arbitrary::{Result, Unstructured};
use cache_proto::pb;
use cache_server::fuzzing::{Codec, Keyspace, MAX_OPTIONS_DEPTH};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// How deep [`options`] nests at most: past [`MAX_OPTIONS_DEPTH`], so that refusals are reached too.
pub const OPTIONS_DEPTH: usize = 2 * MAX_OPTIONS_DEPTH;

/// Text for a key component: mostly the separators, markers and escapes that rendering must keep apart, or
/// any string.
pub fn text(u: &mut Unstructured<'_>) -> Result<String> {
    const PIECES: [&str; 16] = [
        ":",
        "%",
        "%3A",
        "%2a",
        "%+1",
        "user",
        "project",
        "preference",
        "a",
        "é",
        "*",
        "{",
        "\n",
        " ",
        "\\",
        "1",
    ];
    if u.ratio(1, 4)? {
        return u.arbitrary();
    }
    let mut out = String::new();
    for _ in 0..u.int_in_range(0..=8)? {
        out.push_str(u.choose(&PIECES)?);
    }
    Ok(out)
}

/// A keyspace: the default one, or any prefix and namespace.
pub fn keyspace(u: &mut Unstructured<'_>) -> Result<Keyspace> {
    if u.arbitrary()? {
        return Ok(Keyspace::new("cache", "default"));
    }
    Ok(Keyspace::new(&text(u)?, &text(u)?))
}

/// A key request: any type number (unknown ones too), components from [`text`], options now and then.
pub fn cache_key(u: &mut Unstructured<'_>) -> Result<pb::CacheKey> {
    Ok(pb::CacheKey {
        r#type: u.int_in_range(-1..=6)?,
        id: text(u)?,
        format: text(u)?,
        options: if u.ratio(1, 3)? {
            Some(options(u)?)
        } else {
            None
        },
        user_id: text(u)?,
        project_id: text(u)?,
    })
}

/// `key` with one field redrawn: a near miss, where rendering collisions would hide.
pub fn near(u: &mut Unstructured<'_>, key: &pb::CacheKey) -> Result<pb::CacheKey> {
    let mut other = key.clone();
    match u.int_in_range(0..=5)? {
        0 => other.r#type = u.int_in_range(1..=5)?,
        1 => other.id = text(u)?,
        2 => other.format = text(u)?,
        3 => other.options = Some(options(u)?),
        4 => other.user_id = text(u)?,
        _ => other.project_id = text(u)?,
    }
    Ok(other)
}

/// Export options of any shape, at most [`OPTIONS_DEPTH`] levels deep, with any numbers (non-finite too).
pub fn options(u: &mut Unstructured<'_>) -> Result<Struct> {
    object(u, 1)
}

fn object(u: &mut Unstructured<'_>, depth: usize) -> Result<Struct> {
    let mut fields = std::collections::BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        fields.insert(text(u)?, value(u, depth)?);
    }
    Ok(Struct { fields })
}

/// A value held at level `depth`: a container nests one level deeper, while the depth allows.
fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    let nest = depth < OPTIONS_DEPTH;
    let kind = match u.int_in_range(0..=7)? {
        0 => None,
        1 => Some(Kind::NullValue(0)),
        2 => Some(Kind::BoolValue(u.arbitrary()?)),
        3 => Some(Kind::NumberValue(u.arbitrary()?)),
        4 => Some(Kind::NumberValue(f64::from(u.arbitrary::<i32>()?))),
        5 => Some(Kind::StringValue(text(u)?)),
        6 if nest => {
            let mut values = Vec::new();
            for _ in 0..u.int_in_range(0..=3)? {
                values.push(value(u, depth + 1)?);
            }
            Some(Kind::ListValue(ListValue { values }))
        }
        7 if nest => Some(Kind::StructValue(object(u, depth + 1)?)),
        _ => None,
    };
    Ok(Value { kind })
}

/// A codec, from one byte.
pub fn codec(byte: u8) -> Codec {
    match byte % 3 {
        0 => Codec::None,
        1 => Codec::Gzip,
        _ => Codec::Zstd,
    }
}
