//! [`CacheType`]: the kind of entry, its proto mapping and its segment in rendered keys.

use cache_proto::pb;

/// The kind of entry (a validated `pb::CacheType`, never unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheType {
    /// Export of an object to a format.
    ExportResult,
    /// Metadata of an object.
    Metadata,
    /// Information about an object.
    ObjectInfo,
    /// A user's preference.
    UserPreference,
    /// A system configuration value.
    SystemConfig,
}

impl CacheType {
    /// Every type, in proto order.
    pub const ALL: [CacheType; 5] = [
        CacheType::ExportResult,
        CacheType::Metadata,
        CacheType::ObjectInfo,
        CacheType::UserPreference,
        CacheType::SystemConfig,
    ];

    /// Converts a proto enum value; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::CacheType::try_from(value).ok()? {
            pb::CacheType::Unspecified => None,
            pb::CacheType::ExportResult => Some(Self::ExportResult),
            pb::CacheType::Metadata => Some(Self::Metadata),
            pb::CacheType::ObjectInfo => Some(Self::ObjectInfo),
            pb::CacheType::UserPreference => Some(Self::UserPreference),
            pb::CacheType::SystemConfig => Some(Self::SystemConfig),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::CacheType {
        match self {
            Self::ExportResult => pb::CacheType::ExportResult,
            Self::Metadata => pb::CacheType::Metadata,
            Self::ObjectInfo => pb::CacheType::ObjectInfo,
            Self::UserPreference => pb::CacheType::UserPreference,
            Self::SystemConfig => pb::CacheType::SystemConfig,
        }
    }

    /// The first segment of rendered keys of this type.
    pub fn segment(self) -> &'static str {
        match self {
            Self::ExportResult => "export_result",
            Self::Metadata => "metadata",
            Self::ObjectInfo => "object",
            Self::UserPreference => "user",
            Self::SystemConfig => "config",
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::ExportResult => "export_result",
            Self::Metadata => "metadata",
            Self::ObjectInfo => "object_info",
            Self::UserPreference => "user_preference",
            Self::SystemConfig => "system_config",
        }
    }

    /// Dense index in `0..5`, for per-type counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether `id` names an object (export results, metadata, object info) rather than a preference or
    /// configuration name; an untyped object selector matches only these.
    pub fn is_object(self) -> bool {
        matches!(self, Self::ExportResult | Self::Metadata | Self::ObjectInfo)
    }

    /// Whether type and id alone name the entry that has no user or project scope: not for export results
    /// (format and options vary) nor user preferences (always scoped to a user).
    pub fn has_unscoped_key(self) -> bool {
        !matches!(self, Self::ExportResult | Self::UserPreference)
    }
}
