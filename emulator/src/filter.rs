//! The OData `filter` language of the REST send operations.
//!
//! SendToAll, SendToGroup and SendToUser take a `filter` query parameter that
//! narrows the audience to the connections for which it holds. This module
//! owns that language: it turns the text into a type-checked expression tree
//! once per request, refusing anything outside the supported subset with a
//! message that names the offending part and where it is, and then evaluates
//! the tree against each candidate connection. Evaluation borrows from the
//! filter and the connection, and allocates only when a function has to build
//! a string that exists in neither, such as `tolower` of a mixed-case userId.
//!
//! The subset follows the Azure Web PubSub OData filter reference:
//!
//! - identifiers `userId` and `connectionId` (strings; `userId` is null for an
//!   anonymous connection) and `groups` (the groups the connection is in),
//!   matched without regard to case as the service documents;
//! - string literals in single quotes, with `''` standing for one quote;
//!   integer literals with an optional sign; `true`, `false` and `null`;
//! - `eq`, `ne`, `gt`, `ge`, `lt`, `le`, `and`, `or`, `not` and parentheses,
//!   binding in the order `not`, comparisons, `and`, `or`;
//! - `startswith`, `endswith` and `contains`, which are boolean; `indexof`
//!   and `length`, which are integers; and `tolower`, `toupper`, `trim`,
//!   `substring` and `concat`, which are strings; all applied to strings;
//! - `length(groups)`, the number of groups the connection is in;
//! - `value in groups` and `value in (a, b, ...)`.
//!
//! String functions count characters (Unicode scalar values), never bytes, so
//! `length`, `indexof` and `substring` agree with one another. `substring`
//! never fails: a start past the end gives the empty string, a negative start
//! counts as 0, a negative length as 0, and a length past the end stops at the
//! end, as OData services commonly clamp rather than error. Its integer
//! arguments may be any integer expression, not only the literals the service
//! grammar shows, as in OData v4.
//!
//! Keywords and function names are lowercase only, as in OData.
//!
//! Null follows OData's lifted operators: a function of null is null, `eq` and
//! `ne` treat two nulls as equal and null as unequal to anything else, ordering
//! a null is false, `and` and `or` count null as false, and `not null` stays
//! null. A connection is reached only when its filter is true, never when it
//! is null.
//!
//! Positions in error messages count characters from 0.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::iter::{Enumerate, Peekable};
use std::ops::Range;
use std::str::{Chars, FromStr};

/// The longest filter accepted, in characters. The service limits filter size
/// too, and a bound keeps the cost of parsing hostile input small.
pub const MAX_FILTER_CHARS: usize = 4096;

/// How deeply parentheses, `not`, function calls and `in` may nest. The parser
/// and the evaluator recurse once per level, so this bounds their stack use.
pub const MAX_NESTING: usize = 64;

/// Every keyword of the language, spelled as it must be written.
const KEYWORDS: [&str; 13] = [
    "and", "or", "not", "eq", "ne", "gt", "ge", "lt", "le", "in", "null", "true", "false",
];

/// What a filter is evaluated against: one connection.
pub trait Subject {
    fn user_id(&self) -> Option<&str>;
    fn connection_id(&self) -> &str;
    fn in_group(&self, group: &str) -> bool;
    /// How many groups the connection is in, for `length(groups)`.
    fn group_count(&self) -> usize;
}

/// A parsed and type-checked filter, ready to be run against many connections.
///
/// All checking happens in [`Filter::parse`], so a bad filter fails the
/// request before any message is sent rather than halfway through a fan-out.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Condition,
}

impl Filter {
    /// Parses and type-checks `text`, the value of the `filter` parameter.
    ///
    /// # Errors
    ///
    /// Returns a [`FilterError`] naming the first part of `text` that is not
    /// valid, or not supported by the emulator, together with its position.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.chars().nth(MAX_FILTER_CHARS).is_some() {
            return Err(FilterError::TooLong {
                max: MAX_FILTER_CHARS,
            });
        }

        let mut parser = Parser::new(text)?;
        let root = parser.parse_or(0)?;
        parser.expect_end()?;

        let root = expect_condition(root, "a boolean expression")?;
        Ok(Filter { root })
    }

    /// Whether `subject` is one of the connections the filter selects.
    ///
    /// This runs once per candidate connection on every filtered send, so it
    /// borrows from the filter and the connection wherever it can; only the
    /// case mappings and `concat` may allocate, and only when their result
    /// differs from an input.
    pub fn matches(&self, subject: &dyn Subject) -> bool {
        self.root.evaluate(subject) == Some(true)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Filter::parse(text)
    }
}

/// Why a filter was refused. Each message says what was expected and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter is longer than [`MAX_FILTER_CHARS`].
    #[error("filter is longer than {max} characters")]
    TooLong { max: usize },

    /// Parentheses, `not`, calls or `in` nest deeper than [`MAX_NESTING`].
    #[error("filter nests deeper than {max} levels at position {at}")]
    TooDeep { max: usize, at: usize },

    /// A character that starts no token of the language.
    #[error("unexpected character '{found}' at position {at}")]
    UnexpectedCharacter { found: char, at: usize },

    /// A string literal with no closing quote.
    #[error("unterminated string literal starting at position {at}; expected a closing quote")]
    UnterminatedString { at: usize },

    /// An integer literal that does not fit in 64 bits.
    #[error("integer literal '{literal}' at position {at} is out of range")]
    IntegerOutOfRange { literal: String, at: usize },

    /// A token that cannot stand where it was found.
    #[error("expected {expected} at position {at}, found {found}")]
    Syntax {
        expected: &'static str,
        found: String,
        at: usize,
    },

    /// A keyword written in the wrong case, such as `AND` or `Null`.
    #[error("'{found}' at position {at} must be written in lowercase as '{keyword}'")]
    KeywordCase {
        found: String,
        keyword: &'static str,
        at: usize,
    },

    /// A name that is neither an identifier nor a keyword.
    #[error(
        "unknown identifier '{name}' at position {at}; expected userId, connectionId or groups"
    )]
    UnknownIdentifier { name: String, at: usize },

    /// A call to a function the emulator does not implement.
    #[error("unsupported function '{name}' at position {at}; expected startswith, endswith, contains, indexof, length, tolower, toupper, trim, substring or concat")]
    UnsupportedFunction { name: String, at: usize },

    /// A call with the wrong number of arguments.
    #[error("function '{function}' at position {at} takes {expected}, found {found}")]
    ArgumentCount {
        function: &'static str,
        expected: &'static str,
        found: usize,
        at: usize,
    },

    /// An operand of the wrong type, such as `startswith(userId, 3)`.
    #[error("expected {expected} at position {at}, found {found}")]
    TypeMismatch {
        expected: String,
        found: &'static str,
        at: usize,
    },

    /// A comparison between operands of different types.
    #[error("cannot compare {left} with {right} using '{operator}' at position {at}")]
    IncomparableTypes {
        left: &'static str,
        right: &'static str,
        operator: &'static str,
        at: usize,
    },

    /// `gt`, `ge`, `lt` or `le` applied to booleans.
    #[error("'{operator}' at position {at} cannot order booleans; expected eq or ne")]
    BooleanOrdering { operator: &'static str, at: usize },

    /// A comparison that follows another without parentheses, as in `a eq b eq c`.
    #[error("'{operator}' at position {at} cannot follow another comparison; expected 'and', 'or' or parentheses")]
    ChainedComparison { operator: &'static str, at: usize },
}

/// A boolean expression.
#[derive(Debug, Clone)]
enum Condition {
    Constant(bool),
    Not(Box<Condition>),
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Test {
        test: TextTest,
        text: Text,
        pattern: Text,
    },
    Compare {
        left: Scalar,
        comparison: Comparison,
        right: Scalar,
    },
    InGroups(Text),
    InList {
        needle: Scalar,
        list: Vec<Scalar>,
    },
}

/// A string expression.
#[derive(Debug, Clone)]
enum Text {
    Literal(Box<str>),
    Null,
    UserId,
    ConnectionId,
    Map(TextMap, Box<Text>),
    Substring {
        text: Box<Text>,
        start: Box<Number>,
        length: Option<Box<Number>>,
    },
    Concat(Box<Text>, Box<Text>),
}

/// An integer expression.
#[derive(Debug, Clone)]
enum Number {
    Literal(i64),
    /// `null` where an integer argument is expected, as in `substring(s, null)`.
    Null,
    Length(Text),
    IndexOf {
        text: Text,
        pattern: Text,
    },
    GroupCount,
}

/// An operand of a comparison or of `in` with a list; its type was checked
/// against the other operands when the filter was parsed.
#[derive(Debug, Clone)]
enum Scalar {
    Text(Text),
    Number(Number),
    Condition(Box<Condition>),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextTest {
    StartsWith,
    EndsWith,
    Contains,
}

/// The one-argument functions from a string to a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextMap {
    ToLower,
    ToUpper,
    Trim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// The value of a [`Scalar`] for one connection. Strings are borrowed from
/// the filter or from the connection unless a function had to build them.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Null,
    Text(Cow<'a, str>),
    Number(i64),
    Boolean(bool),
}

impl Condition {
    /// True, false, or `None` for null.
    fn evaluate(&self, subject: &dyn Subject) -> Option<bool> {
        match self {
            Condition::Constant(value) => Some(*value),
            Condition::Not(inner) => inner.evaluate(subject).map(|value| !value),
            Condition::All(parts) => Some(
                parts
                    .iter()
                    .all(|part| part.evaluate(subject) == Some(true)),
            ),
            Condition::Any(parts) => Some(
                parts
                    .iter()
                    .any(|part| part.evaluate(subject) == Some(true)),
            ),
            Condition::Test {
                test,
                text,
                pattern,
            } => {
                let text = text.evaluate(subject)?;
                let pattern = pattern.evaluate(subject)?;
                Some(test.apply(&text, &pattern))
            }
            Condition::Compare {
                left,
                comparison,
                right,
            } => Some(comparison.apply(&left.evaluate(subject), &right.evaluate(subject))),
            // Null names no group, so it is in none.
            Condition::InGroups(group) => Some(
                group
                    .evaluate(subject)
                    .is_some_and(|group| subject.in_group(&group)),
            ),
            Condition::InList { needle, list } => {
                let needle = needle.evaluate(subject);
                Some(list.iter().any(|item| item.evaluate(subject) == needle))
            }
        }
    }
}

impl Text {
    /// The string, or `None` for null. Every function of null is null, so an
    /// argument that is null ends the evaluation early.
    fn evaluate<'a>(&'a self, subject: &'a dyn Subject) -> Option<Cow<'a, str>> {
        match self {
            Text::Literal(value) => Some(Cow::Borrowed(value)),
            Text::Null => None,
            Text::UserId => subject.user_id().map(Cow::Borrowed),
            Text::ConnectionId => Some(Cow::Borrowed(subject.connection_id())),
            Text::Map(map, text) => Some(map.apply(text.evaluate(subject)?)),
            Text::Substring {
                text,
                start,
                length,
            } => {
                let text = text.evaluate(subject)?;
                let start = start.evaluate(subject)?;
                let length = match length {
                    Some(length) => Some(length.evaluate(subject)?),
                    None => None,
                };
                Some(substring(text, start, length))
            }
            Text::Concat(first, second) => {
                let first = first.evaluate(subject)?;
                let second = second.evaluate(subject)?;
                Some(concat(first, second))
            }
        }
    }
}

impl Number {
    fn evaluate(&self, subject: &dyn Subject) -> Option<i64> {
        match self {
            Number::Literal(value) => Some(*value),
            Number::Null => None,
            Number::Length(text) => text.evaluate(subject).map(|text| char_count(&text)),
            Number::IndexOf { text, pattern } => {
                let text = text.evaluate(subject)?;
                let pattern = pattern.evaluate(subject)?;
                Some(index_of(&text, &pattern))
            }
            // A connection's group list is never null, only empty.
            Number::GroupCount => Some(i64::try_from(subject.group_count()).unwrap_or(i64::MAX)),
        }
    }
}

impl Scalar {
    fn evaluate<'a>(&'a self, subject: &'a dyn Subject) -> Value<'a> {
        let value = match self {
            Scalar::Text(text) => text.evaluate(subject).map(Value::Text),
            Scalar::Number(number) => number.evaluate(subject).map(Value::Number),
            Scalar::Condition(condition) => condition.evaluate(subject).map(Value::Boolean),
            Scalar::Null => None,
        };
        value.unwrap_or(Value::Null)
    }
}

impl Value<'_> {
    /// How two values order, or `None` when either is null or they are booleans.
    fn ordering(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Value::Text(left), Value::Text(right)) => Some(left.cmp(right)),
            (Value::Number(left), Value::Number(right)) => Some(left.cmp(right)),
            _ => None,
        }
    }
}

