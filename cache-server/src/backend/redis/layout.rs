//! Where an entry and its bookkeeping live in Redis: the one place that names Redis keys.
//!
//! Every key of this service starts with the keyspace base (`<prefix>:<namespace>:`, escaped so that it
//! holds no glob character and no brace), then a hash tag naming the entry's *bucket*, `{<b>}`, then:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<base>{b}:<rendered>` | string | the entry: its envelope, or a [`Pointer`] to a blob |
//! | `<base>{b}:~m:<rendered>` | string | the entry's meta: the generation snapshot it was written under, its read count and last read |
//! | `<base>{b}:~b:<rendered>` | string | a large value's blob: the pointer's version, then the envelope |
//! | `<base>{b}:~t:<rendered>:<version>` | string | a large value's blob while its Set is in flight |
//! | `<base>{b}:~g:<dimension>` | string | a generation token (see below) |
//! | `<base>{b}:~i:<dimension>` | sorted set | the entries of a dimension in this bucket, scored by expiry |
//! | `<base>{b}:~v` | string | the replication id of the Redis whose data this bucket was last verified on |
//!
//! Dimensions are `t:<type>` (every entry), `o:<type>:<id>` (entries with a user or project scope, and
//! every export result and preference), `u:<user>` and `p:<project>`. An entry is valid only while each of
//! its dimensions' generation tokens is the one its meta recorded: invalidating a dimension removes its
//! token, and a read that finds a token missing or different is a miss. So no invalidation depends on
//! bookkeeping that Redis may evict; indexes only let invalidation reclaim memory and count what it removed.
//!
//! The bucket is a hash of the entry's object id (of the user id for preferences) modulo the configured
//! number of buckets, so everything an object's invalidation touches shares one hash slot, and every Redis
//! command of one entry (its read, its write) stays within one slot: the layout works unchanged on Redis
//! Cluster. Selectors other than an object visit every bucket.

use std::fmt::Write as _;

use crate::keys::{CacheType, Key, KeyTags, escape_into};

/// The bucket prefix (`<base>{b}:`) a key of this layout starts with: a base holds no brace (it is escaped),
/// so the first `}:` ends the bucket tag. `None` for a key of no bucket.
pub(super) fn bucket_prefix_of(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = open + key[open..].find("}:")?;
    Some(&key[..close + 2])
}

/// One dimension of an entry, in snapshot order: type, object, user, project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dim<'a> {
    /// Every entry of a type.
    Type(CacheType),
    /// Entries of a type with this id.
    Object(CacheType, &'a str),
    /// Entries scoped to this user.
    User(&'a str),
    /// Entries scoped to this project.
    Project(&'a str),
}

impl Dim<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Dim::Type(t) => {
                out.push_str("t:");
                out.push_str(t.segment());
            }
            Dim::Object(t, id) => {
                out.push_str("o:");
                out.push_str(t.segment());
                out.push(':');
                escape_into(out, id);
            }
            Dim::User(u) => {
                out.push_str("u:");
                escape_into(out, u);
            }
            Dim::Project(p) => {
                out.push_str("p:");
                escape_into(out, p);
            }
        }
    }
}

/// The dimensions an entry with `tags` depends on, in snapshot order. An entry that its type and id alone
/// name (metadata, object info or config without user or project) has no object dimension: invalidating
/// its object deletes it by its key.
pub(super) fn dims_of(tags: &KeyTags) -> impl Iterator<Item = Dim<'_>> {
    let scoped = !tags.user_id.is_empty() || !tags.project_id.is_empty();
    let object = (scoped || !tags.cache_type.has_unscoped_key())
        .then_some(Dim::Object(tags.cache_type, tags.id.as_str()));
    let user = (!tags.user_id.is_empty()).then_some(Dim::User(tags.user_id.as_str()));
    let project = (!tags.project_id.is_empty()).then_some(Dim::Project(tags.project_id.as_str()));
    std::iter::once(Dim::Type(tags.cache_type))
        .chain(object)
        .chain(user)
        .chain(project)
}

