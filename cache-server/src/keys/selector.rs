//! [`Selector`]: a validated invalidation selector and the entries it matches.

use std::fmt;

use super::{CacheType, KeyTags};

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

#[cfg(test)]
mod tests {
    use cache_proto::pb;

    use super::*;
    use crate::keys::test_support::ks;

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
}