/// The number of characters in `text`, as an OData integer.
fn char_count(text: &str) -> i64 {
    i64::try_from(text.chars().count()).unwrap_or(i64::MAX)
}

/// The character position of the first `pattern` in `text`, or -1 when there
/// is none. The empty pattern is found at 0, as in OData.
fn index_of(text: &str, pattern: &str) -> i64 {
    text.find(pattern)
        .map_or(-1, |byte| char_count(&text[..byte]))
}

/// The byte offset `count` characters on from byte offset `from`, stopping at
/// the end of `text`. A negative count moves nowhere.
fn advance(text: &str, from: usize, count: i64) -> usize {
    let Ok(count) = usize::try_from(count) else {
        return from;
    };
    text[from..]
        .char_indices()
        .nth(count)
        .map_or(text.len(), |(offset, _)| from + offset)
}

/// `substring` counted in characters, clamped to the string instead of
/// failing: evaluation runs per connection, long after the request was
/// accepted, so there is no one to report an out-of-range index to.
fn substring(text: Cow<'_, str>, start: i64, length: Option<i64>) -> Cow<'_, str> {
    let begin = advance(&text, 0, start);
    let end = length.map_or(text.len(), |length| advance(&text, begin, length));
    keep(text, begin..end)
}

/// The bytes `range` of `text`, reusing its buffer when it owns one.
fn keep(text: Cow<'_, str>, range: Range<usize>) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[range]),
        Cow::Owned(mut text) => {
            text.truncate(range.end);
            text.drain(..range.start);
            Cow::Owned(text)
        }
    }
}

/// `concat` allocates only when both sides contribute something.
fn concat<'a>(first: Cow<'a, str>, second: Cow<'a, str>) -> Cow<'a, str> {
    if second.is_empty() {
        return first;
    }
    if first.is_empty() {
        return second;
    }
    let mut joined = first.into_owned();
    joined.push_str(&second);
    Cow::Owned(joined)
}

impl TextTest {
    fn apply(self, text: &str, pattern: &str) -> bool {
        match self {
            TextTest::StartsWith => text.starts_with(pattern),
            TextTest::EndsWith => text.ends_with(pattern),
            TextTest::Contains => text.contains(pattern),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TextTest::StartsWith => "startswith",
            TextTest::EndsWith => "endswith",
            TextTest::Contains => "contains",
        }
    }
}

impl TextMap {
    /// Case mapping is Unicode's default, independent of any locale, so the
    /// same filter selects the same connections on every machine. `trim`
    /// removes Unicode white space from both ends.
    fn apply(self, text: Cow<'_, str>) -> Cow<'_, str> {
        match self {
            TextMap::ToLower => map_case(text, u8::is_ascii_uppercase, str::to_lowercase),
            TextMap::ToUpper => map_case(text, u8::is_ascii_lowercase, str::to_uppercase),
            TextMap::Trim => {
                let end = text.trim_end().len();
                let begin = (text.len() - text.trim_start().len()).min(end);
                keep(text, begin..end)
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            TextMap::ToLower => "tolower",
            TextMap::ToUpper => "toupper",
            TextMap::Trim => "trim",
        }
    }
}

/// Maps the case of `text` with `map`, skipping the copy when `text` is ASCII
/// and has no byte that `changes` would alter: user and connection IDs are
/// mostly ASCII, often already in the wanted case.
fn map_case<'a>(
    text: Cow<'a, str>,
    changes: fn(&u8) -> bool,
    map: fn(&str) -> String,
) -> Cow<'a, str> {
    if text.is_ascii() && !text.as_bytes().iter().any(changes) {
        text
    } else {
        Cow::Owned(map(&text))
    }
}

impl Comparison {
    fn from_keyword(word: &str) -> Option<Comparison> {
        match word {
            "eq" => Some(Comparison::Eq),
            "ne" => Some(Comparison::Ne),
            "gt" => Some(Comparison::Gt),
            "ge" => Some(Comparison::Ge),
            "lt" => Some(Comparison::Lt),
            "le" => Some(Comparison::Le),
            _ => None,
        }
    }

    fn keyword(self) -> &'static str {
        match self {
            Comparison::Eq => "eq",
            Comparison::Ne => "ne",
            Comparison::Gt => "gt",
            Comparison::Ge => "ge",
            Comparison::Lt => "lt",
            Comparison::Le => "le",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, Comparison::Eq | Comparison::Ne)
    }

    /// Strings order by code point, which is ordinal order. Ordering with a
    /// null is false, as OData's lifted relational operators require.
    fn apply(self, left: &Value<'_>, right: &Value<'_>) -> bool {
        match self {
            Comparison::Eq => left == right,
            Comparison::Ne => left != right,
            Comparison::Gt => left.ordering(right).is_some_and(Ordering::is_gt),
            Comparison::Ge => left.ordering(right).is_some_and(Ordering::is_ge),
            Comparison::Lt => left.ordering(right).is_some_and(Ordering::is_lt),
            Comparison::Le => left.ordering(right).is_some_and(Ordering::is_le),
        }
    }
}

/// The functions the emulator implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Test(TextTest),
    Map(TextMap),
    Length,
    IndexOf,
    Substring,
    Concat,
}

impl Function {
    /// Function names are matched exactly: OData spells them in lowercase.
    fn from_name(name: &str) -> Option<Function> {
        match name {
            "startswith" => Some(Function::Test(TextTest::StartsWith)),
            "endswith" => Some(Function::Test(TextTest::EndsWith)),
            "contains" => Some(Function::Test(TextTest::Contains)),
            "tolower" => Some(Function::Map(TextMap::ToLower)),
            "toupper" => Some(Function::Map(TextMap::ToUpper)),
            "trim" => Some(Function::Map(TextMap::Trim)),
            "length" => Some(Function::Length),
            "indexof" => Some(Function::IndexOf),
            "substring" => Some(Function::Substring),
            "concat" => Some(Function::Concat),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Function::Test(test) => test.name(),
            Function::Map(map) => map.name(),
            Function::Length => "length",
            Function::IndexOf => "indexof",
            Function::Substring => "substring",
            Function::Concat => "concat",
        }
    }

    /// Checks the arguments and builds the call.
    fn call(self, arguments: Vec<Typed>, at: usize) -> Result<Operand, FilterError> {
        let found = arguments.len();
        let wrong_count = |expected| FilterError::ArgumentCount {
            function: self.name(),
            expected,
            found,
            at,
        };

        match self {
            Function::Length => {
                let [argument] =
                    <[Typed; 1]>::try_from(arguments).map_err(|_| wrong_count("1 argument"))?;
                // `length` is the one function that also takes the collection.
                let number = match argument.operand {
                    Operand::Groups => Number::GroupCount,
                    _ => Number::Length(self.text_argument(argument, 1)?),
                };
                Ok(Operand::Number(number))
            }
            Function::Map(map) => {
                let [text] =
                    <[Typed; 1]>::try_from(arguments).map_err(|_| wrong_count("1 argument"))?;
                Ok(Operand::Text(Text::Map(
                    map,
                    Box::new(self.text_argument(text, 1)?),
                )))
            }
            Function::Test(test) => {
                let [text, pattern] =
                    <[Typed; 2]>::try_from(arguments).map_err(|_| wrong_count("2 arguments"))?;
                Ok(Operand::Condition(Condition::Test {
                    test,
                    text: self.text_argument(text, 1)?,
                    pattern: self.text_argument(pattern, 2)?,
                }))
            }
            Function::IndexOf => {
                let [text, pattern] =
                    <[Typed; 2]>::try_from(arguments).map_err(|_| wrong_count("2 arguments"))?;
                Ok(Operand::Number(Number::IndexOf {
                    text: self.text_argument(text, 1)?,
                    pattern: self.text_argument(pattern, 2)?,
                }))
            }
            Function::Concat => {
                let [first, second] =
                    <[Typed; 2]>::try_from(arguments).map_err(|_| wrong_count("2 arguments"))?;
                Ok(Operand::Text(Text::Concat(
                    Box::new(self.text_argument(first, 1)?),
                    Box::new(self.text_argument(second, 2)?),
                )))
            }
            Function::Substring => {
                let mut arguments = arguments.into_iter();
                let (Some(text), Some(start), length, None) = (
                    arguments.next(),
                    arguments.next(),
                    arguments.next(),
                    arguments.next(),
                ) else {
                    return Err(wrong_count("2 or 3 arguments"));
                };
                let text = Box::new(self.text_argument(text, 1)?);
                let start = Box::new(self.integer_argument(start, 2)?);
                let length = match length {
                    Some(length) => Some(Box::new(self.integer_argument(length, 3)?)),
                    None => None,
                };
                Ok(Operand::Text(Text::Substring {
                    text,
                    start,
                    length,
                }))
            }
        }
    }

