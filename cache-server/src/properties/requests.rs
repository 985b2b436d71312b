//! Properties of request validation: request messages decoded from any bytes, as gRPC hands them to the
//! service, through the service's own validation (the functions its handlers call).

use std::sync::LazyLock;

use cache_proto::pb;
use prost::Message as _;

use crate::backend::Target;
use crate::codec::{Codec, decode, encode};
use crate::config::Config;
use crate::keys::{Keyspace, MAX_PATTERN_BYTES, glob_match};
use crate::service::validate::{
    self, MAX_BATCH, MAX_CONTENT_TYPE_BYTES, MAX_METADATA_BYTES, MAX_METADATA_PAIRS,
    MAX_MODEL_HASH_BYTES,
};

/// The default configuration, as a server started with no settings has it.
static CONFIG: LazyLock<Config> = LazyLock::new(Config::default);
/// Its keyspace.
static KEYSPACE: LazyLock<Keyspace> =
    LazyLock::new(|| Keyspace::new(&CONFIG.prefix, &CONFIG.namespace));

/// The request message some bytes are decoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// `SetRequest`.
    Set,
    /// `GetRequest`.
    Get,
    /// `GetManyRequest`.
    GetMany,
    /// `InvalidateRequest`.
    Invalidate,
}

impl Message {
    /// Every message, for drivers that pick one by index.
    pub const ALL: [Message; 4] = [
        Message::Set,
        Message::Get,
        Message::GetMany,
        Message::Invalidate,
    ];
}

/// Decoding `bytes` as `message` and validating what decodes never panics, and what validation accepts holds
/// the properties below.
pub fn request(message: Message, bytes: &[u8]) {
    match message {
        Message::Set => {
            if let Ok(req) = pb::SetRequest::decode(bytes) {
                set(req);
            }
        }
        Message::Get => {
            if let Ok(req) = pb::GetRequest::decode(bytes) {
                get(&req);
            }
        }
        Message::GetMany => {
            if let Ok(req) = pb::GetManyRequest::decode(bytes) {
                get_many(&req.requests);
            }
        }
        Message::Invalidate => {
            if let Ok(req) = pb::InvalidateRequest::decode(bytes) {
                invalidate(req);
            }
        }
    }
}

/// A Set is valid only with a valid key; a valid one becomes a plan within every limit, whose header is the
/// request's, and whose envelope decodes to that header.
pub fn set(req: pb::SetRequest) {
    let original = req.clone();
    let Ok(plan) = validate::set_request(&KEYSPACE, &CONFIG, req) else {
        return;
    };
    let key = super::keys::key(
        &KEYSPACE,
        original.key.as_ref().expect("a valid Set has a key"),
    )
    .expect("a valid Set's key is valid");
    assert_eq!(plan.key.storage_key, key.storage_key);
    assert_eq!(plan.value, original.value);
    assert!(plan.value.len() as u64 <= CONFIG.max_value_bytes);
    assert!(
        !plan.ttl.is_zero() && plan.ttl <= CONFIG.max_ttl,
        "{:?}",
        plan.ttl
    );
    let header = &plan.header;
    assert_eq!(header.size_bytes, original.value.len() as u64);
    assert!(header.expires_at_ms >= header.created_at_ms);
    assert_eq!(header.content_type, original.content_type);
    assert!(header.content_type.len() <= MAX_CONTENT_TYPE_BYTES);
    assert_eq!(header.model_hash, original.model_hash);
    assert!(header.model_hash.len() <= MAX_MODEL_HASH_BYTES);
    assert_eq!(header.metadata.len(), original.metadata.len());
    assert!(header.metadata.len() <= MAX_METADATA_PAIRS);
    assert!(header.metadata.is_sorted());
    let metadata_bytes: usize = header.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(metadata_bytes <= MAX_METADATA_BYTES);
    assert_eq!(header.export_options_json, key.options_json);
    assert_eq!(plan.options.is_some(), !key.options_json.is_empty());
    let envelope = decode(encode(header, Codec::None, &plan.value)).expect("the plan's envelope");
    assert_eq!(&envelope.header, header);
}

/// A Get is valid exactly when its key is.
pub fn get(req: &pb::GetRequest) {
    let validated = validate::get_request(&KEYSPACE, req).ok();
    let alone = req
        .key
        .as_ref()
        .and_then(|k| super::keys::key(&KEYSPACE, k));
    assert_eq!(
        validated.map(|k| k.storage_key),
        alone.map(|k| k.storage_key)
    );
}

/// A GetMany is valid exactly when it has at most [`MAX_BATCH`] requests and each is valid; it then yields
/// their keys in order.
pub fn get_many(requests: &[pb::GetRequest]) {
    let validated = validate::get_many_request(&KEYSPACE, requests);
    let each: Option<Vec<_>> = requests
        .iter()
        .map(|r| validate::get_request(&KEYSPACE, r).ok())
        .collect();
    match (validated, each) {
        (Ok(keys), Some(each)) => {
            assert!(keys.len() <= MAX_BATCH);
            let keys: Vec<_> = keys.into_iter().map(|k| k.storage_key).collect();
            let each: Vec<_> = each.into_iter().map(|k| k.storage_key).collect();
            assert_eq!(keys, each);
        }
        (Ok(_), None) => panic!("a GetMany with an invalid request was accepted"),
        (Err(e), Some(_)) => assert!(requests.len() > MAX_BATCH, "{e}"),
        (Err(e), None) => assert!(e.field.starts_with("requests"), "{e}"),
    }
}

