//! The function app's own description of itself: which functions exist, which of them are
//! SQL-triggered, on which table, under which binding name the changes arrive and where
//! undeliverable changes are kept, and which are queue-triggered redelivery functions. Read
//! from each folder's `function.json` at start, so routes can be checked against real
//! functions.

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
    /// The name of a queue output binding, where changes that cannot be delivered go.
    pub dead_letters: Option<String>,
}

/// A queue-triggered function: rowcast treats it as the redelivery of dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFunction {
    pub name: String,
    /// The trigger binding's `name`: the key of the queue message in `Data`.
    pub binding: String,
}

/// Everything [`discover`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub sql: Vec<SqlFunction>,
    pub queues: Vec<QueueFunction>,
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
    #[serde(default)]
    direction: String,
}

/// Lists the SQL- and queue-triggered functions under `root` (one level of folders, as the
/// Functions host lays an app out), sorted by name. A missing root means an app with no
/// functions.
pub fn discover(root: &Path) -> Result<Discovered, FunctionsError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Discovered::default()),
        Err(source) => {
            return Err(FunctionsError::Read {
                path: root.display().to_string(),
                source,
            })
        }
    };

    let mut functions = Vec::new();
    let mut queues = Vec::new();
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

        let name = entry.file_name().to_string_lossy().into_owned();
        let dead_letters = parsed
            .bindings
            .iter()
            .find(|b| {
                b.kind.eq_ignore_ascii_case("queue") && b.direction.eq_ignore_ascii_case("out")
            })
            .map(|b| b.name.clone());
        for binding in &parsed.bindings {
            if binding.kind.eq_ignore_ascii_case("queueTrigger") {
                queues.push(QueueFunction {
                    name: name.clone(),
                    binding: binding.name.clone(),
                });
            }
            if !binding.kind.eq_ignore_ascii_case("sqlTrigger") {
                continue;
            }
            let table = binding
                .table_name
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| FunctionsError::Invalid {
                    path: path.display().to_string(),
                    reason: "the sqlTrigger binding has no tableName".into(),
                })?;
            functions.push(SqlFunction {
                name: name.clone(),
                binding: binding.name.clone(),
                table,
                dead_letters: dead_letters.clone(),
            });
        }
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Discovered {
        sql: functions,
        queues,
    })
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

        let found = discover(&root).unwrap().sql;
        assert_eq!(
            found,
            [SqlFunction {
                name: "users".into(),
                binding: "changes".into(),
                table: "dbo.Users".into(),
                dead_letters: None,
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
        assert_eq!(
            discover(Path::new("/nonexistent/rowcast")).unwrap(),
            Discovered::default()
        );
    }
}