/// Key names under one keyspace base, with a fixed number of buckets.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    buckets: u32,
}

/// The names of one entry's keys.
#[derive(Debug, Clone)]
pub(super) struct EntryKeys {
    /// The entry's bucket.
    pub bucket: u32,
    /// The entry.
    pub entry: String,
    /// Its meta.
    pub meta: String,
    /// Its blob (large values).
    pub blob: String,
    /// Generation key and index of each dimension, in snapshot order.
    pub dims: Vec<(String, String)>,
}

impl Layout {
    /// A layout with `buckets` buckets (at least 1).
    pub fn new(buckets: u32) -> Self {
        Self {
            buckets: buckets.max(1),
        }
    }

    /// How many buckets there are.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The bucket of the entries of object `id` (preferences: of user `id`).
    pub fn bucket_of_id(&self, id: &str) -> u32 {
        if self.buckets == 1 {
            return 0;
        }
        crc32c::crc32c(id.as_bytes()) % self.buckets
    }

    /// The bucket of an entry.
    pub fn bucket(&self, tags: &KeyTags) -> u32 {
        match tags.cache_type {
            CacheType::UserPreference => self.bucket_of_id(&tags.user_id),
            _ => self.bucket_of_id(&tags.id),
        }
    }

    /// The bucket of the entries a selector's object id names, when they all share one: always for object
    /// types; for preferences only the user's bucket would do, and a preference selector names no user
    /// here, so `None`.
    pub fn bucket_of_object(&self, t: Option<CacheType>, id: &str) -> Option<u32> {
        match t {
            Some(CacheType::UserPreference) => None,
            _ => Some(self.bucket_of_id(id)),
        }
    }

    /// `<base>{b}:`, the start of every key of bucket `b`.
    pub fn bucket_prefix(&self, base: &str, b: u32) -> String {
        let mut out = String::with_capacity(base.len() + 16);
        out.push_str(base);
        let _ = write!(out, "{{{b}}}:");
        out
    }

    fn named(prefix: &str, kind: &str, rest: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + kind.len() + rest.len());
        out.push_str(prefix);
        out.push_str(kind);
        out.push_str(rest);
        out
    }

    /// The names of an entry's keys. `base` is the key's keyspace base (a prefix of its storage key).
    pub fn entry_keys(&self, base: &str, key: &Key) -> EntryKeys {
        let bucket = self.bucket(&key.tags);
        let prefix = self.bucket_prefix(base, bucket);
        let rendered = key
            .storage_key
            .strip_prefix(base)
            .unwrap_or(&key.storage_key);
        let dims = dims_of(&key.tags)
            .map(|d| (self.gen_key(&prefix, &d), self.index_key(&prefix, &d)))
            .collect();
        EntryKeys {
            bucket,
            entry: Self::named(&prefix, "", rendered),
            meta: Self::named(&prefix, "~m:", rendered),
            blob: Self::named(&prefix, "~b:", rendered),
            dims,
        }
    }

    /// The generation key of a dimension under a bucket prefix.
    pub fn gen_key(&self, bucket_prefix: &str, dim: &Dim<'_>) -> String {
        let mut out = Self::named(bucket_prefix, "~g:", "");
        dim.write(&mut out);
        out
    }

    /// The index of a dimension under a bucket prefix.
    pub fn index_key(&self, bucket_prefix: &str, dim: &Dim<'_>) -> String {
        let mut out = Self::named(bucket_prefix, "~i:", "");
        dim.write(&mut out);
        out
    }

    /// The key under which bucket `b` records the replication id it was verified on.
    pub fn marker_key(&self, base: &str, b: u32) -> String {
        let mut out = self.bucket_prefix(base, b);
        out.push_str("~v");
        out
    }

    /// The blob key a large Set writes first, renamed into place once the Set's bookkeeping ran.
    pub fn staging_key(&self, keys: &EntryKeys, version: u64) -> String {
        let prefix = bucket_prefix_of(&keys.entry).unwrap_or_default();
        let rendered = &keys.entry[prefix.len()..];
        let mut out = Self::named(prefix, "~t:", rendered);
        let _ = write!(out, ":{version:016x}");
        out
    }

    /// The `SCAN MATCH` glob of entries whose storage key matches `pattern`, a glob anchored under `base`
    /// (see [`crate::keys::Keyspace::pattern`]). Braces are not glob characters, and a base never holds one
    /// (nor any glob character): `{*}` matches exactly the bucket tag.
    pub fn scan_glob(&self, base: &str, pattern: &str) -> String {
        let relative = pattern.strip_prefix(base).unwrap_or(pattern);
        let mut out = String::with_capacity(base.len() + relative.len() + 4);
        out.push_str(base);
        out.push_str("{*}:");
        out.push_str(relative);
        out
    }

    /// Splits a Redis key of this base into its bucket and its rendered entry key; `None` for bookkeeping
    /// keys and keys that are not ours.
    pub fn parse_entry<'k>(&self, base: &str, redis_key: &'k str) -> Option<(u32, &'k str)> {
        let rest = redis_key.strip_prefix(base)?.strip_prefix('{')?;
        let (bucket, rendered) = rest.split_once("}:")?;
        let bucket: u32 = bucket.parse().ok()?;
        if bucket >= self.buckets || rendered.starts_with('~') {
            return None;
        }
        Some((bucket, rendered))
    }
}