    fn text_argument(self, argument: Typed, index: usize) -> Result<Text, FilterError> {
        match argument.operand {
            Operand::Text(text) => Ok(text),
            Operand::Null => Ok(Text::Null),
            other => Err(FilterError::TypeMismatch {
                expected: format!("a string as argument {index} of {}", self.name()),
                found: other.describe(),
                at: argument.at,
            }),
        }
    }

    fn integer_argument(self, argument: Typed, index: usize) -> Result<Number, FilterError> {
        match argument.operand {
            Operand::Number(number) => Ok(number),
            Operand::Null => Ok(Number::Null),
            other => Err(FilterError::TypeMismatch {
                expected: format!("an integer as argument {index} of {}", self.name()),
                found: other.describe(),
                at: argument.at,
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Word(String),
    Text(String),
    Integer(i64),
    Open,
    Close,
    Comma,
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    at: usize,
}

impl Token {
    fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Word(word) => format!("'{word}'"),
            TokenKind::Text(_) => "a string literal".to_owned(),
            TokenKind::Integer(value) => format!("integer {value}"),
            TokenKind::Open => "'('".to_owned(),
            TokenKind::Close => "')'".to_owned(),
            TokenKind::Comma => "','".to_owned(),
            TokenKind::End => "end of filter".to_owned(),
        }
    }
}

/// Characters of the filter, each with its position.
type CharStream<'a> = Peekable<Enumerate<Chars<'a>>>;

/// Splits `text` into tokens and returns them with the position of its end.
fn tokenize(text: &str) -> Result<(Vec<Token>, usize), FilterError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().enumerate().peekable();

    while let Some((at, first)) = chars.next() {
        let kind = match first {
            _ if first.is_ascii_whitespace() => continue,
            '(' => TokenKind::Open,
            ')' => TokenKind::Close,
            ',' => TokenKind::Comma,
            '\'' => TokenKind::Text(read_string(&mut chars, at)?),
            _ if first.is_ascii_alphabetic() || first == '_' => {
                TokenKind::Word(read_word(first, &mut chars))
            }
            _ if first.is_ascii_digit() || first == '-' || first == '+' => {
                TokenKind::Integer(read_integer(first, &mut chars, at)?)
            }
            _ => return Err(FilterError::UnexpectedCharacter { found: first, at }),
        };
        tokens.push(Token { kind, at });
    }

    Ok((tokens, text.chars().count()))
}

fn read_word(first: char, chars: &mut CharStream<'_>) -> String {
    let mut word = String::from(first);
    while let Some((_, next)) = chars.next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_') {
        word.push(next);
    }
    word
}

/// Reads a string literal whose opening quote was at `at`.
fn read_string(chars: &mut CharStream<'_>, at: usize) -> Result<String, FilterError> {
    let mut value = String::new();
    loop {
        match chars.next() {
            None => return Err(FilterError::UnterminatedString { at }),
            Some((_, '\'')) => {
                // Two quotes in a row stand for one quote inside the literal.
                if chars.next_if(|&(_, c)| c == '\'').is_none() {
                    return Ok(value);
                }
                value.push('\'');
            }
            Some((_, c)) => value.push(c),
        }
    }
}

/// Reads `sign? digit+` whose first character, `first`, was at `at`.
fn read_integer(first: char, chars: &mut CharStream<'_>, at: usize) -> Result<i64, FilterError> {
    let mut literal = String::from(first);
    while let Some((_, digit)) = chars.next_if(|&(_, c)| c.is_ascii_digit()) {
        literal.push(digit);
    }

    if !literal.ends_with(|c: char| c.is_ascii_digit()) {
        let found = chars
            .peek()
            .map_or_else(|| "end of filter".to_owned(), |&(_, c)| format!("'{c}'"));
        return Err(FilterError::Syntax {
            expected: "a digit after the sign",
            found,
            at: at + 1,
        });
    }

    literal
        .parse()
        .map_err(|_| FilterError::IntegerOutOfRange { literal, at })
}

/// The keyword `word` spells, in any case.
fn keyword_for(word: &str) -> Option<&'static str> {
    KEYWORDS
        .into_iter()
        .find(|keyword| keyword.eq_ignore_ascii_case(word))
}

/// The error for `token` standing where `expected` should be. A keyword in the
/// wrong case gets its own message, since that is the likely mistake.
fn unexpected(token: &Token, expected: &'static str) -> FilterError {
    if let TokenKind::Word(word) = &token.kind {
        if let Some(keyword) = keyword_for(word).filter(|keyword| keyword != word) {
            return FilterError::KeywordCase {
                found: word.clone(),
                keyword,
                at: token.at,
            };
        }
    }

    FilterError::Syntax {
        expected,
        found: token.describe(),
        at: token.at,
    }
}

/// One more level of nesting, or an error past [`MAX_NESTING`].
fn descend(depth: usize, at: usize) -> Result<usize, FilterError> {
    if depth >= MAX_NESTING {
        return Err(FilterError::TooDeep {
            max: MAX_NESTING,
            at,
        });
    }
    Ok(depth + 1)
}

/// A parsed expression of any type, before its context has checked it.
#[derive(Debug)]
enum Operand {
    Condition(Condition),
    Text(Text),
    Number(Number),
    Null,
    Groups,
}

impl Operand {
    fn describe(&self) -> &'static str {
        match self {
            Operand::Condition(_) => Kind::Boolean.describe(),
            Operand::Text(_) => Kind::Text.describe(),
            Operand::Number(_) => Kind::Number.describe(),
            Operand::Null => "null",
            Operand::Groups => "the collection 'groups'",
        }
    }
}

/// An operand and the position where it starts.
#[derive(Debug)]
struct Typed {
    operand: Operand,
    at: usize,
}

/// The types a [`Scalar`] can have; null fits each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Boolean,
    Text,
    Number,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Boolean => "a boolean",
            Kind::Text => "a string",
            Kind::Number => "an integer",
        }
    }
}

fn expect_condition(typed: Typed, expected: &str) -> Result<Condition, FilterError> {
    match typed.operand {
        Operand::Condition(condition) => Ok(condition),
        other => Err(FilterError::TypeMismatch {
            expected: expected.to_owned(),
            found: other.describe(),
            at: typed.at,
        }),
    }
}

/// Turns an operand into a comparable value, with its type or `None` for null.
fn into_scalar(typed: Typed, role: &str) -> Result<(Scalar, Option<Kind>), FilterError> {
    match typed.operand {
        Operand::Condition(condition) => {
            Ok((Scalar::Condition(Box::new(condition)), Some(Kind::Boolean)))
        }
        Operand::Text(text) => Ok((Scalar::Text(text), Some(Kind::Text))),
        Operand::Number(number) => Ok((Scalar::Number(number), Some(Kind::Number))),
        Operand::Null => Ok((Scalar::Null, None)),
        Operand::Groups => Err(FilterError::TypeMismatch {
            expected: format!("a single value {role}"),
            found: Operand::Groups.describe(),
            at: typed.at,
        }),
    }
}

fn compare(
    left: Typed,
    comparison: Comparison,
    at: usize,
    right: Typed,
) -> Result<Condition, FilterError> {
    let (left, left_kind) = into_scalar(left, "to compare")?;
    let (right, right_kind) = into_scalar(right, "to compare")?;

    if let (Some(left_kind), Some(right_kind)) = (left_kind, right_kind) {
        if left_kind != right_kind {
            return Err(FilterError::IncomparableTypes {
                left: left_kind.describe(),
                right: right_kind.describe(),
                operator: comparison.keyword(),
                at,
            });
        }
    }

    let boolean = left_kind == Some(Kind::Boolean) || right_kind == Some(Kind::Boolean);
    if boolean && comparison.is_ordering() {
        return Err(FilterError::BooleanOrdering {
            operator: comparison.keyword(),
            at,
        });
    }

    Ok(Condition::Compare {
        left,
        comparison,
        right,
    })
}

fn in_groups(needle: Typed) -> Result<Condition, FilterError> {
    match needle.operand {
        Operand::Text(text) => Ok(Condition::InGroups(text)),
        Operand::Null => Ok(Condition::InGroups(Text::Null)),
        other => Err(FilterError::TypeMismatch {
            expected: "a string before 'in groups'".to_owned(),
            found: other.describe(),
            at: needle.at,
        }),
    }
}

/// `needle in (items)`: the needle and every item must share one type.
fn in_list(needle: Typed, items: Vec<Typed>) -> Result<Condition, FilterError> {
    let (needle, mut kind) = into_scalar(needle, "before 'in'")?;

    let mut list = Vec::with_capacity(items.len());
    for item in items {
        let at = item.at;
        let (item, item_kind) = into_scalar(item, "in the list after 'in'")?;
        match (kind, item_kind) {
            (Some(expected), Some(found)) if expected != found => {
                return Err(FilterError::TypeMismatch {
                    expected: format!("{} in the list after 'in'", expected.describe()),
                    found: found.describe(),
                    at,
                });
            }
            (None, Some(_)) => kind = item_kind,
            _ => {}
        }
        list.push(item);
    }

    Ok(Condition::InList { needle, list })
}

