//! Builders and strategies shared by the unit tests of the key modules.

use cache_proto::pb;
use proptest::prelude::*;

use super::Keyspace;

pub(crate) fn ks() -> Keyspace {
    Keyspace::new("cache", "default")
}

pub(crate) fn key(
    t: pb::CacheType,
    id: &str,
    format: &str,
    user: &str,
    project: &str,
) -> pb::CacheKey {
    pb::CacheKey {
        r#type: t as i32,
        id: id.into(),
        format: format.into(),
        options: None,
        user_id: user.into(),
        project_id: project.into(),
    }
}

pub(crate) fn options(json: serde_json::Value) -> prost_types::Struct {
    match json {
        serde_json::Value::Object(object) => cache_proto::json::struct_from_json_object(object),
        _ => unreachable!(),
    }
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

pub(crate) fn arb_key() -> impl Strategy<Value = pb::CacheKey> {
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