/// A large value's entry: where its blob is, which version of it, and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pointer {
    /// The version written in the blob's first 8 bytes.
    pub version: u64,
    /// The envelope's length (the blob is 8 bytes longer).
    pub len: u64,
}

impl Pointer {
    /// Magic bytes of a pointer; never the start of an envelope.
    const MAGIC: [u8; 4] = *b"\xCAcPt";
    /// A pointer's encoded length.
    pub const LEN: usize = 20;

    /// The pointer's bytes, as stored under the entry key.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&Self::MAGIC);
        out[4..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..20].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Reads a pointer; `None` for anything else (an envelope).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN || bytes[..4] != Self::MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(Self {
            version: u64_at(4),
            len: u64_at(12),
        })
    }
}

/// Whether a meta value records exactly the generation tokens `gens` (in snapshot order): the meta is
/// `<token><token>...|<reads>|<last read ms>`. A missing token (an invalidated or evicted generation) never
/// matches.
pub(super) fn snapshot_matches(meta: &[u8], gens: &[Option<&[u8]>]) -> bool {
    let snapshot = match meta.iter().position(|&b| b == b'|') {
        Some(end) => &meta[..end],
        None => return false,
    };
    let mut at = 0;
    for token in gens {
        let Some(token) = token else { return false };
        if token.is_empty() || !snapshot[at..].starts_with(token) {
            return false;
        }
        at += token.len();
    }
    at == snapshot.len()
}