/// A recursive-descent parser that type-checks as it goes. Every cycle of its
/// recursion passes through [`descend`], so its depth is bounded.
struct Parser {
    tokens: Vec<Token>,
    next: usize,
    end: Token,
}

/// Parses one operand of an `and` or `or` chain.
type Level = fn(&mut Parser, usize) -> Result<Typed, FilterError>;

impl Parser {
    fn new(text: &str) -> Result<Parser, FilterError> {
        let (tokens, end) = tokenize(text)?;
        Ok(Parser {
            tokens,
            next: 0,
            end: Token {
                kind: TokenKind::End,
                at: end,
            },
        })
    }

    fn peek(&self) -> &Token {
        self.tokens.get(self.next).unwrap_or(&self.end)
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        self.next = self.tokens.len().min(self.next + 1);
        token
    }

    /// Consumes the next token if it is `kind`, returning its position.
    fn eat(&mut self, kind: &TokenKind) -> Option<usize> {
        (self.peek().kind == *kind).then(|| self.bump().at)
    }

    /// Consumes the next token if it is the keyword `keyword`, exactly as spelled.
    fn eat_keyword(&mut self, keyword: &str) -> Option<usize> {
        let found = matches!(&self.peek().kind, TokenKind::Word(word) if word == keyword);
        found.then(|| self.bump().at)
    }

    fn peek_comparison(&self) -> Option<(Comparison, usize)> {
        let token = self.peek();
        match &token.kind {
            TokenKind::Word(word) => Comparison::from_keyword(word).map(|c| (c, token.at)),
            _ => None,
        }
    }

    fn expect_close(&mut self, expected: &'static str) -> Result<(), FilterError> {
        match self.eat(&TokenKind::Close) {
            Some(_) => Ok(()),
            None => Err(unexpected(self.peek(), expected)),
        }
    }

    fn expect_end(&self) -> Result<(), FilterError> {
        match self.peek().kind {
            TokenKind::End => Ok(()),
            _ => Err(unexpected(self.peek(), "an operator or end of filter")),
        }
    }

    fn parse_or(&mut self, depth: usize) -> Result<Typed, FilterError> {
        self.parse_chain(
            depth,
            "or",
            "a boolean operand for 'or'",
            Parser::parse_and,
            Condition::Any,
        )
    }

    fn parse_and(&mut self, depth: usize) -> Result<Typed, FilterError> {
        self.parse_chain(
            depth,
            "and",
            "a boolean operand for 'and'",
            Parser::parse_comparison,
            Condition::All,
        )
    }

    /// `operand (keyword operand)*`, kept flat so that a long chain of
    /// clauses does not become a deep tree.
    fn parse_chain(
        &mut self,
        depth: usize,
        keyword: &str,
        expected: &str,
        operand: Level,
        combine: fn(Vec<Condition>) -> Condition,
    ) -> Result<Typed, FilterError> {
        let first = operand(self, depth)?;
        if !matches!(&self.peek().kind, TokenKind::Word(word) if word == keyword) {
            return Ok(first);
        }

        let at = first.at;
        let mut parts = vec![expect_condition(first, expected)?];
        while self.eat_keyword(keyword).is_some() {
            let next = operand(self, depth)?;
            parts.push(expect_condition(next, expected)?);
        }

        Ok(Typed {
            operand: Operand::Condition(combine(parts)),
            at,
        })
    }

    /// `unary (comparison unary)?`: comparisons do not chain.
    fn parse_comparison(&mut self, depth: usize) -> Result<Typed, FilterError> {
        let left = self.parse_unary(depth)?;
        let Some((comparison, at)) = self.peek_comparison() else {
            return Ok(left);
        };
        self.bump();

        let right = self.parse_unary(depth)?;
        if let Some((chained, chained_at)) = self.peek_comparison() {
            return Err(FilterError::ChainedComparison {
                operator: chained.keyword(),
                at: chained_at,
            });
        }

        let start = left.at;
        Ok(Typed {
            operand: Operand::Condition(compare(left, comparison, at, right)?),
            at: start,
        })
    }

    /// `not` binds tighter than comparisons, so `not length(userId) gt 5`
    /// negates an integer and is refused, as the service documents.
    fn parse_unary(&mut self, depth: usize) -> Result<Typed, FilterError> {
        let Some(at) = self.eat_keyword("not") else {
            return self.parse_membership(depth);
        };

        let operand = self.parse_unary(descend(depth, at)?)?;
        let negated = expect_condition(operand, "a boolean operand for 'not'")?;
        Ok(Typed {
            operand: Operand::Condition(Condition::Not(Box::new(negated))),
            at,
        })
    }

    /// `primary ('in' target)?`. `in` binds tighter than `not`, so
    /// `not 'a' in groups` means `not ('a' in groups)`.
    fn parse_membership(&mut self, depth: usize) -> Result<Typed, FilterError> {
        let needle = self.parse_primary(depth)?;
        let Some(at) = self.eat_keyword("in") else {
            return Ok(needle);
        };
        let depth = descend(depth, at)?;

        let start = needle.at;
        let condition = if self.eat(&TokenKind::Open).is_some() {
            let mut items = vec![self.parse_or(depth)?];
            while self.eat(&TokenKind::Comma).is_some() {
                items.push(self.parse_or(depth)?);
            }
            self.expect_close("')' or ','")?;

            // `(groups)` is the collection in parentheses, not a list of one.
            if let [Typed {
                operand: Operand::Groups,
                ..
            }] = items.as_slice()
            {
                in_groups(needle)?
            } else {
                in_list(needle, items)?
            }
        } else {
            let target = self.parse_primary(depth)?;
            match target.operand {
                Operand::Groups => in_groups(needle)?,
                other => {
                    return Err(FilterError::TypeMismatch {
                        expected: "groups or a parenthesized list after 'in'".to_owned(),
                        found: other.describe(),
                        at: target.at,
                    });
                }
            }
        };

        Ok(Typed {
            operand: Operand::Condition(condition),
            at: start,
        })
    }

    fn parse_primary(&mut self, depth: usize) -> Result<Typed, FilterError> {
        let token = self.bump();
        let at = token.at;

        let operand = match &token.kind {
            TokenKind::Open => {
                let inner = self.parse_or(descend(depth, at)?)?;
                self.expect_close("')'")?;
                inner.operand
            }
            TokenKind::Text(value) => Operand::Text(Text::Literal(value.as_str().into())),
            TokenKind::Integer(value) => Operand::Number(Number::Literal(*value)),
            TokenKind::Word(word)
                if self.peek().kind == TokenKind::Open && keyword_for(word).is_none() =>
            {
                return self.parse_call(word, at, depth);
            }
            TokenKind::Word(word) => word_operand(&token, word)?,
            TokenKind::Close | TokenKind::Comma | TokenKind::End => {
                return Err(unexpected(&token, "an operand"));
            }
        };

        Ok(Typed { operand, at })
    }

    /// `name(arguments)`, with the parser just before the `(`.
    fn parse_call(&mut self, name: &str, at: usize, depth: usize) -> Result<Typed, FilterError> {
        let Some(function) = Function::from_name(name) else {
            return Err(FilterError::UnsupportedFunction {
                name: name.to_owned(),
                at,
            });
        };
        let depth = descend(depth, at)?;
        self.bump();

        let mut arguments = Vec::new();
        if self.eat(&TokenKind::Close).is_none() {
            arguments.push(self.parse_or(depth)?);
            while self.eat(&TokenKind::Comma).is_some() {
                arguments.push(self.parse_or(depth)?);
            }
            self.expect_close("')' or ','")?;
        }

        Ok(Typed {
            operand: function.call(arguments, at)?,
            at,
        })
    }
}

