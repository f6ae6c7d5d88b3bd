//! The function app's own description of itself: which functions exist, which of them are
//! SQL-triggered, on which table, and under which binding name the changes arrive. Read from
//! each folder's `function.json` at start, so routes can be checked against real functions.

use std::path::Path;

use serde::Deserialize;

/// One SQL-triggered function found in the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFunction {
    /// The folder name, which is also the path the host posts invocations to.
    pub name: String,
    /// The trigger binding's `name`: the key of the changes in `Data`.
    pub binding: String,
    /// The binding's `tableName`, e.g. `dbo.Users`.
    pub table: String,
}

/// Why the app's function folders could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid function.json: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Deserialize)]
struct FunctionJson {
    #[serde(default)]
    bindings: Vec<Binding>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Binding {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    table_name: Option<String>,
}

/// Lists the SQL-triggered functions under `root` (one level of folders, as the Functions
/// host lays an app out), sorted by name. A missing root means an app with no functions.
pub fn discover(root: &Path) -> Result<Vec<SqlFunction>, FunctionsError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FunctionsError::Read {
                path: root.display().to_string(),
                source,
            })
        }
    };

    let mut functions = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path().join("function.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(FunctionsError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let parsed: FunctionJson =
            serde_json::from_str(&text).map_err(|err| FunctionsError::Invalid {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;

        for binding in parsed
            .bindings
            .into_iter()
            .filter(|b| b.kind.eq_ignore_ascii_case("sqlTrigger"))
        {
            let table = binding
                .table_name
                .filter(|t| !t.is_empty())
                .ok_or_else(|| FunctionsError::Invalid {
                    path: path.display().to_string(),
                    reason: "the sqlTrigger binding has no tableName".into(),
                })?;
            functions.push(SqlFunction {
                name: entry.file_name().to_string_lossy().into_owned(),
                binding: binding.name,
                table,
            });
        }
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(functions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sql_triggered_functions_only() {
        let root = std::env::temp_dir().join(format!("rowcast-functions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("users")).unwrap();
        std::fs::create_dir_all(root.join("negotiate")).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("host.json"), "{}").unwrap();
        std::fs::write(
            root.join("users/function.json"),
            r#"{"bindings":[{"name":"changes","type":"sqlTrigger","direction":"in","tableName":"dbo.Users","connectionStringSetting":"SqlConnectionString"}]}"#,
        )
        .unwrap();
        std::fs::write(
            root.join("negotiate/function.json"),
            r#"{"bindings":[{"name":"req","type":"httpTrigger","direction":"in"}]}"#,
        )
        .unwrap();

        let found = discover(&root).unwrap();
        assert_eq!(
            found,
            [SqlFunction {
                name: "users".into(),
                binding: "changes".into(),
                table: "dbo.Users".into()
            }]
        );

        std::fs::write(root.join("src/function.json"), "{not json").unwrap();
        assert!(matches!(
            discover(&root),
            Err(FunctionsError::Invalid { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_root_has_no_functions() {
        assert!(discover(Path::new("/nonexistent/rowcast"))
            .unwrap()
            .is_empty());
    }
}