/// An Invalidate is valid with exactly one valid target: a key that is valid alone, a selector that sets a
/// field, a pattern anchored under the keyspace (which matching never panics on), or `all`.
pub fn invalidate(req: pb::InvalidateRequest) {
    use pb::invalidate_request::Target as T;
    let original = req.target.clone();
    let Ok(target) = validate::invalidate_request(&KEYSPACE, req) else {
        return;
    };
    match (target, original) {
        (Target::Key(k), Some(T::Key(requested))) => {
            let alone = super::keys::key(&KEYSPACE, &requested).expect("valid alone");
            assert_eq!(k.storage_key, alone.storage_key);
        }
        (Target::Selector(_, s), Some(T::Selector(_))) => {
            assert!(
                s.cache_type.is_some()
                    || s.object_id.is_some()
                    || s.user_id.is_some()
                    || s.project_id.is_some()
            );
        }
        (Target::Pattern(_, p), Some(T::Pattern(requested))) => {
            let base = KEYSPACE.base();
            assert!(p.starts_with(base), "{p:?}");
            assert!(p.len() <= base.len() + MAX_PATTERN_BYTES);
            assert!(!requested.is_empty() && !p.contains(char::is_control));
            super::keys::glob(p.as_bytes(), format!("{base}metadata:42:user:7").as_bytes());
            glob_match(p.as_bytes(), p.as_bytes());
        }
        (Target::All(_), Some(T::All(true))) => {}
        (target, original) => panic!("{original:?} validated as {target:?}"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::keys::test_support::arb_key;

    fn arb_message() -> impl Strategy<Value = Message> {
        proptest::sample::select(Message::ALL.to_vec())
    }

    fn arb_set() -> impl Strategy<Value = pb::SetRequest> {
        (
            proptest::option::of(arb_key()),
            proptest::collection::vec(any::<u8>(), 0..64),
            prop_oneof![Just(String::new()), ".{0,12}", "a{257}"],
            prop_oneof![Just(0u32), any::<u32>(), 1u32..100_000],
            proptest::collection::hash_map(".{0,4}", ".{0,4}", 0..4),
            -1..5i32,
            any::<bool>(),
        )
            .prop_map(
                |(key, value, content_type, ttl_seconds, metadata, compression, only_if_absent)| {
                    pb::SetRequest {
                        key,
                        value: value.into(),
                        model_hash: content_type.chars().rev().collect(),
                        content_type,
                        ttl_seconds,
                        metadata,
                        compression,
                        only_if_absent,
                    }
                },
            )
    }

    fn arb_get() -> impl Strategy<Value = pb::GetRequest> {
        (proptest::option::of(arb_key()), any::<bool>(), ".{0,4}").prop_map(
            |(key, metadata_only, model_hash)| pb::GetRequest {
                key,
                metadata_only,
                model_hash,
            },
        )
    }

    fn arb_invalidate() -> impl Strategy<Value = pb::InvalidateRequest> {
        use pb::invalidate_request::Target as T;
        let selector = (-1..7i32, ".{0,3}", ".{0,3}", ".{0,3}").prop_map(
            |(r#type, object_id, user_id, project_id)| pb::Selector {
                r#type,
                object_id,
                user_id,
                project_id,
            },
        );
        proptest::option::of(prop_oneof![
            arb_key().prop_map(T::Key),
            selector.prop_map(T::Selector),
            prop_oneof![".{0,12}", "cache:default:[a-z*?:\\\\]{0,12}", "a{1025}"]
                .prop_map(T::Pattern),
            any::<bool>().prop_map(T::All),
        ])
        .prop_map(|target| pb::InvalidateRequest { target })
    }

    proptest! {
        #[test]
        fn any_bytes_validate_without_panicking(
            message in arb_message(),
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            request(message, &bytes);
        }

        #[test]
        fn sets_validate_to_plans_within_the_limits(req in arb_set()) {
            request(Message::Set, &req.encode_to_vec());
        }

        #[test]
        fn gets_validate_like_their_keys(
            reqs in proptest::collection::vec(arb_get(), 0..4),
            over in any::<bool>(),
        ) {
            for req in &reqs {
                request(Message::Get, &req.encode_to_vec());
            }
            let mut requests = reqs;
            if over && !requests.is_empty() {
                requests = requests.iter().cycle().take(MAX_BATCH + 1).cloned().collect();
            }
            request(Message::GetMany, &pb::GetManyRequest { requests }.encode_to_vec());
        }

        #[test]
        fn invalidations_validate_to_their_target(req in arb_invalidate()) {
            request(Message::Invalidate, &req.encode_to_vec());
        }
    }
}