/// A word standing alone as an operand: an identifier or a literal keyword.
/// Identifiers ignore case, as the service documents; keywords do not.
fn word_operand(token: &Token, word: &str) -> Result<Operand, FilterError> {
    if word.eq_ignore_ascii_case("userId") {
        return Ok(Operand::Text(Text::UserId));
    }
    if word.eq_ignore_ascii_case("connectionId") {
        return Ok(Operand::Text(Text::ConnectionId));
    }
    if word.eq_ignore_ascii_case("groups") {
        return Ok(Operand::Groups);
    }

    match word {
        "null" => Ok(Operand::Null),
        "true" => Ok(Operand::Condition(Condition::Constant(true))),
        "false" => Ok(Operand::Condition(Condition::Constant(false))),
        _ if keyword_for(word).is_some() => Err(unexpected(token, "an operand")),
        _ => Err(FilterError::UnknownIdentifier {
            name: word.to_owned(),
            at: token.at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestConnection {
        user: Option<&'static str>,
        connection: &'static str,
        groups: &'static [&'static str],
    }

    impl Subject for TestConnection {
        fn user_id(&self) -> Option<&str> {
            self.user
        }

        fn connection_id(&self) -> &str {
            self.connection
        }

        fn in_group(&self, group: &str) -> bool {
            self.groups.contains(&group)
        }

        fn group_count(&self) -> usize {
            self.groups.len()
        }
    }

    fn user(id: &'static str) -> TestConnection {
        TestConnection {
            user: Some(id),
            connection: "conn-1",
            groups: &[],
        }
    }

    fn anonymous() -> TestConnection {
        TestConnection {
            user: None,
            connection: "conn-anon",
            groups: &[],
        }
    }

    fn member(id: &'static str, groups: &'static [&'static str]) -> TestConnection {
        TestConnection {
            user: Some(id),
            connection: "conn-1",
            groups,
        }
    }

    #[track_caller]
    fn check(filter: &str, subject: &TestConnection) -> bool {
        match Filter::parse(filter) {
            Ok(parsed) => parsed.matches(subject),
            Err(error) => panic!("{filter:?} should parse, got: {error}"),
        }
    }

    #[track_caller]
    fn error(filter: &str) -> FilterError {
        match Filter::parse(filter) {
            Ok(parsed) => panic!("{filter:?} should be refused, parsed as {parsed:?}"),
            Err(error) => error,
        }
    }

    #[track_caller]
    fn message(filter: &str) -> String {
        error(filter).to_string()
    }

    #[test]
    fn eq_and_ne_compare_strings_exactly() {
        assert!(check("userId eq 'user1'", &user("user1")));
        assert!(!check("userId eq 'user1'", &user("user2")));
        assert!(!check("userId eq 'user1'", &user("USER1")));
        assert!(check("userId ne 'user1'", &user("user2")));
        assert!(!check("userId ne 'user1'", &user("user1")));
        assert!(check("connectionId eq 'conn-1'", &user("x")));
        assert!(check("connectionId ne '123'", &user("x")));
        assert!(check("'a' eq 'a'", &anonymous()));
    }

    #[test]
    fn strings_order_ordinally() {
        let bob = user("bob");
        assert!(check("userId gt 'alice'", &bob));
        assert!(!check("userId gt 'bob'", &bob));
        assert!(check("userId ge 'bob'", &bob));
        assert!(check("userId lt 'carol'", &bob));
        assert!(!check("userId lt 'bob'", &bob));
        assert!(check("userId le 'bob'", &bob));
        // Upper case sorts before lower case in code point order.
        assert!(check("'B' lt 'a'", &bob));
        assert!(check("'user10' lt 'user9'", &bob));
    }

    #[test]
    fn integers_compare_numerically() {
        let subject = user("abcdef");
        assert!(check("length(userId) eq 6", &subject));
        assert!(check("length(userId) ne 5", &subject));
        assert!(check("length(userId) gt 5", &subject));
        assert!(!check("length(userId) gt 6", &subject));
        assert!(check("length(userId) ge 6", &subject));
        assert!(check("length(userId) lt 10", &subject));
        assert!(!check("length(userId) lt 6", &subject));
        assert!(check("length(userId) le 6", &subject));
        // Numeric, not textual: 10 is greater than 9.
        assert!(check("10 gt 9", &subject));
    }

    #[test]
    fn integer_literals_take_a_sign() {
        let empty = user("");
        assert!(check("length(userId) gt -1", &empty));
        assert!(check("length(userId) eq +0", &empty));
        assert!(check("-5 lt +3", &empty));
        assert!(check("9223372036854775807 gt -9223372036854775808", &empty));
    }

    #[test]
    fn functions_test_strings() {
        let subject = user("user-ab-de");
        assert!(check("startswith(userId, 'user')", &subject));
        assert!(!check("startswith(userId, 'ab')", &subject));
        assert!(check("endswith(userId,'de')", &subject));
        assert!(!check("endswith(userId, 'ab')", &subject));
        assert!(check("contains(userId, '-ab-')", &subject));
        assert!(!check("contains(userId, 'xyz')", &subject));
        assert!(check("length(userId) gt 1", &subject));
        assert!(check("startswith(connectionId, 'conn-')", &subject));
        assert!(check("contains('haystack', 'st')", &subject));
        assert!(check("startswith(userId, userId)", &subject));
        assert!(check("length('') eq 0", &subject));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(check("length(userId) eq 3", &user("ünï")));
        assert!(check("length('日本') eq 2", &anonymous()));
    }

    #[test]
    fn doubled_quotes_escape_a_quote() {
        assert!(check("userId eq 'user''1'", &user("user'1")));
        assert!(!check("userId eq 'user''1'", &user("user''1")));
        assert!(check("userId eq ''''", &user("'")));
        assert!(check("userId eq ''", &user("")));
        assert!(check("length('it''s') eq 4", &anonymous()));
        assert!(check("contains(userId, ' ')", &user("a b")));
    }

    #[test]
    fn non_ascii_literals_are_compared_as_written() {
        assert!(check("userId eq 'ü'", &user("ü")));
        assert!(!check("userId eq 'ü'", &user("u")));
    }

    #[test]
    fn null_equals_only_null() {
        assert!(check("userId eq null", &anonymous()));
        assert!(!check("userId eq null", &user("user1")));
        assert!(check("userId ne null", &user("user1")));
        assert!(!check("userId ne null", &anonymous()));
        assert!(check("null eq userId", &anonymous()));
        assert!(check("null eq null", &anonymous()));
        assert!(!check("userId eq 'user1'", &anonymous()));
        assert!(check("userId ne 'user1'", &anonymous()));
        assert!(check("length(userId) eq null", &anonymous()));
        assert!(!check("length(userId) eq null", &user("a")));
    }

    #[test]
    fn ordering_a_null_is_false() {
        let nobody = anonymous();
        assert!(!check("length(userId) gt 3", &nobody));
        assert!(!check("length(userId) le 3", &nobody));
        assert!(!check("userId lt 'z'", &nobody));
        assert!(!check("null ge null", &nobody));
        assert!(check("not (length(userId) gt 3)", &nobody));
    }

    #[test]
    fn functions_of_null_are_null() {
        let nobody = anonymous();
        assert!(!check("startswith(userId, 'a')", &nobody));
        assert!(!check("not startswith(userId, 'a')", &nobody));
        assert!(!check("endswith(null, 'a')", &nobody));
        assert!(!check("contains('abc', null)", &nobody));
        assert!(check("not startswith(userId, 'a') or true", &nobody));
        assert!(!check("not startswith(userId, 'a') and true", &nobody));
        assert!(check("startswith(userId, 'a') eq null", &nobody));
        assert!(!check("startswith(userId, 'a') eq false", &nobody));
    }

    #[test]
    fn logical_operators_combine_conditions() {
        let subject = user("user1");
        assert!(check("true and true", &subject));
        assert!(!check("true and false", &subject));
        assert!(check("false or true", &subject));
        assert!(!check("false or false", &subject));
        assert!(check("not false", &subject));
        assert!(!check("not true", &subject));
        assert!(check("not not true", &subject));
        assert!(check("true", &subject));
        assert!(!check("false", &subject));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let subject = anonymous();
        assert!(check("true or true and false", &subject));
        assert!(check("false and false or true", &subject));
        assert!(!check("(true or true) and false", &subject));
        assert!(!check("false and (false or true)", &subject));
    }

    #[test]
    fn not_binds_tighter_than_and_and_or() {
        let subject = anonymous();
        assert!(check("not true or true", &subject));
        assert!(!check("not (true or true)", &subject));
        assert!(!check("not true and true", &subject));
        assert!(check("not false and true", &subject));
    }

    #[test]
    fn comparisons_bind_tighter_than_and() {
        let subject = user("abc");
        assert!(check("userId eq 'abc' and length(userId) eq 3", &subject));
        assert!(check("startswith(userId, 'a') eq true", &subject));
        assert!(check("'g' in groups eq false", &subject));
        assert!(check("false eq false", &subject));
        assert!(check("true ne false", &subject));
    }

    #[test]
    fn documented_precedence_example_equals_its_parenthesized_form() {
        let bare = Filter::parse(
            "length(userId) gt 0 and length(userId) lt 3 or length(userId) gt 7 and length(userId) lt 10",
        )
        .expect("bare form parses");
        let grouped = Filter::parse(
            "((length(userId) gt 0) and (length(userId) lt 3)) or ((length(userId) gt 7) and (length(userId) lt 10))",
        )
        .expect("grouped form parses");

        let ids = ["", "a", "ab", "abc", "abcdefg", "abcdefgh", "abcdefghij"];
        let expected = [false, true, true, false, false, true, false];
        for (id, expected) in ids.into_iter().zip(expected) {
            let subject = user(id);
            assert_eq!(bare.matches(&subject), expected, "bare, user {id:?}");
            assert_eq!(grouped.matches(&subject), expected, "grouped, user {id:?}");
        }
    }

    #[test]
    fn in_groups_tests_membership() {
        let subject = member("u", &["group1", "g2"]);
        assert!(check("'group1' in groups", &subject));
        assert!(!check("'group3' in groups", &subject));
        assert!(check("'g2' in (groups)", &subject));
        assert!(check("'g2' in ((groups))", &subject));
        assert!(!check("null in groups", &subject));
        assert!(check("not ('group3' in groups)", &subject));
        assert!(check("not 'group3' in groups", &subject));
        assert!(!check("not('group1' in groups)", &subject));
    }

    #[test]
    fn user_id_can_be_tested_against_groups() {
        assert!(check("userId in groups", &member("admins", &["admins"])));
        assert!(!check("userId in groups", &member("bob", &["admins"])));
        assert!(!check("userId in groups", &anonymous()));
    }

    #[test]
    fn in_list_tests_each_item() {
        let subject = user("user2");
        assert!(check("userId in ('user1', 'user2', 'user3')", &subject));
        assert!(!check("userId in ('user1', 'user3')", &subject));
        assert!(check("userId in ('user2')", &subject));
        assert!(check("length(userId) in (1, 5)", &subject));
        assert!(check("userId in ('x', null)", &anonymous()));
        assert!(!check("userId in ('x', 'y')", &anonymous()));
        assert!(check("null in (null)", &anonymous()));
        assert!(check("true in (false, true)", &anonymous()));
    }

    #[test]
    fn identifiers_ignore_case() {
        let subject = member("user1", &["g"]);
        assert!(check("USERID eq 'user1'", &subject));
        assert!(check("userid eq 'user1'", &subject));
        assert!(check("ConnectionID eq 'conn-1'", &subject));
        assert!(check("'g' in GROUPS", &subject));
    }

    #[test]
    fn whitespace_is_flexible() {
        let subject = member("user1", &["g"]);
        assert!(check("  userId\teq\n'user1'  ", &subject));
        assert!(check("('g'in groups)and(userId eq'user1')", &subject));
        assert!(check("startswith( userId , 'user' )", &subject));
    }

    #[test]
    fn documented_examples_select_the_right_connections() {
        let in_two = member("user1", &["group1", "group2"]);
        let in_three = member("user4", &["group3"]);
        let outside = member("user1", &[]);

        let any_group = "'group1' in groups or 'group2' in groups or 'group3' in groups";
        assert!(check(any_group, &in_two));
        assert!(check(any_group, &in_three));
        assert!(!check(any_group, &outside));

        let users_in_group = "userId in ('user1', 'user2', 'user3') and 'group1' in groups";
        assert!(check(users_in_group, &in_two));
        assert!(!check(users_in_group, &in_three));
        assert!(!check(users_in_group, &outside));

        let user_not_connection = "userId eq 'user1' and connectionId ne '123'";
        assert!(check(user_not_connection, &in_two));
        let same_connection = TestConnection {
            user: Some("user1"),
            connection: "123",
            groups: &[],
        };
        assert!(!check(user_not_connection, &same_connection));

        let user_not_in_group = "userId eq 'user1' and (not ('group1' in groups))";
        assert!(!check(user_not_in_group, &in_two));
        assert!(check(user_not_in_group, &outside));

        assert!(check("userId eq 'user''1'", &user("user'1")));
    }

    #[test]
    fn documented_operator_table_examples_parse() {
        let examples = [
            "length(userId) le 10 and length(userId) gt 3",
            "length(userId) gt 10 or length(userId) le 3",
            "not endswith(userId, 'milk')",
            "userId eq 'user1'",
            "userId eq null",
            "userId ne 'user1'",
            "userId ne null",
            "length(userId) gt 10",
            "length(userId) ge 10",
            "length(userId) lt 3",
            "'group1' in groups",
            "userId in ('user1','user2')",
            "userId eq 'user1' or (not (startswith(userId,'user2')))",
            "endswith(userId,'de')",
            "startswith(userId,'user')",
            "length(userId) gt 1",
            "not (length(userId) gt 5)",
        ];
        for example in examples {
            assert!(Filter::parse(example).is_ok(), "{example:?} should parse");
        }

        assert!(check("not endswith(userId, 'milk')", &user("oatmeal")));
        assert!(!check("not endswith(userId, 'milk')", &user("oatmilk")));
    }

    #[test]
    fn documented_typos_are_refused() {
        // The operator table writes `user` for `userId`.
        assert_eq!(
            message("user in ('user1','user2')"),
            "unknown identifier 'user' at position 0; expected userId, connectionId or groups"
        );
        // The grouping example in the operator table is one ')' short.
        assert_eq!(
            message("userId eq 'user1' or (not (startswith(userId,'user2'))"),
            "expected ')' at position 54, found end of filter"
        );
    }

    #[test]
    fn not_before_a_comparison_is_refused_as_the_service_documents() {
        assert_eq!(
            message("not length(userId) gt 5"),
            "expected a boolean operand for 'not' at position 4, found an integer"
        );
    }

    #[test]
    fn unsupported_functions_are_named() {
        assert_eq!(
            message("year(userId) eq 2020"),
            "unsupported function 'year' at position 0; expected startswith, endswith, contains, indexof, length, tolower, toupper, trim, substring or concat"
        );
        for name in [
            "substringof",
            "matchesPattern",
            "round",
            "StartsWith",
            "ToLower",
            "frobnicate",
        ] {
            let filter = format!("userId eq 'a' or {name}(userId, 'b') eq 'c'");
            assert_eq!(
                error(&filter),
                FilterError::UnsupportedFunction {
                    name: name.to_owned(),
                    at: 17
                },
                "{filter}"
            );
        }
    }

    #[test]
    fn argument_counts_are_checked() {
        assert_eq!(
            message("length(userId, 'x') gt 1"),
            "function 'length' at position 0 takes 1 argument, found 2"
        );
        assert_eq!(
            message("startswith(userId)"),
            "function 'startswith' at position 0 takes 2 arguments, found 1"
        );
        assert_eq!(
            message("contains()"),
            "function 'contains' at position 0 takes 2 arguments, found 0"
        );
        assert_eq!(
            message("startswith(userId,)"),
            "expected an operand at position 18, found ')'"
        );
    }

    #[test]
    fn argument_types_are_checked() {
        assert_eq!(
            message("startswith(userId, 3)"),
            "expected a string as argument 2 of startswith at position 19, found an integer"
        );
        assert_eq!(
            message("endswith(true, 'a')"),
            "expected a string as argument 1 of endswith at position 9, found a boolean"
        );
        assert_eq!(
            message("contains(groups, 'a')"),
            "expected a string as argument 1 of contains at position 9, found the collection 'groups'"
        );
        assert_eq!(
            message("length(length(userId)) gt 1"),
            "expected a string as argument 1 of length at position 7, found an integer"
        );
    }

    #[test]
    fn length_of_groups_counts_groups() {
        let two = member("u", &["g1", "g2"]);
        let none = member("u", &[]);
        assert!(check("length(groups) gt 1", &two));
        assert!(!check("length(groups) gt 1", &member("u", &["g1"])));
        assert!(check("length(groups) eq 2", &two));
        assert!(check("length(groups) eq 0", &none));
        assert!(check("length((groups)) eq 2", &two));
        assert!(check("length(GROUPS) eq 2", &two));
        assert!(check("length(groups) lt length(userId) or true", &two));
        assert!(check("length(groups) in (1, 2)", &two));
        // The group list is empty rather than null, even for anonymous connections.
        assert!(check("length(groups) eq 0", &anonymous()));
        assert!(!check("length(groups) eq null", &anonymous()));
    }

    #[test]
    fn case_functions_map_strings() {
        // The documented examples.
        assert!(check("tolower(userId) eq 'user1'", &user("USER1")));
        assert!(check("toupper(userId) eq 'USER1'", &user("user1")));

        assert!(check("tolower(userId) eq 'user1'", &user("uSeR1")));
        assert!(check("tolower(userId) eq 'user1'", &user("user1")));
        assert!(!check("tolower(userId) eq 'user1'", &user("user2")));
        assert!(!check("toupper(userId) eq 'user1'", &user("user1")));
        assert!(check("tolower('A-1_b') eq 'a-1_b'", &anonymous()));
        assert!(check("toupper(connectionId) eq 'CONN-1'", &user("x")));
        assert!(check("tolower(toupper(userId)) eq 'mixed'", &user("MiXeD")));
        assert!(check("tolower('') eq ''", &anonymous()));
    }

    #[test]
    fn case_functions_follow_unicode() {
        assert!(check("tolower('ÜNÏ') eq 'ünï'", &anonymous()));
        assert!(check("toupper(userId) eq 'ÉTÉ'", &user("été")));
        // Full case mapping may change the length.
        assert!(check("toupper('straße') eq 'STRASSE'", &anonymous()));
        assert!(check("tolower('日本') eq '日本'", &anonymous()));
    }

    #[test]
    fn trim_removes_white_space_at_both_ends() {
        // The documented example.
        assert!(check("trim(userId) eq 'user1'", &user(" user1 ")));

        assert!(check("trim(userId) eq 'user1'", &user("user1")));
        assert!(check("trim(userId) eq 'a b'", &user("\t a b\n ")));
        assert!(check("trim(userId) eq ''", &user("   ")));
        assert!(check("trim('') eq ''", &anonymous()));
        assert!(check("trim('\u{3000}x\u{a0}') eq 'x'", &anonymous()));
        assert!(check("trim(toupper(userId)) eq 'AB'", &user("  ab ")));
        assert!(!check("userId eq 'user1'", &user(" user1 ")));
    }

    #[test]
    fn substring_counts_characters_from_zero() {
        let dashed = user("user-ab-de");
        // The documented example.
        assert!(check("substring(userId,5,2) eq 'ab'", &dashed));

        assert!(check("substring(userId, 5) eq 'ab-de'", &dashed));
        assert!(check("substring(userId, 0) eq userId", &dashed));
        assert!(check("substring(userId, 0, 4) eq 'user'", &dashed));
        assert!(check("substring('abc', 2, 1) eq 'c'", &anonymous()));
        assert!(check("substring('日本語', 1, 1) eq '本'", &anonymous()));
        assert!(check("substring('日本語', 1) eq '本語'", &anonymous()));
        assert!(check("substring(toupper(userId), 5, 2) eq 'AB'", &dashed));
        assert!(check("length(substring(userId, 3)) eq 7", &dashed));
        assert!(check(
            "substring(userId, indexof(userId, '-') , 1) eq '-'",
            &dashed
        ));
    }

    #[test]
    fn substring_clamps_out_of_range_positions() {
        let nobody = anonymous();
        // A start at or past the end gives the empty string.
        assert!(check("substring('abc', 3) eq ''", &nobody));
        assert!(check("substring('abc', 10) eq ''", &nobody));
        assert!(check("substring('abc', 10, 2) eq ''", &nobody));
        assert!(check("substring('', 0) eq ''", &nobody));
        // A length past the end stops at the end.
        assert!(check("substring('abc', 1, 10) eq 'bc'", &nobody));
        assert!(check("substring('abc', 1, 0) eq ''", &nobody));
        // Negative values count as 0.
        assert!(check("substring('abc', -2) eq 'abc'", &nobody));
        assert!(check("substring('abc', -1, 2) eq 'ab'", &nobody));
        assert!(check("substring('abc', 1, -1) eq ''", &nobody));
        // The extremes of the integer range.
        assert!(check(
            "substring('abc', 9223372036854775807) eq ''",
            &nobody
        ));
        assert!(check(
            "substring('abc', -9223372036854775808) eq 'abc'",
            &nobody
        ));
        assert!(check(
            "substring('abc', 1, 9223372036854775807) eq 'bc'",
            &nobody
        ));
    }

    #[test]
    fn indexof_finds_the_first_occurrence() {
        let dashed = user("user-ab-de");
        // The documented example.
        assert!(check("indexof(userId,'-ab-') ge 0", &dashed));

        assert!(check("indexof(userId, '-ab-') eq 4", &dashed));
        assert!(check("indexof(userId, '-') eq 4", &dashed));
        assert!(check("indexof(userId, 'user') eq 0", &dashed));
        assert!(check("indexof(userId, 'zz') eq -1", &dashed));
        assert!(!check("indexof(userId,'-ab-') ge 0", &user("user1")));
        assert!(check("indexof(userId, 'AB') eq -1", &dashed));
        assert!(check("indexof(userId, '') eq 0", &dashed));
        assert!(check("indexof('', '') eq 0", &anonymous()));
        assert!(check("indexof('', 'a') eq -1", &anonymous()));
        // Characters, not bytes.
        assert!(check("indexof('日本語', '語') eq 2", &anonymous()));
        assert!(check("indexof(tolower(userId), 'b') eq 1", &user("ABC")));
    }

    #[test]
    fn concat_joins_two_strings() {
        // The example of the compatibility test.
        assert!(check("concat(userId,'x') eq 'USER1x'", &user("USER1")));

        assert!(check("concat('a', 'b') eq 'ab'", &anonymous()));
        assert!(check("concat('', userId) eq userId", &user("u")));
        assert!(check("concat(userId, '') eq 'u'", &user("u")));
        assert!(check("concat('', '') eq ''", &anonymous()));
        assert!(check(
            "concat(concat('a', userId), 'c') eq 'abc'",
            &user("b")
        ));
        assert!(check(
            "concat(userId, connectionId) eq 'uconn-1'",
            &user("u")
        ));
        assert!(check("length(concat(userId, 'ü')) eq 2", &user("u")));
        assert!(check("concat('g', '1') in groups", &member("u", &["g1"])));
    }

    #[test]
    fn string_functions_of_null_are_null() {
        let nobody = anonymous();
        for filter in [
            "tolower(userId) eq null",
            "toupper(userId) eq null",
            "trim(userId) eq null",
            "trim(null) eq null",
            "substring(userId, 1) eq null",
            "substring(userId, 1, 2) eq null",
            "substring('abc', null) eq null",
            "substring('abc', 1, null) eq null",
            "indexof(userId, 'a') eq null",
            "indexof('a', null) eq null",
            "concat(userId, 'x') eq null",
            "concat('x', userId) eq null",
            "length(tolower(userId)) eq null",
            "tolower(userId) ne 'x'",
            "not (indexof(userId, 'a') lt 0)",
        ] {
            assert!(check(filter, &nobody), "{filter} should hold for null");
        }
        for filter in [
            "tolower(userId) eq 'x'",
            "substring(userId, 0) eq ''",
            "indexof(userId, 'a') lt 0",
            "indexof(userId, 'a') eq -1",
            "concat(userId, 'x') eq 'x'",
            "startswith(tolower(userId), '')",
            "tolower(userId) in groups",
        ] {
            assert!(!check(filter, &nobody), "{filter} should not hold for null");
        }
        assert!(!check("substring('abc', null) eq 'abc'", &user("a")));
    }

    #[test]
    fn string_function_results_compose_with_the_rest() {
        let subject = member("Alice", &["alice"]);
        assert!(check("tolower(userId) in ('alice', 'bob')", &subject));
        assert!(check("tolower(userId) in groups", &subject));
        assert!(!check("userId in groups", &subject));
        assert!(check("startswith(tolower(userId), 'ali')", &subject));
        assert!(check(
            "endswith(toupper(userId), substring('ICE', 1))",
            &subject
        ));
        assert!(check("toupper(userId) lt tolower(userId)", &subject));
        assert!(check(
            "indexof(userId, 'i') gt indexof(userId, 'l')",
            &subject
        ));
        assert!(check(
            "not (tolower(userId) eq 'bob') and trim(' x ') eq 'x'",
            &subject
        ));
    }

    #[test]
    fn string_function_arguments_are_type_checked() {
        assert_eq!(
            message("tolower(3) eq '3'"),
            "expected a string as argument 1 of tolower at position 8, found an integer"
        );
        assert_eq!(
            message("substring(userId, 'x') eq 'a'"),
            "expected an integer as argument 2 of substring at position 18, found a string"
        );
        assert_eq!(
            message("substring(userId, 1, true) eq 'a'"),
            "expected an integer as argument 3 of substring at position 21, found a boolean"
        );
        assert_eq!(
            message("substring(3, 'x') eq 'a'"),
            "expected a string as argument 1 of substring at position 10, found an integer"
        );
        assert_eq!(
            message("toupper(startswith(userId, 'a')) eq 'A'"),
            "expected a string as argument 1 of toupper at position 8, found a boolean"
        );
        assert_eq!(
            message("trim(groups) eq 'a'"),
            "expected a string as argument 1 of trim at position 5, found the collection 'groups'"
        );
        assert_eq!(
            message("indexof(userId, groups) eq 0"),
            "expected a string as argument 2 of indexof at position 16, found the collection 'groups'"
        );
        assert_eq!(
            message("concat('a', 1) eq 'a1'"),
            "expected a string as argument 2 of concat at position 12, found an integer"
        );
        assert_eq!(
            message("substring(userId, groups) eq 'a'"),
            "expected an integer as argument 2 of substring at position 18, found the collection 'groups'"
        );
    }

    #[test]
    fn string_function_results_are_type_checked() {
        assert_eq!(
            message("tolower(userId) eq 3"),
            "cannot compare a string with an integer using 'eq' at position 16"
        );
        assert_eq!(
            message("indexof(userId, 'a') eq 'x'"),
            "cannot compare an integer with a string using 'eq' at position 21"
        );
        assert_eq!(
            message("length(groups) eq 'x'"),
            "cannot compare an integer with a string using 'eq' at position 15"
        );
        assert_eq!(
            message("tolower(userId)"),
            "expected a boolean expression at position 0, found a string"
        );
        assert_eq!(
            message("not indexof(userId, 'a')"),
            "expected a boolean operand for 'not' at position 4, found an integer"
        );
        assert_eq!(
            message("'a' in tolower(userId)"),
            "expected groups or a parenthesized list after 'in' at position 7, found a string"
        );
        assert_eq!(
            message("length(tolower(groups)) gt 0"),
            "expected a string as argument 1 of tolower at position 15, found the collection 'groups'"
        );
    }

    #[test]
    fn string_function_argument_counts_are_checked() {
        assert_eq!(
            message("tolower() eq 'a'"),
            "function 'tolower' at position 0 takes 1 argument, found 0"
        );
        assert_eq!(
            message("trim(userId, ' ') eq 'a'"),
            "function 'trim' at position 0 takes 1 argument, found 2"
        );
        assert_eq!(
            message("substring(userId) eq 'a'"),
            "function 'substring' at position 0 takes 2 or 3 arguments, found 1"
        );
        assert_eq!(
            message("substring(userId, 1, 2, 3) eq 'a'"),
            "function 'substring' at position 0 takes 2 or 3 arguments, found 4"
        );
        assert_eq!(
            message("indexof(userId) eq 0"),
            "function 'indexof' at position 0 takes 2 arguments, found 1"
        );
        assert_eq!(
            message("concat('a', 'b', 'c') eq 'abc'"),
            "function 'concat' at position 0 takes 2 arguments, found 3"
        );
        assert_eq!(
            message("length(groups, userId) gt 0"),
            "function 'length' at position 0 takes 1 argument, found 2"
        );
    }

    #[test]
    fn string_function_calls_count_towards_nesting() {
        let nested = |depth: usize| {
            format!(
                "{}userId{} eq 'a'",
                "tolower(".repeat(depth),
                ")".repeat(depth)
            )
        };
        assert!(check(&nested(MAX_NESTING), &user("A")));
        assert_eq!(
            error(&nested(MAX_NESTING + 1)),
            FilterError::TooDeep {
                max: MAX_NESTING,
                at: 8 * MAX_NESTING
            }
        );
    }

    #[test]
    fn cheap_cases_borrow_instead_of_allocating() {
        let borrowed = |value: &Cow<'_, str>| matches!(value, Cow::Borrowed(_));
        let lower = TextMap::ToLower.apply(Cow::Borrowed("user-1"));
        assert!(borrowed(&lower));
        let upper = TextMap::ToUpper.apply(Cow::Borrowed("USER-1"));
        assert!(borrowed(&upper));
        assert!(borrowed(&TextMap::Trim.apply(Cow::Borrowed(" a "))));
        assert!(borrowed(&substring(Cow::Borrowed("abcdef"), 1, Some(3))));
        assert!(borrowed(&concat(Cow::Borrowed("a"), Cow::Borrowed(""))));
        assert!(!borrowed(&TextMap::ToLower.apply(Cow::Borrowed("User"))));
        assert!(!borrowed(&concat(Cow::Borrowed("a"), Cow::Borrowed("b"))));

        // Cutting a string that was already built reuses it.
        let owned = substring(Cow::Owned("日本語です".to_owned()), 1, Some(2));
        assert_eq!(owned, "本語");
        assert!(!borrowed(&owned));
        assert_eq!(TextMap::Trim.apply(Cow::Owned(" x ".to_owned())), "x");
    }

    #[test]
    fn documented_string_function_examples_match_their_users() {
        let dashed = member("user-ab-de", &["g1", "g2"]);
        let examples: [(&str, TestConnection); 10] = [
            ("tolower(userId) eq 'user1'", user("USER1")),
            ("toupper(userId) eq 'USER1'", user("user1")),
            ("trim(userId) eq 'user1'", user(" user1 ")),
            ("substring(userId,5,2) eq 'ab'", user("user-ab-de")),
            ("endswith(userId,'de')", user("user-ab-de")),
            ("startswith(userId,'user')", user("user-ab-de")),
            ("indexof(userId,'-ab-') ge 0", user("user-ab-de")),
            ("length(userId) gt 1", user("user-ab-de")),
            ("length(groups) gt 1", dashed),
            ("contains(userId,'ab')", user("user-ab-de")),
        ];
        for (filter, subject) in &examples {
            assert!(
                check(filter, subject),
                "{filter} should match {:?}",
                subject.user
            );
            assert!(!check(filter, &member("x", &["g1"])), "{filter}");
        }
    }

    #[test]
    fn logical_operands_must_be_boolean() {
        assert_eq!(
            message("userId and 'x'"),
            "expected a boolean operand for 'and' at position 0, found a string"
        );
        assert_eq!(
            message("true and 'x'"),
            "expected a boolean operand for 'and' at position 9, found a string"
        );
        assert_eq!(
            message("true or length(userId)"),
            "expected a boolean operand for 'or' at position 8, found an integer"
        );
        assert_eq!(
            message("not userId"),
            "expected a boolean operand for 'not' at position 4, found a string"
        );
        assert_eq!(
            message("true or null"),
            "expected a boolean operand for 'or' at position 8, found null"
        );
    }

    #[test]
    fn a_filter_must_be_boolean() {
        assert_eq!(
            message("userId"),
            "expected a boolean expression at position 0, found a string"
        );
        assert_eq!(
            message("(42)"),
            "expected a boolean expression at position 0, found an integer"
        );
        assert_eq!(
            message("null"),
            "expected a boolean expression at position 0, found null"
        );
        assert_eq!(
            message("groups"),
            "expected a boolean expression at position 0, found the collection 'groups'"
        );
    }

    #[test]
    fn comparisons_need_matching_types() {
        assert_eq!(
            message("userId eq 3"),
            "cannot compare a string with an integer using 'eq' at position 7"
        );
        assert_eq!(
            message("length(userId) gt 'a'"),
            "cannot compare an integer with a string using 'gt' at position 15"
        );
        assert_eq!(
            message("true gt false"),
            "'gt' at position 5 cannot order booleans; expected eq or ne"
        );
        assert_eq!(
            message("groups eq 'a'"),
            "expected a single value to compare at position 0, found the collection 'groups'"
        );
        assert_eq!(
            error("'ü' eq 3"),
            FilterError::IncomparableTypes {
                left: "a string",
                right: "an integer",
                operator: "eq",
                at: 4
            }
        );
    }

    #[test]
    fn comparisons_do_not_chain() {
        assert_eq!(
            message("userId eq 'a' eq true"),
            "'eq' at position 14 cannot follow another comparison; expected 'and', 'or' or parentheses"
        );
        assert!(check("(userId eq 'a') eq true", &user("a")));
    }

    #[test]
    fn in_needs_groups_or_a_list_of_one_type() {
        assert_eq!(
            message("'a' in userId"),
            "expected groups or a parenthesized list after 'in' at position 7, found a string"
        );
        assert_eq!(
            message("userId in ('a', 3)"),
            "expected a string in the list after 'in' at position 16, found an integer"
        );
        assert_eq!(
            message("3 in groups"),
            "expected a string before 'in groups' at position 0, found an integer"
        );
        assert_eq!(
            message("userId in ('a', groups)"),
            "expected a single value in the list after 'in' at position 16, found the collection 'groups'"
        );
        assert_eq!(
            message("groups in ('a')"),
            "expected a single value before 'in' at position 0, found the collection 'groups'"
        );
        assert_eq!(
            message("userId in ()"),
            "expected an operand at position 11, found ')'"
        );
        assert_eq!(
            message("userId in ('a' 'b')"),
            "expected ')' or ',' at position 15, found a string literal"
        );
    }

    #[test]
    fn keywords_must_be_lowercase() {
        assert_eq!(
            message("userId EQ 'a'"),
            "'EQ' at position 7 must be written in lowercase as 'eq'"
        );
        assert_eq!(
            error("true AND false"),
            FilterError::KeywordCase {
                found: "AND".to_owned(),
                keyword: "and",
                at: 5
            }
        );
        assert_eq!(
            error("userId eq NULL"),
            FilterError::KeywordCase {
                found: "NULL".to_owned(),
                keyword: "null",
                at: 10
            }
        );
        assert_eq!(
            error("Not(true)"),
            FilterError::KeywordCase {
                found: "Not".to_owned(),
                keyword: "not",
                at: 0
            }
        );
        assert_eq!(
            error("(true Or false)"),
            FilterError::KeywordCase {
                found: "Or".to_owned(),
                keyword: "or",
                at: 6
            }
        );
    }

    #[test]
    fn misplaced_tokens_are_named() {
        assert_eq!(
            message("(userId eq 'abcd'"),
            "expected ')' at position 17, found end of filter"
        );
        assert_eq!(
            message("userId eq"),
            "expected an operand at position 9, found end of filter"
        );
        assert_eq!(
            message("userId eq 'a' 'b'"),
            "expected an operator or end of filter at position 14, found a string literal"
        );
        assert_eq!(
            message("userId eq 'a')"),
            "expected an operator or end of filter at position 13, found ')'"
        );
        assert_eq!(
            message("true and and true"),
            "expected an operand at position 9, found 'and'"
        );
        assert_eq!(
            message("eq(1, 2)"),
            "expected an operand at position 0, found 'eq'"
        );
        assert_eq!(
            message("userId eq 'a' foo"),
            "expected an operator or end of filter at position 14, found 'foo'"
        );
        assert_eq!(
            message("'a' in groups in groups"),
            "expected an operator or end of filter at position 14, found 'in'"
        );
        assert_eq!(
            message("true,"),
            "expected an operator or end of filter at position 4, found ','"
        );
    }

    #[test]
    fn empty_filters_are_refused() {
        assert_eq!(
            message(""),
            "expected an operand at position 0, found end of filter"
        );
        assert_eq!(
            message("   "),
            "expected an operand at position 3, found end of filter"
        );
        assert_eq!(
            message("()"),
            "expected an operand at position 1, found ')'"
        );
    }

    #[test]
    fn lexical_errors_are_named() {
        assert_eq!(
            message("userId eq 'abc"),
            "unterminated string literal starting at position 10; expected a closing quote"
        );
        assert_eq!(
            message("userId eq 'it''"),
            "unterminated string literal starting at position 10; expected a closing quote"
        );
        assert_eq!(
            message("userId eq \"a\""),
            "unexpected character '\"' at position 10"
        );
        assert_eq!(
            message("userId == 'a'"),
            "unexpected character '=' at position 7"
        );
        assert_eq!(
            error("userId eq 'ü' and ü"),
            FilterError::UnexpectedCharacter {
                found: 'ü', at: 18
            }
        );
        assert_eq!(
            message("length(userId) gt 99999999999999999999"),
            "integer literal '99999999999999999999' at position 18 is out of range"
        );
        assert_eq!(
            message("length(userId) gt -"),
            "expected a digit after the sign at position 19, found end of filter"
        );
        assert_eq!(
            message("length(userId) gt -x"),
            "expected a digit after the sign at position 19, found 'x'"
        );
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        let deep = format!("{}true{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(check(&deep, &anonymous()));

        let negations = format!("{}true", "not ".repeat(MAX_NESTING));
        assert!(check(&negations, &anonymous()));

        // Mixed nesting of calls, `not`, `in` and parentheses.
        let mut mixed = String::from("startswith(userId, 'a')");
        for _ in 0..(MAX_NESTING / 2 - 1) {
            mixed = format!("not ({mixed})");
        }
        assert!(check(&mixed, &user("b")));
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let deep = format!(
            "{}true{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        assert_eq!(
            message(&deep),
            "filter nests deeper than 64 levels at position 64"
        );

        let negations = format!("{}true", "not ".repeat(MAX_NESTING + 1));
        assert_eq!(
            error(&negations),
            FilterError::TooDeep {
                max: MAX_NESTING,
                at: 4 * MAX_NESTING
            }
        );

        // Far deeper than the limit, yet inside the length limit: no stack overflow.
        let unbalanced = "(".repeat(MAX_FILTER_CHARS);
        assert!(matches!(error(&unbalanced), FilterError::TooDeep { .. }));
        let calls = "length(".repeat(MAX_FILTER_CHARS / 7);
        assert!(matches!(error(&calls), FilterError::TooDeep { .. }));
    }

    #[test]
    fn long_filters_up_to_the_limit_are_accepted() {
        // 4096 characters of `'gNNN' in groups or ...`, flat rather than deep.
        let mut clauses = Vec::new();
        let mut length = 0;
        for index in 0.. {
            let clause = format!("'g{index}' in groups");
            let added = clause.len() + if clauses.is_empty() { 0 } else { 4 };
            if length + added > MAX_FILTER_CHARS {
                break;
            }
            length += added;
            clauses.push(clause);
        }
        let mut filter = clauses.join(" or ");
        filter.push_str(&" ".repeat(MAX_FILTER_CHARS - filter.len()));
        assert_eq!(filter.chars().count(), MAX_FILTER_CHARS);

        let parsed = Filter::parse(&filter).expect("long filter parses");
        assert!(parsed.matches(&member("u", &["g150"])));
        assert!(!parsed.matches(&member("u", &["g100000"])));
    }

    #[test]
    fn filters_past_the_length_limit_are_refused() {
        let too_long = format!("{}true", " ".repeat(MAX_FILTER_CHARS - 3));
        assert_eq!(message(&too_long), "filter is longer than 4096 characters");

        let huge = "'x' in groups or ".repeat(100_000);
        assert_eq!(
            error(&huge),
            FilterError::TooLong {
                max: MAX_FILTER_CHARS
            }
        );

        // The limit counts characters, so multi-byte text within it is fine.
        let wide = format!("userId eq '{}'", "ü".repeat(MAX_FILTER_CHARS - 12));
        assert!(wide.len() > MAX_FILTER_CHARS);
        assert!(Filter::parse(&wide).is_ok());
    }

    #[test]
    fn from_str_and_clone_agree_with_parse() {
        let parsed: Filter = "startswith(userId, 'listener-')".parse().expect("parses");
        let copy = parsed.clone();
        assert!(copy.matches(&user("listener-7")));
        assert!(!copy.matches(&user("speaker-7")));
        assert_eq!(
            "nope".parse::<Filter>().unwrap_err(),
            FilterError::UnknownIdentifier {
                name: "nope".to_owned(),
                at: 0
            }
        );
    }

    #[test]
    fn brief_examples_behave() {
        let filter = "userId eq 'x' or length(userId) > 3";
        assert_eq!(message(filter), "unexpected character '>' at position 32");
        assert!(check("userId eq 'x' or length(userId) gt 3", &user("long")));
        assert!(check("userId eq 'x' or length(userId) gt 3", &user("x")));
        assert!(!check("userId eq 'x' or length(userId) gt 3", &user("ab")));
        assert!(check("not('g' in groups)", &user("a")));
    }

    #[test]
    fn one_filter_serves_many_connections() {
        let filter =
            Filter::parse("'room' in groups and not startswith(userId, 'bot-')").expect("parses");
        let people = [
            (member("alice", &["room"]), true),
            (member("bot-1", &["room"]), false),
            (member("bob", &["hall"]), false),
            (
                TestConnection {
                    user: None,
                    connection: "c",
                    groups: &["room"],
                },
                false,
            ),
        ];
        for (connection, expected) in &people {
            assert_eq!(
                filter.matches(connection),
                *expected,
                "{:?}",
                connection.user
            );
        }
    }
}
