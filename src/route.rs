//! Routes: which hub a function's changes go to, and to whom in it (everyone, one user, or a
//! group), with user ids and group names that may be built from the row's columns.
//!
//! A route is plain data, read once at start. Later kinds of routing (row filters, column
//! projection, other message formats) become new optional fields of [`RouteSpec`] without
//! changing how existing routes are written.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a route setting is unusable. Reported at start, before anything is served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("invalid target '{0}': expected 'all', 'user:<id>' or 'group:<name>'")]
    Target(String),
    #[error("invalid template '{template}': {reason}")]
    Template {
        template: String,
        reason: &'static str,
    },
    #[error(
        "invalid hub name '{0}': expected a letter followed by up to 127 letters, digits or _`,.[]"
    )]
    Hub(String),
}

/// Why one change could not be given an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the row has no column '{0}' (needed by the route)")]
    MissingColumn(String),
    #[error("column '{0}' is null, so the route has no target for this row")]
    NullColumn(String),
    #[error("column '{0}' is an object or array; routes can only use scalar columns")]
    NotScalar(String),
    #[error("column '{0}' holds text that is not valid Unicode (a lone surrogate escape)")]
    NotText(String),
    #[error("the route renders an empty {0} for this row")]
    Empty(&'static str),
    #[error("the row is not a JSON object")]
    NotAnObject,
}

/// A route as written in settings, before validation. Every field is optional so that one
/// function's entry can override only what differs from the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    pub hub: Option<String>,
    pub target: Option<String>,
    pub table: Option<String>,
    /// Name of the trigger binding in `function.json`, when it is not `changes`.
    pub binding: Option<String>,
    /// Name of the queue output binding for undeliverable changes, when `function.json`
    /// is not there to say.
    pub dead_letters: Option<String>,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Hub as written; Web PubSub treats hub names case-insensitively.
    pub hub: String,
    pub target: Target,
    /// Table name shown to subscribers, e.g. `dbo.Users`.
    pub table: String,
}

/// Who in the hub receives a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    User(Template),
    Group(Template),
}

/// Where one change goes, once its columns filled the templates in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    All,
    User(String),
    Group(String),
}

impl std::str::FromStr for Address {
    type Err = RouteError;

    /// Reads the form `Display` writes, as kept in dead letters.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "all" {
            return Ok(Address::All);
        }
        match text.split_once(':') {
            Some(("user", user)) if !user.is_empty() => Ok(Address::User(user.to_owned())),
            Some(("group", group)) if !group.is_empty() => Ok(Address::Group(group.to_owned())),
            _ => Err(RouteError::Target(text.to_owned())),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::All => f.write_str("all"),
            Address::User(user) => write!(f, "user:{user}"),
            Address::Group(group) => write!(f, "group:{group}"),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::User(template) => write!(f, "user:{template}"),
            Target::Group(template) => write!(f, "group:{template}"),
        }
    }
}

impl std::fmt::Display for Template {
    /// Writes the template back in the form it was parsed from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Part::Column(column) => write!(f, "{{{column}}}")?,
            }
        }
        Ok(())
    }
}

impl Target {
    /// Parses `all`, `user:<template>` or `group:<template>`.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(Target::All);
        }
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| RouteError::Target(text.to_owned()))?;
        match kind.trim().to_ascii_lowercase().as_str() {
            "user" => Ok(Target::User(Template::parse(rest)?)),
            "group" => Ok(Target::Group(Template::parse(rest)?)),
            _ => Err(RouteError::Target(text.to_owned())),
        }
    }

    /// Whether rendering needs the row's columns.
    pub fn uses_columns(&self) -> bool {
        match self {
            Target::All => false,
            Target::User(t) | Target::Group(t) => t.uses_columns(),
        }
    }

    /// The address of one row.
    pub fn address(&self, row: &RawValue) -> Result<Address, AddressError> {
        match self {
            Target::All => Ok(Address::All),
            Target::User(template) => {
                let user = template.render(row)?;
                if user.is_empty() {
                    return Err(AddressError::Empty("user id"));
                }
                Ok(Address::User(user))
            }
            Target::Group(template) => {
                let group = template.render(row)?;
                if group.trim().is_empty() {
                    return Err(AddressError::Empty("group name"));
                }
                Ok(Address::Group(group))
            }
        }
    }
}

