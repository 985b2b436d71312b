//! The configuration table of the documentation, generated from the declarations (`cache-server
//! config-table` prints it); a unit test checks the documented copy against it.

use super::{ENV_CONFIG_FILE, RedisSettings, Settings};

/// One row of the configuration table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// What the setting is (its doc comment).
    pub setting: String,
    /// Its environment variable.
    pub env: &'static str,
    /// Its command-line flag (empty if none).
    pub flag: &'static str,
    /// Its TOML key, `table.key` inside a table; empty if not a setting of this server, `—` if a setting no
    /// file can hold.
    pub file_key: String,
    /// Its default, as documented.
    pub default: &'static str,
}

impl Row {
    /// The row's cells as the documentation writes them.
    pub fn cells(&self) -> [String; 5] {
        let code = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("`{s}`")
            }
        };
        [
            self.setting.clone(),
            code(self.env),
            code(self.flag),
            // "—": a setting no file can hold.
            if self.file_key == "—" {
                self.file_key.clone()
            } else {
                code(&self.file_key)
            },
            self.default.to_owned(),
        ]
    }
}

/// The column headers.
pub const HEADER: [&str; 5] = ["setting", "environment", "flag", "file key", "default"];

/// Every row: the config file, the top-level settings, the standard variables read elsewhere, then each
/// table's settings.
pub fn rows() -> Vec<Row> {
    let mut rows = vec![Row {
        setting: "TOML config file".to_owned(),
        env: ENV_CONFIG_FILE,
        flag: "--config",
        file_key: "—".to_owned(),
        default: "none",
    }];
    rows.extend(Settings::rows());
    rows.push(Row {
        setting: "OTLP trace export (standard variable; unset = off)".to_owned(),
        env: "OTEL_EXPORTER_OTLP_ENDPOINT",
        flag: "",
        file_key: String::new(),
        default: "unset",
    });
    rows.extend(RedisSettings::rows());
    rows
}

/// The configuration table in Markdown.
pub fn markdown() -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(&HEADER.map(str::to_owned));
    out += &line(&HEADER.map(|_| "---".to_owned()));
    for row in rows() {
        out += &line(&row.cells());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document holding the configuration table, relative to this crate, and the heading above it.
    const DOC: (&str, &str) = ("../docs/operations.md", "## Configuration");

    /// The cells of the first Markdown table after `heading` in `doc` (header and separator rows skipped),
    /// each cell trimmed. Cells holding `|` are not supported (none does).
    fn documented(doc: &str, heading: &str) -> Option<Vec<Vec<String>>> {
        let section = &doc[doc.find(heading)? + heading.len()..];
        let rows: Vec<Vec<String>> = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let inner = l.trim().strip_prefix('|').unwrap_or(l);
                inner
                    .strip_suffix('|')
                    .unwrap_or(inner)
                    .split('|')
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .skip(2)
            .collect();
        (!rows.is_empty()).then_some(rows)
    }

    #[test]
    fn documented_table_matches_the_declarations() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC.0);
        let text = std::fs::read_to_string(&path).unwrap();
        let documented = documented(&text, DOC.1).expect("a table under the heading");
        let generated: Vec<Vec<String>> = rows().iter().map(|r| r.cells().to_vec()).collect();
        assert_eq!(
            documented,
            generated,
            "the table in {} differs from the declarations; `cache-server config-table` prints the \
             current one:\n{}",
            path.display(),
            markdown()
        );
    }

    #[test]
    fn every_flag_env_and_key_is_unique() {
        let rows = rows();
        for pick in [
            |r: &Row| r.env.to_owned(),
            |r: &Row| r.flag.to_owned(),
            |r: &Row| r.file_key.clone(),
        ] {
            let mut seen: Vec<String> = rows.iter().map(pick).filter(|v| !v.is_empty()).collect();
            let n = seen.len();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), n, "{seen:?}");
        }
    }
}