/// The read count and last read time (unix ms, 0 if never) a meta value records.
pub(super) fn meta_reads(meta: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(meta).unwrap_or("");
    let mut parts = text.rsplitn(3, '|');
    let last = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let count = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (count, last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyspace;
    use cache_proto::pb;

    fn key(t: pb::CacheType, id: &str, user: &str, project: &str) -> Key {
        let k = pb::CacheKey {
            r#type: t as i32,
            id: id.into(),
            user_id: user.into(),
            project_id: project.into(),
            format: if t == pb::CacheType::ExportResult {
                "svg".into()
            } else {
                String::new()
            },
            ..Default::default()
        };
        Keyspace::new("cache", "default")
            .key(Some(&k), "key")
            .unwrap()
    }

    #[test]
    fn an_entry_its_id_alone_names_depends_on_its_type_only() {
        let k = key(pb::CacheType::Metadata, "42", "", "");
        let dims: Vec<_> = dims_of(&k.tags).collect();
        assert_eq!(dims, vec![Dim::Type(CacheType::Metadata)]);
        let k = key(pb::CacheType::Metadata, "42", "7", "p");
        let dims: Vec<_> = dims_of(&k.tags).collect();
        assert_eq!(
            dims,
            vec![
                Dim::Type(CacheType::Metadata),
                Dim::Object(CacheType::Metadata, "42"),
                Dim::User("7"),
                Dim::Project("p"),
            ]
        );
        let k = key(pb::CacheType::ExportResult, "42", "", "");
        assert_eq!(dims_of(&k.tags).count(), 2);
    }

    #[test]
    fn every_key_of_an_entry_shares_its_bucket_tag() {
        let layout = Layout::new(64);
        let k = key(pb::CacheType::ExportResult, "a:b{c}", "u 1", "p");
        let keys = layout.entry_keys("cache:default:", &k);
        let tag = format!("{{{}}}", keys.bucket);
        for name in [&keys.entry, &keys.meta, &keys.blob]
            .into_iter()
            .chain(keys.dims.iter().flat_map(|(g, i)| [g, i]))
        {
            // The first brace pair of the name is the bucket tag (components escape braces).
            let open = name.find('{').unwrap();
            let close = name[open..].find('}').unwrap() + open;
            assert_eq!(&name[open..=close], tag, "{name}");
        }
        assert_eq!(
            layout.parse_entry("cache:default:", &keys.entry),
            Some((keys.bucket, &k.storage_key["cache:default:".len()..]))
        );
        assert_eq!(layout.parse_entry("cache:default:", &keys.meta), None);
        assert_eq!(layout.parse_entry("other:", &keys.entry), None);
    }

    #[test]
    fn preferences_share_their_users_bucket() {
        let layout = Layout::new(64);
        let a = key(pb::CacheType::UserPreference, "theme", "7", "");
        let b = key(pb::CacheType::UserPreference, "lang", "7", "");
        assert_eq!(layout.bucket(&a.tags), layout.bucket(&b.tags));
        assert_eq!(layout.bucket(&a.tags), layout.bucket_of_id("7"));
    }

    #[test]
    fn snapshots_match_only_the_exact_tokens() {
        let meta = b"aaaabbbb|3|1700";
        assert!(snapshot_matches(meta, &[Some(b"aaaa"), Some(b"bbbb")]));
        assert!(!snapshot_matches(meta, &[Some(b"aaaa"), Some(b"bbbc")]));
        assert!(!snapshot_matches(meta, &[Some(b"aaaa"), None]));
        assert!(!snapshot_matches(meta, &[Some(b"aaaa")]));
        assert!(!snapshot_matches(
            meta,
            &[Some(b"aaaa"), Some(b"bbbb"), Some(b"x")]
        ));
        assert!(!snapshot_matches(
            b"aaaabbbb",
            &[Some(b"aaaa"), Some(b"bbbb")]
        ));
        assert_eq!(meta_reads(meta), (3, 1700));
        assert_eq!(meta_reads(b"x|y"), (0, 0));
    }

    #[test]
    fn pointers_round_trip_and_never_look_like_envelopes() {
        let p = Pointer {
            version: 0xDEAD_BEEF,
            len: 64 << 20,
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(p));
        assert_eq!(Pointer::decode(b"\xCAcEv0000000000000000"), None);
    }

    #[test]
    fn scan_globs_anchor_under_the_base_and_the_bucket_tag() {
        let layout = Layout::new(4);
        assert_eq!(
            layout.scan_glob("cache:default:", "cache:default:export_result:*:svg:*"),
            "cache:default:{*}:export_result:*:svg:*"
        );
    }
}