/// Text with `{Column}` placeholders; `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Column(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let fail = |reason| RouteError::Template {
            template: text.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();

        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut column = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err(fail("'{' inside a column name")),
                            Some(c) => column.push(c),
                            None => return Err(fail("'{' without a closing '}'")),
                        }
                    }
                    let column = column.trim();
                    if column.is_empty() {
                        return Err(fail("empty column name in '{}'"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column(column.to_owned()));
                }
                '}' => {
                    return Err(fail(
                        "'}' without an opening '{' (write '}}' for a literal brace)",
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if parts.is_empty() {
            return Err(fail("empty; expected an id, a name or a {Column}"));
        }
        Ok(Template { parts })
    }

    pub fn uses_columns(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Column(_)))
    }

    /// Fills the placeholders from `row`. Column names match exactly first, then ignoring
    /// case, as SQL Server's default collation does.
    pub fn render(&self, row: &RawValue) -> Result<String, AddressError> {
        if !self.uses_columns() {
            return Ok(self.literal());
        }
        let columns: HashMap<&str, &RawValue> =
            serde_json::from_str(row.get()).map_err(|_| AddressError::NotAnObject)?;

        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Column(name) => {
                    let value = columns
                        .get(name.as_str())
                        .or_else(|| {
                            columns
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v)
                        })
                        .ok_or_else(|| AddressError::MissingColumn(name.clone()))?;
                    out.push_str(&scalar(name, value)?);
                }
            }
        }
        Ok(out)
    }

    fn literal(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Column(_) => "",
            })
            .collect()
    }
}

/// The text of a scalar column: strings unquoted, numbers and booleans as written.
fn scalar(name: &str, value: &RawValue) -> Result<String, AddressError> {
    let text = value.get().trim();
    match text.as_bytes().first() {
        Some(b'"') => {
            serde_json::from_str::<String>(text).map_err(|_| AddressError::NotText(name.to_owned()))
        }
        Some(b'n') => Err(AddressError::NullColumn(name.to_owned())),
        Some(b'{' | b'[') | None => Err(AddressError::NotScalar(name.to_owned())),
        Some(_) => Ok(text.to_owned()),
    }
}

/// Hub names follow Web PubSub's rule: a letter, then up to 127 letters, digits or
/// `` _`,.[] ``.
pub fn check_hub(hub: &str) -> Result<(), RouteError> {
    let mut chars = hub.chars();
    let first = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest = chars.all(|c| c.is_ascii_alphanumeric() || "_`,.[]".contains(c));
    if first && rest && hub.len() <= 128 {
        Ok(())
    } else {
        Err(RouteError::Hub(hub.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("all").unwrap(), Target::All);
        assert_eq!(Target::parse(" ALL ").unwrap(), Target::All);
        assert!(matches!(
            Target::parse("user:12345").unwrap(),
            Target::User(_)
        ));
        assert!(matches!(
            Target::parse("group:orders-{Region}").unwrap(),
            Target::Group(_)
        ));
        assert_eq!(
            Target::parse("room:1"),
            Err(RouteError::Target("room:1".into()))
        );
        assert_eq!(
            Target::parse("everyone"),
            Err(RouteError::Target("everyone".into()))
        );
        assert!(Target::parse("user:").is_err());
    }

    #[test]
    fn templates_render_columns() {
        let target = Target::parse("group:orders-{Region}-{Id}").unwrap();
        let address = target.address(&row(r#"{"Id":7,"Region":"eu"}"#)).unwrap();
        assert_eq!(address, Address::Group("orders-eu-7".into()));

        let target = Target::parse("user:{ownerid}").unwrap();
        let address = target.address(&row(r#"{"OwnerId":"a\"b"}"#)).unwrap();
        assert_eq!(address, Address::User("a\"b".into()));

        assert_eq!(
            Target::parse("group:orders-{Region}-{Id}")
                .unwrap()
                .to_string(),
            "group:orders-{Region}-{Id}"
        );
        assert_eq!(
            Target::parse("user:{{x}}").unwrap().to_string(),
            "user:{{x}}"
        );

        let target = Target::parse("user:{{literal}}").unwrap();
        assert_eq!(
            target.address(&row("{}")).unwrap(),
            Address::User("{literal}".into())
        );
    }

    #[test]
    fn template_errors_are_named() {
        for bad in ["user:{", "user:{}", "user:}", "user:{a{b}"] {
            assert!(
                matches!(Target::parse(bad), Err(RouteError::Template { .. })),
                "{bad}"
            );
        }
        let target = Target::parse("user:{Owner}").unwrap();
        assert_eq!(
            target.address(&row(r#"{"Id":1}"#)),
            Err(AddressError::MissingColumn("Owner".into()))
        );
        assert_eq!(
            target.address(&row(r#"{"Owner":null}"#)),
            Err(AddressError::NullColumn("Owner".into()))
        );
        assert_eq!(
            target.address(&row(r#"{"Owner":[1]}"#)),
            Err(AddressError::NotScalar("Owner".into()))
        );
        assert_eq!(
            target.address(&row(r#"{"Owner":""}"#)),
            Err(AddressError::Empty("user id"))
        );
    }

    #[test]
    fn hub_names_follow_the_service_rule() {
        assert!(check_hub("SQLUsers").is_ok());
        assert!(check_hub("1hub").is_err());
        assert!(check_hub("a b").is_err());
        assert!(check_hub(&"a".repeat(129)).is_err());
    }
}
