//! Subscription filters: the small expression language Google Pub/Sub accepts in
//! `Subscription.filter`, evaluated here against a message's attributes.
//!
//! A subscription with a filter only receives the messages whose attributes satisfy
//! it; everything else is acknowledged on the subscriber's behalf. For an IoT Core
//! back end this is how one consumer takes a single registry or a single device off a
//! shared telemetry topic, e.g.
//!
//! ```text
//! attributes.deviceRegistryId = "reg-1" AND NOT attributes:subFolder
//! ```
//!
//! Parse once per subscription with [`Filter::parse`], then call [`Filter::matches`]
//! (or [`Filter::matches_pairs`]) per message. Evaluation never allocates.
//!
//! # Grammar
//!
//! ```text
//! filter     = expression ;                       (* at most 256 bytes of UTF-8 *)
//! expression = unary { "AND" unary }              (* one kind of join per level, *)
//!            | unary { "OR" unary } ;             (* never both                 *)
//! unary      = ( "NOT" | "-" ) unary | primary ;
//! primary    = "(" expression ")"
//!            | "attributes" ":" key                          (* key is present  *)
//!            | "attributes" "." key ( "=" | "!=" ) string     (* value compare   *)
//!            | "hasPrefix" "(" "attributes" "." key "," string ")" ;
//! key        = bare-key | string ;
//! bare-key   = 1*( ASCII letter | digit | "_" | "-" ) ;
//! string     = '"' { char | escape } '"' | "'" { char | escape } "'" ;
//! escape     = "\" ( "\" | '"' | "'" | "?" | "`" | "a" | "b" | "f" | "n" | "r" | "t" | "v" )
//!            | "\x" 2*hex | "\u" 4*hex | "\U" 8*hex | "\" 3*octal ;
//! ```
//!
//! Whitespace (space, tab, CR, LF, form feed) may appear between any two tokens.
//!
//! # Semantics
//!
//! * `attributes:K` is true when the message has an attribute with key `K`.
//! * `attributes.K = "v"` is true when `K` is present with exactly the value `v`.
//! * `attributes.K != "v"` is the negation of the former, so it is also true when `K`
//!   is absent.
//! * `hasPrefix(attributes.K, "p")` is true when `K` is present and its value starts
//!   with `p` (an empty prefix therefore just tests presence).
//! * Keys and values compare byte for byte: case-sensitive, no normalisation.
//! * `NOT` (and its short form `-`) binds tighter than `AND`/`OR`:
//!   `NOT attributes:a AND attributes:b` means `(NOT attributes:a) AND attributes:b`.
//!
//! # Rules taken from Google's documentation
//!
//! From the Pub/Sub "Filter messages from a subscription" page
//! (cloud.google.com/pubsub/docs/subscription-message-filter, formerly `/filtering`):
//! the filter is at most 256 bytes; it works on attributes only; `:` tests a key, `=`
//! and `!=` compare a key's value with a string literal; `hasPrefix` is the only
//! function; `AND`, `OR` and `NOT` must be written in upper case and `-` is accepted
//! as `NOT`; a filter that uses both `AND` and `OR` must group them with parentheses;
//! keys holding anything other than letters, digits, `_` or `-` must be written as a
//! string literal (`attributes:"iana.org/language_tag"`); backslashes, quotes and
//! non-printing characters are written with escapes inside string literals, which
//! also accept Unicode, hexadecimal and octal escapes.
//!
//! # Choices where the documentation is silent
//!
//! * Mixing `AND` and `OR` is refused per nesting level: `a AND b OR c` is an error,
//!   `a AND (b OR c)` and `(a AND b) OR c` are fine, and so is a long chain of one
//!   operator (`a OR b OR c`).
//! * There is no implicit `AND` between adjacent conditions (`a b` is an error).
//! * String literals may use double or single quotes; escapes follow the usual
//!   C-like set. `\xHH`, `\ooo` (at most `\377`), `\uHHHH` and `\UHHHHHHHH` denote
//!   Unicode code points; surrogates and values past U+10FFFF are refused. Raw
//!   control characters (newline, tab, ...) inside a literal are refused: write them
//!   as escapes.
//! * Bare keys are ASCII only; other letters need a quoted key. A key may not be
//!   empty.
//! * Whitespace is allowed around `.`, `:`, `(`, `)` and `,` as well.
//! * `NOT`/`-` and parentheses together may nest at most [`MAX_NESTING`] levels
//!   deep; deeper filters are refused so parsing and evaluation stay bounded.
//! * Error messages give 0-based byte offsets into the filter text and quote at most
//!   a short excerpt of it.
//! * If an attribute list holds the same key twice (Pub/Sub maps cannot), the first
//!   occurrence is the one tested.
//! * An empty or all-whitespace text is an error here; callers treat an empty
//!   `filter` field as "no filter" before they get this far.

use std::fmt;
use std::str::FromStr;

/// Longest filter text accepted, in bytes of UTF-8 (Google's documented limit).
pub const MAX_FILTER_BYTES: usize = 256;

/// Deepest nesting of parentheses and `NOT`/`-` accepted.
pub const MAX_NESTING: usize = 64;

/// Longest excerpt of the input quoted in an error message, in characters.
const EXCERPT_CHARS: usize = 24;

/// A parsed filter. Cheap to evaluate; parse once per subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

/// Why a filter text was refused: what is wrong and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Has(String),
    Equals(String, String),
    NotEquals(String, String),
    HasPrefix(String, String),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

impl Filter {
    /// Parses `text`; an empty or all-whitespace text is an error here (callers treat
    /// "" as "no filter" before calling).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError {
                message: format!(
                    "the filter is {} bytes long; Pub/Sub filters are limited to {MAX_FILTER_BYTES} bytes",
                    text.len()
                ),
            });
        }
        parse_any_length(text)
    }

    /// Whether a message with these attributes passes.
    pub fn matches<'a>(&self, attributes: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> bool {
        self.root.eval(&attributes)
    }

    /// [`Filter::matches`] for attributes held as owned pairs.
    pub fn matches_pairs(&self, attrs: &[(String, String)]) -> bool {
        self.matches(attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Filter, FilterError> {
        Filter::parse(text)
    }
}

/// Everything [`Filter::parse`] does except the length limit; the nesting limit
/// still applies, so this is safe on any input.
fn parse_any_length(text: &str) -> Result<Filter, FilterError> {
    if text.bytes().all(|b| b.is_ascii_whitespace()) {
        return Err(FilterError {
            message: "the filter is empty; write a condition such as attributes.KEY = \"value\"".to_owned(),
        });
    }
    let mut parser = Parser { src: text, pos: 0, depth: 0 };
    let root = parser.expression()?;
    parser.skip_ws();
    if parser.pos < text.len() {
        let at = parser.pos;
        return Err(if parser.peek() == Some(')') {
            parser.error(at, "this `)` has no matching `(`")
        } else {
            parser.error(at, format!("expected AND, OR or the end of the filter, found {}", parser.shown(at)))
        });
    }
    Ok(Filter { root })
}

impl Node {
    fn eval<'a, I>(&self, attrs: &I) -> bool
    where
        I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
    {
        match self {
            Node::Has(key) => lookup(attrs, key).is_some(),
            Node::Equals(key, value) => lookup(attrs, key) == Some(value.as_str()),
            Node::NotEquals(key, value) => lookup(attrs, key) != Some(value.as_str()),
            Node::HasPrefix(key, prefix) => lookup(attrs, key).is_some_and(|v| v.starts_with(prefix.as_str())),
            Node::Not(inner) => !inner.eval(attrs),
            Node::And(items) => items.iter().all(|n| n.eval(attrs)),
            Node::Or(items) => items.iter().any(|n| n.eval(attrs)),
        }
    }
}

fn lookup<'a, I>(attrs: &I, key: &str) -> Option<&'a str>
where
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    attrs.clone().into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    And,
    Or,
}

impl Join {
    fn word(self) -> &'static str {
        match self {
            Join::And => "AND",
            Join::Or => "OR",
        }
    }
}

/// A recursive-descent parser working directly on the text (keys need their own
/// lexical rules right after `attributes.`, so there is no separate token stream).
struct Parser<'s> {
    src: &'s str,
    pos: usize,
    depth: usize,
}

impl<'s> Parser<'s> {
    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let skipped = self.rest().bytes().take_while(u8::is_ascii_whitespace).count();
        self.pos += skipped;
    }

    /// Consumes `c` if it comes next (after whitespace).
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// The identifier (`[A-Za-z_][A-Za-z0-9_]*`) starting at the current position.
    fn word(&self) -> Option<&'s str> {
        word_at(self.rest())
    }

    fn error(&self, at: usize, what: impl fmt::Display) -> FilterError {
        FilterError { message: format!("invalid filter at byte offset {at}: {what}") }
    }

    /// A short, escaped description of what sits at byte `at`.
    fn shown(&self, at: usize) -> String {
        let rest = self.src.get(at..).unwrap_or("");
        if rest.is_empty() {
            return "the end of the filter".to_owned();
        }
        let token = match word_at(rest) {
            Some(w) => w,
            None => rest.chars().next().map_or("", |c| &rest[..c.len_utf8()]),
        };
        format!("`{}`", excerpt(token))
    }

    fn enter(&mut self, at: usize) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error(
                at,
                format!("parentheses and NOT are nested more than {MAX_NESTING} levels deep; simplify the filter"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expression(&mut self) -> Result<Node, FilterError> {
        let mut items = vec![self.unary()?];
        let mut join: Option<(Join, usize)> = None;
        loop {
            self.skip_ws();
            let at = self.pos;
            let Some(word) = self.word() else { break };
            let this = match word {
                "AND" => Join::And,
                "OR" => Join::Or,
                w if w.eq_ignore_ascii_case("and") || w.eq_ignore_ascii_case("or") => {
                    return Err(
                        self.error(at, format!("operators must be upper case: write `{}`", w.to_ascii_uppercase()))
                    );
                }
                _ => break,
            };
            match join {
                Some((first, first_at)) if first != this => {
                    return Err(self.error(
                        at,
                        format!(
                            "{} cannot follow {} (byte offset {first_at}) without parentheses; group the conditions, \
                             e.g. `a AND (b OR c)`",
                            this.word(),
                            first.word()
                        ),
                    ));
                }
                Some(_) => {}
                None => join = Some((this, at)),
            }
            self.pos += word.len();
            items.push(self.unary()?);
        }
        Ok(match join {
            None => items.pop().expect("one item was parsed"),
            Some((Join::And, _)) => Node::And(items),
            Some((Join::Or, _)) => Node::Or(items),
        })
    }

    fn unary(&mut self) -> Result<Node, FilterError> {
        self.skip_ws();
        let at = self.pos;
        let negated = if self.peek() == Some('-') {
            self.pos += 1;
            true
        } else if self.word() == Some("NOT") {
            self.pos += 3;
            true
        } else {
            false
        };
        if !negated {
            return self.primary();
        }
        self.enter(at)?;
        let inner = self.unary()?;
        self.leave();
        Ok(Node::Not(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Node, FilterError> {
        self.skip_ws();
        let at = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.error(at, "expected a condition, found the end of the filter"));
        };
        if c == '(' {
            self.enter(at)?;
            self.pos += 1;
            let inner = self.expression()?;
            if !self.eat(')') {
                let found = self.pos;
                return Err(self.error(
                    found,
                    format!("expected `)` to close the `(` at byte offset {at}, found {}", self.shown(found)),
                ));
            }
            self.leave();
            return Ok(inner);
        }
        if c == '"' || c == '\'' {
            return Err(self.error(
                at,
                "expected a condition, found a string; a string can only follow `attributes.KEY =`, \
                 `attributes.KEY !=` or be the second argument of hasPrefix",
            ));
        }
        let Some(word) = self.word() else {
            return Err(self.error(
                at,
                format!(
                    "expected a condition such as attributes.KEY = \"value\", attributes:KEY or \
                     hasPrefix(attributes.KEY, \"prefix\"), found {}",
                    self.shown(at)
                ),
            ));
        };
        match word {
            "attributes" => {
                self.pos += word.len();
                self.attribute_condition(at)
            }
            "hasPrefix" => {
                self.pos += word.len();
                self.has_prefix(at)
            }
            "AND" | "OR" => Err(self.error(at, format!("{word} needs a condition on each side"))),
            w if ["and", "or", "not"].iter().any(|op| w.eq_ignore_ascii_case(op)) => {
                Err(self.error(at, format!("operators must be upper case: write `{}`", w.to_ascii_uppercase())))
            }
            w if w.eq_ignore_ascii_case("attributes") => {
                Err(self.error(at, format!("names are case-sensitive: write `attributes`, not `{}`", excerpt(w))))
            }
            w if w.eq_ignore_ascii_case("hasPrefix") => {
                Err(self.error(at, format!("names are case-sensitive: write `hasPrefix`, not `{}`", excerpt(w))))
            }
            w => {
                self.pos += w.len();
                let called = self.eat('(');
                Err(self.error(
                    at,
                    if called {
                        format!("unknown function `{}`; hasPrefix is the only function", excerpt(w))
                    } else {
                        format!("unknown name `{}`; conditions start with `attributes` or `hasPrefix`", excerpt(w))
                    },
                ))
            }
        }
    }

    /// After `attributes`: `:KEY`, `.KEY = "v"` or `.KEY != "v"`.
    fn attribute_condition(&mut self, start: usize) -> Result<Node, FilterError> {
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            Some(':') => {
                self.pos += 1;
                let key = self.key()?;
                self.skip_ws();
                if self.rest().starts_with('=') || self.rest().starts_with("!=") {
                    return Err(self.error(
                        self.pos,
                        "`attributes:KEY` only tests that the key exists; to compare its value write \
                         attributes.KEY = \"value\"",
                    ));
                }
                Ok(Node::Has(key))
            }
            Some('.') => {
                self.pos += 1;
                let key = self.key()?;
                self.skip_ws();
                let op_at = self.pos;
                let rest = self.rest();
                let negated = if rest.starts_with("!=") {
                    self.pos += 2;
                    true
                } else if rest.starts_with("==") {
                    return Err(self.error(op_at, "use `=` to compare, not `==`"));
                } else if rest.starts_with('=') {
                    self.pos += 1;
                    false
                } else if rest.starts_with(['<', '>']) {
                    return Err(self.error(op_at, "values are strings and only `=` and `!=` compare them"));
                } else if rest.starts_with(':') {
                    return Err(self.error(
                        op_at,
                        "to test that a key exists write attributes:KEY, with `:` right after `attributes`",
                    ));
                } else {
                    return Err(self.error(
                        op_at,
                        format!("expected `=` or `!=` after attributes.KEY, found {}", self.shown(op_at)),
                    ));
                };
                let value = self.string_literal("value")?;
                Ok(if negated { Node::NotEquals(key, value) } else { Node::Equals(key, value) })
            }
            _ => Err(self.error(
                at,
                format!("expected `.` or `:` after `attributes` (byte offset {start}), found {}", self.shown(at)),
            )),
        }
    }

    /// After `hasPrefix`: `(attributes.KEY, "prefix")`.
    fn has_prefix(&mut self, start: usize) -> Result<Node, FilterError> {
        if !self.eat('(') {
            let at = self.pos;
            return Err(
                self.error(at, format!("expected `(` after hasPrefix (byte offset {start}), found {}", self.shown(at)))
            );
        }
        self.skip_ws();
        let at = self.pos;
        if self.word() != Some("attributes") {
            return Err(self.error(
                at,
                format!("the first argument of hasPrefix must be attributes.KEY, found {}", self.shown(at)),
            ));
        }
        self.pos += "attributes".len();
        if !self.eat('.') {
            let at = self.pos;
            return Err(self.error(
                at,
                format!(
                    "the first argument of hasPrefix must be attributes.KEY (with a `.`), found {}",
                    self.shown(at)
                ),
            ));
        }
        let key = self.key()?;
        if !self.eat(',') {
            let at = self.pos;
            return Err(self
                .error(at, format!("expected `,` between the two arguments of hasPrefix, found {}", self.shown(at))));
        }
        let prefix = self.string_literal("prefix")?;
        if !self.eat(')') {
            let at = self.pos;
            return Err(self
                .error(at, format!("hasPrefix takes exactly two arguments; expected `)`, found {}", self.shown(at))));
        }
        Ok(Node::HasPrefix(key, prefix))
    }

    /// An attribute key: bare (`[A-Za-z0-9_-]+`) or a string literal.
    fn key(&mut self) -> Result<String, FilterError> {
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            Some('"' | '\'') => {
                let key = self.string_literal("key")?;
                if key.is_empty() {
                    return Err(self.error(at, "an attribute key cannot be empty"));
                }
                Ok(key)
            }
            Some(c) if is_bare_key_char(c) => {
                let len = self.rest().bytes().take_while(|b| is_bare_key_char(char::from(*b))).count();
                self.pos += len;
                let key = self.src[at..self.pos].to_owned();
                if let Some(next) = self.peek()
                    && !(next.is_ascii_whitespace() || matches!(next, '=' | '!' | ':' | ')' | ','))
                {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "unexpected `{}` in the key that starts at byte offset {at}; keys with characters \
                             other than letters, digits, `_` and `-` must be quoted, e.g. attributes:\"a.b/c\"",
                            next.escape_debug()
                        ),
                    ));
                }
                Ok(key)
            }
            _ => Err(self.error(at, format!("expected an attribute key, found {}", self.shown(at)))),
        }
    }

    /// A quoted string literal, with escapes resolved. `what` names it in errors.
    fn string_literal(&mut self, what: &str) -> Result<String, FilterError> {
        self.skip_ws();
        let start = self.pos;
        let quote = match self.peek() {
            Some(q @ ('"' | '\'')) => q,
            _ => {
                return Err(self.error(
                    start,
                    format!("expected a quoted string {what}, e.g. \"abc\", found {}", self.shown(start)),
                ));
            }
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            let at = self.pos;
            let Some(c) = self.peek() else {
                return Err(self.error(start, format!("the string {what} starting here has no closing `{quote}`")));
            };
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(out);
            }
            if c == '\\' {
                out.push(self.escape(at, start, what)?);
            } else if c.is_control() {
                return Err(self.error(
                    at,
                    format!(
                        "raw control character U+{:04X} inside a string; write it as an escape such as \\n or \\u{:04x}",
                        u32::from(c),
                        u32::from(c)
                    ),
                ));
            } else {
                out.push(c);
            }
        }
    }

    /// The character an escape stands for; the backslash at `at` is already consumed.
    fn escape(&mut self, at: usize, start: usize, what: &str) -> Result<char, FilterError> {
        let Some(e) = self.peek() else {
            return Err(self.error(start, format!("the string {what} starting here has no closing quote")));
        };
        self.pos += e.len_utf8();
        let simple = match e {
            '\\' | '"' | '\'' | '?' | '`' => Some(e),
            'a' => Some('\u{07}'),
            'b' => Some('\u{08}'),
            'f' => Some('\u{0C}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{0B}'),
            _ => None,
        };
        if let Some(c) = simple {
            return Ok(c);
        }
        let code = match e {
            'x' | 'X' => self.digits(at, 2, 16)?,
            'u' => self.digits(at, 4, 16)?,
            'U' => self.digits(at, 8, 16)?,
            '0'..='7' => {
                self.pos -= 1;
                let code = self.digits(at, 3, 8)?;
                if code > 0xFF {
                    return Err(self.error(at, "an octal escape can be at most \\377"));
                }
                code
            }
            _ => {
                return Err(self.error(
                    at,
                    format!(
                        "unknown escape `\\{}`; use one of \\\\ \\\" \\' \\n \\r \\t \\xHH \\uHHHH \\UHHHHHHHH \\ooo",
                        e.escape_debug()
                    ),
                ));
            }
        };
        char::from_u32(code)
            .ok_or_else(|| self.error(at, format!("escape for U+{code:X} is not a valid Unicode character")))
    }

    /// Exactly `count` digits in `radix` for the escape starting at `at`.
    fn digits(&mut self, at: usize, count: usize, radix: u32) -> Result<u32, FilterError> {
        let mut code: u32 = 0;
        for _ in 0..count {
            match self.peek().and_then(|c| c.to_digit(radix)) {
                Some(d) => {
                    code = code * radix + d;
                    self.pos += 1;
                }
                None => {
                    let kind = if radix == 16 { "hexadecimal" } else { "octal" };
                    return Err(self.error(at, format!("this escape needs exactly {count} {kind} digits")));
                }
            }
        }
        Ok(code)
    }
}

fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn word_at(text: &str) -> Option<&str> {
    let first = text.bytes().next()?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let len = text.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    Some(&text[..len])
}

/// At most [`EXCERPT_CHARS`] characters of `text`, control characters escaped.
fn excerpt(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(EXCERPT_CHARS) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attributes as IoT Core attaches them to telemetry.
    const TELEMETRY: &[(&str, &str)] = &[
        ("deviceId", "dev-1"),
        ("deviceNumId", "2820213466398187"),
        ("deviceRegistryId", "reg-1"),
        ("deviceRegistryLocation", "europe-west1"),
        ("projectId", "acme-iot"),
        ("subFolder", "engine/temp"),
    ];

    /// The same message published without a subfolder, from another registry.
    const OTHER: &[(&str, &str)] = &[
        ("deviceId", "dev-2"),
        ("deviceNumId", "2820213466398188"),
        ("deviceRegistryId", "reg-2"),
        ("deviceRegistryLocation", "us-central1"),
        ("projectId", "acme-iot"),
    ];

    fn parse(text: &str) -> Filter {
        Filter::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn check(text: &str, attrs: &[(&str, &str)]) -> bool {
        parse(text).matches(attrs.iter().copied())
    }

    fn err(text: &str) -> String {
        match Filter::parse(text) {
            Ok(f) => panic!("{text:?} should be refused, parsed as {f:?}"),
            Err(e) => e.message,
        }
    }

    fn assert_err(text: &str, needles: &[&str]) {
        let message = err(text);
        for needle in needles {
            assert!(message.contains(needle), "error for {text:?} is {message:?}, missing {needle:?}");
        }
    }

    #[test]
    fn equals_compares_whole_value() {
        assert!(check(r#"attributes.deviceRegistryId = "reg-1""#, TELEMETRY));
        assert!(!check(r#"attributes.deviceRegistryId = "reg-1""#, OTHER));
        assert!(!check(r#"attributes.deviceRegistryId = "reg""#, TELEMETRY));
        assert!(!check(r#"attributes.deviceRegistryId = "reg-10""#, TELEMETRY));
        assert!(!check(r#"attributes.missing = "reg-1""#, TELEMETRY));
        assert!(check(r#"attributes.x = """#, &[("x", "")]));
        assert!(!check(r#"attributes.x = """#, &[]));
    }

    #[test]
    fn not_equals_is_true_when_absent_or_different() {
        let f = parse(r#"attributes.subFolder != "engine/temp""#);
        assert!(!f.matches(TELEMETRY.iter().copied()));
        assert!(f.matches(OTHER.iter().copied()));
        assert!(f.matches([("subFolder", "engine")]));
    }

    #[test]
    fn colon_tests_presence() {
        assert!(check("attributes:subFolder", TELEMETRY));
        assert!(!check("attributes:subFolder", OTHER));
        assert!(check("attributes:x", &[("x", "")]));
    }

    #[test]
    fn has_prefix() {
        assert!(check(r#"hasPrefix(attributes.deviceRegistryLocation, "europe-")"#, TELEMETRY));
        assert!(!check(r#"hasPrefix(attributes.deviceRegistryLocation, "europe-")"#, OTHER));
        assert!(check(r#"hasPrefix(attributes.subFolder, "")"#, TELEMETRY));
        assert!(!check(r#"hasPrefix(attributes.subFolder, "")"#, OTHER));
        assert!(check(r#"hasPrefix(attributes.subFolder, "engine/temp")"#, TELEMETRY));
        assert!(!check(r#"hasPrefix(attributes.subFolder, "engine/temp/x")"#, TELEMETRY));
        assert!(check(r#"hasPrefix ( attributes . subFolder , "eng" )"#, TELEMETRY));
    }

    #[test]
    fn keys_and_values_are_case_sensitive() {
        assert!(!check(r#"attributes.deviceid = "dev-1""#, TELEMETRY));
        assert!(!check(r#"attributes.deviceId = "DEV-1""#, TELEMETRY));
        assert!(!check("attributes:SUBFOLDER", TELEMETRY));
        assert!(!check(r#"hasPrefix(attributes.deviceId, "DEV")"#, TELEMETRY));
    }

    #[test]
    fn not_and_dash_negate_every_form() {
        let cases = [
            ("attributes:subFolder", true),
            (r#"attributes.deviceId = "dev-1""#, true),
            (r#"attributes.deviceId != "dev-1""#, false),
            (r#"hasPrefix(attributes.deviceId, "dev")"#, true),
            (r#"(attributes:subFolder AND attributes.deviceId = "dev-1")"#, true),
            ("(attributes:nope OR attributes:nada)", false),
        ];
        for (text, plain) in cases {
            assert_eq!(check(text, TELEMETRY), plain, "{text}");
            for negation in ["NOT ", "-", "- ", "NOT(", "NOT\t"] {
                let negated =
                    if negation.ends_with('(') { format!("{negation}{text})") } else { format!("{negation}{text}") };
                assert_eq!(check(&negated, TELEMETRY), !plain, "{negated}");
            }
            assert_eq!(check(&format!("NOT NOT {text}"), TELEMETRY), plain, "double NOT of {text}");
            assert_eq!(check(&format!("--{text}"), TELEMETRY), plain, "double - of {text}");
            assert_eq!(check(&format!("NOT -{text}"), TELEMETRY), plain, "NOT - of {text}");
        }
    }

    #[test]
    fn and_or_chains() {
        let all = r#"attributes.projectId = "acme-iot" AND attributes:deviceId AND attributes:subFolder"#;
        assert!(check(all, TELEMETRY));
        assert!(!check(all, OTHER));
        let any = r#"attributes.deviceId = "dev-9" OR attributes.deviceId = "dev-2" OR attributes:subFolder"#;
        assert!(check(any, TELEMETRY));
        assert!(check(any, OTHER));
        assert!(!check(any, &[("deviceId", "dev-3")]));
        assert!(!check(r#"attributes:a OR attributes:b"#, &[]));
    }

    #[test]
    fn not_binds_tighter_than_and_and_or() {
        // (NOT a) AND b, not NOT (a AND b).
        let f = parse("NOT attributes:a AND attributes:b");
        assert!(f.matches([("b", "1")]));
        assert!(!f.matches([("a", "1"), ("b", "1")]));
        assert!(!f.matches([]));
        assert_eq!(f, parse("(NOT attributes:a) AND attributes:b"));
        // (NOT a) OR b.
        let f = parse("-attributes:a OR attributes:b");
        assert!(f.matches([]));
        assert!(f.matches([("a", "1"), ("b", "1")]));
        assert!(!f.matches([("a", "1")]));
    }

    #[test]
    fn parentheses_group() {
        let f = parse("attributes:a AND (attributes:b OR attributes:c)");
        assert!(f.matches([("a", ""), ("c", "")]));
        assert!(!f.matches([("b", ""), ("c", "")]));
        let g = parse("(attributes:a AND attributes:b) OR attributes:c");
        assert!(g.matches([("c", "")]));
        assert!(!g.matches([("a", "")]));
        let h = parse("NOT (attributes:a OR attributes:b)");
        assert!(h.matches([("c", "")]));
        assert!(!h.matches([("b", "")]));
        assert_eq!(parse("((attributes:a))"), parse("attributes:a"));
        assert_eq!(parse("( attributes:a )AND(attributes:b)"), parse("attributes:a AND attributes:b"));
    }

    #[test]
    fn mixing_and_with_or_needs_parentheses() {
        assert_err(
            "attributes:a AND attributes:b OR attributes:c",
            &["byte offset 30", "OR cannot follow AND (byte offset 13)", "parentheses"],
        );
        assert_err("attributes:a OR attributes:b AND attributes:c", &["AND cannot follow OR", "parentheses"]);
        assert_err("(attributes:a OR attributes:b AND attributes:c)", &["AND cannot follow OR"]);
        // A parenthesised group resets the rule.
        parse("(attributes:a OR attributes:b) AND (attributes:c OR NOT attributes:d) AND attributes:e");
    }

    #[test]
    fn quoted_keys() {
        let attrs = [("iana.org/language_tag", "en-GB"), ("with space", "x"), ("quo\"te", "q"), ("みんな", "y")];
        assert!(check(r#"attributes:"iana.org/language_tag""#, &attrs));
        assert!(check(r#"attributes."iana.org/language_tag" = "en-GB""#, &attrs));
        assert!(check(r#"attributes.'iana.org/language_tag' != 'en-US'"#, &attrs));
        assert!(check(r#"hasPrefix(attributes."iana.org/language_tag", "en")"#, &attrs));
        assert!(check(r#"attributes."with space" = "x" AND attributes."quo\"te" = "q""#, &attrs));
        assert!(check(r#"attributes:"みんな" AND attributes."\u307f\u3093\u306a" = "y""#, &attrs));
        assert!(check(r#"attributes:"deviceId""#, TELEMETRY));
        assert!(!check(r#"attributes:"iana.org""#, &attrs));
    }

    #[test]
    fn bare_keys_allow_letters_digits_underscore_and_hyphen() {
        let attrs = [("ce-type", "dev.chainguard.bar"), ("1st", "a"), ("snake_case", "b"), ("_x", "c")];
        assert!(check(r#"attributes.ce-type = "dev.chainguard.bar""#, &attrs));
        assert!(check(r#"attributes.1st = "a" AND attributes:snake_case AND attributes:_x"#, &attrs));
        assert!(check(r#"hasPrefix(attributes.ce-type, "dev.")"#, &attrs));
    }

    #[test]
    fn bad_keys() {
        assert_err(r#"attributes.iana.org/language_tag = "en""#, &["byte offset 15", "`.`", "must be quoted"]);
        assert_err(r#"attributes:a/b"#, &["`/`", "must be quoted"]);
        assert_err(r#"attributes.café = "x""#, &["must be quoted"]);
        assert_err(r#"attributes. = "x""#, &["expected an attribute key", "`=`"]);
        assert_err("attributes:", &["expected an attribute key", "end of the filter"]);
        assert_err(r#"attributes."" = "x""#, &["cannot be empty"]);
        assert_err(r#"attributes:''"#, &["cannot be empty"]);
        assert_err(r#"attributes = "x""#, &["expected `.` or `:` after `attributes`"]);
        assert_err("attributes", &["expected `.` or `:`"]);
    }

    #[test]
    fn escapes_in_strings() {
        let cases: &[(&str, &str)] = &[
            (r#""a\"b""#, "a\"b"),
            (r#""a\\b""#, "a\\b"),
            (r#"'it\'s'"#, "it's"),
            (r#""it's""#, "it's"),
            (r#"'say "hi"'"#, "say \"hi\""),
            (r#""\n\r\t""#, "\n\r\t"),
            (r#""\a\b\f\v""#, "\u{7}\u{8}\u{c}\u{b}"),
            (r#""\?\`""#, "?`"),
            (r#""\x41\X42""#, "AB"),
            (r#""\101\0420\000""#, "A\"0\0"),
            (r#""\377""#, "\u{ff}"),
            (r#""\u00e9\u00C9""#, "éÉ"),
            (r#""\U0001F600""#, "😀"),
            (r#""plain ünïcödé""#, "plain ünïcödé"),
        ];
        for (literal, value) in cases {
            let text = format!("attributes.k = {literal}");
            assert!(check(&text, &[("k", value)]), "{text} should match {value:?}");
            assert!(!check(&text, &[("k", "other")]), "{text}");
            let prefix = format!("hasPrefix(attributes.k, {literal})");
            assert!(check(&prefix, &[("k", &format!("{value}tail"))]), "{prefix}");
        }
    }

    #[test]
    fn bad_escapes() {
        assert_err(r#"attributes.k = "\q""#, &["byte offset 16", "unknown escape `\\q`"]);
        assert_err(r#"attributes.k = "\x4""#, &["2 hexadecimal digits"]);
        assert_err(r#"attributes.k = "\xZZ""#, &["2 hexadecimal digits"]);
        assert_err(r#"attributes.k = "\u12""#, &["4 hexadecimal digits"]);
        assert_err(r#"attributes.k = "\uD800""#, &["not a valid Unicode character"]);
        assert_err(r#"attributes.k = "\U00110000""#, &["not a valid Unicode character"]);
        assert_err(r#"attributes.k = "\400""#, &["at most \\377"]);
        assert_err(r#"attributes.k = "\12""#, &["3 octal digits"]);
        assert_err(r#"attributes.k = "\"#, &["no closing quote"]);
        assert_err("attributes.k = \"\\é\"", &["unknown escape"]);
    }

    #[test]
    fn missing_closing_quote() {
        assert_err(r#"attributes.k = "abc"#, &["byte offset 15", "no closing `\"`"]);
        assert_err(r#"attributes.k = 'abc""#, &["no closing `'`"]);
        assert_err(r#"attributes:"abc AND attributes:b"#, &["byte offset 11", "no closing"]);
        assert_err(r#"hasPrefix(attributes.k, "abc)"#, &["no closing"]);
    }

    #[test]
    fn raw_control_characters_need_escapes() {
        assert_err("attributes.k = \"a\nb\"", &["byte offset 17", "U+000A", "escape"]);
        assert_err("attributes.k = \"a\tb\"", &["U+0009"]);
        assert_err("attributes.k = \"\u{7f}\"", &["U+007F"]);
        // Whitespace between tokens is fine.
        assert!(check("attributes.k\n=\t\"v\"\r\nAND\u{c}attributes:k", &[("k", "v")]));
    }

    #[test]
    fn values_must_be_quoted_strings() {
        assert_err("attributes.k = v", &["byte offset 15", "expected a quoted string value", "`v`"]);
        assert_err("attributes.k = 42", &["quoted string value", "`4`"]);
        assert_err("attributes.k =", &["quoted string value", "end of the filter"]);
        assert_err("hasPrefix(attributes.k, abc)", &["quoted string prefix"]);
        assert_err(r#"attributes.k == "v""#, &["not `==`"]);
        assert_err(r#"attributes.k > "v""#, &["only `=` and `!=`"]);
        assert_err(r#"attributes.k ~ "v""#, &["expected `=` or `!=`", "`~`"]);
        assert_err(r#"attributes.k:"v""#, &["`:` right after `attributes`"]);
        assert_err(r#"attributes:k = "v""#, &["only tests that the key exists"]);
        assert_err(r#"attributes:k != "v""#, &["only tests that the key exists"]);
        assert_err(r#""v" = attributes.k"#, &["byte offset 0", "found a string"]);
    }

    #[test]
    fn unknown_functions_and_names() {
        assert_err(r#"hasSuffix(attributes.k, "x")"#, &["byte offset 0", "unknown function `hasSuffix`", "hasPrefix"]);
        assert_err(r#"attributes:a AND matches(attributes.k, "x")"#, &["byte offset 17", "unknown function `matches`"]);
        assert_err(r#"hasprefix(attributes.k, "x")"#, &["case-sensitive", "`hasPrefix`"]);
        assert_err(r#"Attributes.k = "x""#, &["case-sensitive", "`attributes`"]);
        assert_err(r#"attrs.k = "x""#, &["unknown name `attrs`"]);
        assert_err(r#"true"#, &["unknown name `true`"]);
    }

    #[test]
    fn has_prefix_argument_errors() {
        assert_err(r#"hasPrefix"#, &["expected `(` after hasPrefix"]);
        assert_err(r#"hasPrefix attributes.k"#, &["expected `(` after hasPrefix"]);
        assert_err(r#"hasPrefix(attributes:k, "x")"#, &["with a `.`"]);
        assert_err(r#"hasPrefix("x", attributes.k)"#, &["first argument of hasPrefix must be attributes.KEY"]);
        assert_err(r#"hasPrefix(attributes.k)"#, &["expected `,`"]);
        assert_err(r#"hasPrefix(attributes.k, "x", "y")"#, &["exactly two arguments", "`,`"]);
        assert_err(r#"hasPrefix(attributes.k, "x""#, &["exactly two arguments", "end of the filter"]);
        assert_err(r#"hasPrefix()"#, &["first argument"]);
    }

    #[test]
    fn trailing_tokens_are_refused() {
        assert_err("attributes:a attributes:b", &["byte offset 13", "expected AND, OR or the end", "`attributes`"]);
        assert_err("attributes:a )", &["byte offset 13", "no matching `(`"]);
        assert_err("attributes:a NOT attributes:b", &["expected AND, OR", "`NOT`"]);
        assert_err(r#"attributes.a = "x" "y""#, &["expected AND, OR", "`\"`"]);
        assert_err("attributes:a AND", &["expected a condition", "end of the filter"]);
        assert_err("attributes:a OR OR attributes:b", &["OR needs a condition on each side"]);
        assert_err("AND attributes:a", &["byte offset 0", "AND needs a condition"]);
        assert_err("attributes:a ANDattributes:b", &["expected AND, OR", "`ANDattributes`"]);
    }

    #[test]
    fn operators_must_be_upper_case() {
        assert_err("attributes:a and attributes:b", &["byte offset 13", "upper case", "`AND`"]);
        assert_err("attributes:a Or attributes:b", &["upper case", "`OR`"]);
        assert_err("not attributes:a", &["byte offset 0", "upper case", "`NOT`"]);
        assert_err("Not attributes:a", &["`NOT`"]);
    }

    #[test]
    fn parentheses_errors() {
        assert_err("(attributes:a", &["expected `)` to close the `(` at byte offset 0", "end of the filter"]);
        assert_err("(attributes:a AND (attributes:b)", &["close the `(` at byte offset 0"]);
        assert_err("()", &["byte offset 1", "expected a condition", "`)`"]);
        assert_err(")", &["byte offset 0", "`)`"]);
        assert_err("NOT", &["expected a condition", "end of the filter"]);
        assert_err("-", &["expected a condition"]);
    }

    #[test]
    fn empty_filters_are_refused() {
        for text in ["", " ", "\t\n\r "] {
            assert_err(text, &["empty"]);
        }
    }

    #[test]
    fn length_limit_is_256_bytes() {
        assert_eq!(MAX_FILTER_BYTES, 256);
        let head = "attributes.k = \"";
        let fill = 256 - head.len() - 1;
        let at_limit = format!("{head}{}\"", "v".repeat(fill));
        assert_eq!(at_limit.len(), 256);
        assert!(parse(&at_limit).matches([("k", "v".repeat(fill).as_str())]));
        let over = format!("{head}{}\"", "v".repeat(fill + 1));
        assert_err(&over, &["257 bytes", "limited to 256 bytes"]);
        // Bytes, not characters: 97 characters, but 80 of them take three bytes each.
        let wide = format!("{head}{}\"", "€".repeat(80));
        assert!(wide.chars().count() < 256 && wide.len() > 256);
        assert_err(&wide, &["limited to 256 bytes"]);
    }

    #[test]
    fn whitespace_is_free_between_tokens() {
        let attrs = [("a", "x"), ("b", "y")];
        assert!(check(r#"attributes.a="x"AND(attributes:b)"#, &attrs));
        assert!(check(r#"  attributes . a  !=  "z"   AND   attributes : b  "#, &attrs));
        assert!(check("\tNOT\n( attributes:c )", &attrs));
    }

    #[test]
    fn nesting_depth_is_bounded() {
        // Refused by the length limit first...
        let deep = "(".repeat(10_000);
        assert_err(&deep, &["limited to 256 bytes"]);
        // ...and by the nesting limit even without it, without touching the stack much.
        let deep_parens = format!("{}attributes:a{}", "(".repeat(10_000), ")".repeat(10_000));
        let e = parse_any_length(&deep_parens).unwrap_err();
        assert!(e.message.contains("nested more than 64 levels"), "{}", e.message);
        assert!(e.message.contains("byte offset 64"), "{}", e.message);
        let deep_not = format!("{}attributes:a", "NOT ".repeat(10_000));
        assert!(parse_any_length(&deep_not).is_err());
        let deep_dash = format!("{}attributes:a", "-".repeat(10_000));
        assert!(parse_any_length(&deep_dash).is_err());
        // Within the length limit: 64 levels are fine, 65 are not.
        let ok = format!("{}attributes:a{}", "(".repeat(64), ")".repeat(64));
        assert!(check(&ok, &[("a", "")]));
        assert_err(&format!("{}attributes:a{}", "(".repeat(65), ")".repeat(65)), &["nested more than 64"]);
        assert_err(&format!("{}attributes:a", "-".repeat(65)), &["nested more than 64"]);
        assert!(check(&format!("{}attributes:a", "-".repeat(64)), &[("a", "")]));
        // Parentheses and NOT count together.
        assert_err(&format!("{}attributes:a{}", "-(".repeat(33), ")".repeat(33)), &["nested more than 64"]);
    }

    #[test]
    fn errors_quote_little_of_the_input() {
        let long_word = "x".repeat(200);
        let message = parse_any_length(&format!("attributes:a {long_word}")).unwrap_err().message;
        assert!(message.len() < 200, "{message}");
        assert!(!message.contains(&"x".repeat(EXCERPT_CHARS + 1)), "{message}");
        let message = parse_any_length(&format!("{long_word}(")).unwrap_err().message;
        assert!(!message.contains(&"x".repeat(EXCERPT_CHARS + 1)), "{message}");
    }

    #[test]
    fn iot_core_filters() {
        let registry = r#"attributes.deviceRegistryId = "reg-1" AND NOT attributes:subFolder"#;
        assert!(!check(registry, TELEMETRY));
        let state_only = [("deviceId", "dev-1"), ("deviceRegistryId", "reg-1"), ("projectId", "acme-iot")];
        assert!(check(registry, &state_only));
        assert!(!check(registry, OTHER));

        let device = r#"attributes.projectId = "acme-iot" AND attributes.deviceRegistryId = "reg-1" AND
                        attributes.deviceId = "dev-1""#;
        assert!(check(device, TELEMETRY));
        assert!(!check(device, OTHER));

        let by_num = r#"attributes.deviceNumId = "2820213466398188""#;
        assert!(check(by_num, OTHER));
        assert!(!check(by_num, TELEMETRY));

        let folders = r#"hasPrefix(attributes.subFolder, "engine/") AND (attributes.deviceRegistryLocation =
                         "europe-west1" OR attributes.deviceRegistryLocation = "europe-west4")"#;
        assert!(check(folders, TELEMETRY));
        assert!(!check(folders, OTHER));

        let either = r#"attributes.deviceRegistryId = "reg-1" OR attributes.deviceRegistryId = "reg-2""#;
        assert!(check(either, TELEMETRY) && check(either, OTHER));
        assert!(!check(either, &[]));

        let no_folder = r#"-attributes:subFolder AND attributes.deviceRegistryLocation != "europe-west1""#;
        assert!(check(no_folder, OTHER));
        assert!(!check(no_folder, TELEMETRY));
    }

    #[test]
    fn matches_pairs_agrees_with_matches() {
        let owned: Vec<(String, String)> = TELEMETRY.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        for text in [
            "attributes:subFolder",
            r#"attributes.deviceId = "dev-2""#,
            r#"NOT hasPrefix(attributes.projectId, "acme")"#,
            r#"attributes.deviceId = "dev-1" AND attributes:projectId"#,
        ] {
            let f = parse(text);
            assert_eq!(f.matches_pairs(&owned), f.matches(TELEMETRY.iter().copied()), "{text}");
        }
        let map: std::collections::HashMap<&str, &str> = TELEMETRY.iter().copied().collect();
        assert!(parse(r#"attributes.deviceId = "dev-1""#).matches(map.iter().map(|(k, v)| (*k, *v))));
    }

    #[test]
    fn first_duplicate_key_wins() {
        let f = parse(r#"attributes.k = "first""#);
        assert!(f.matches([("k", "first"), ("k", "second")]));
        assert!(!f.matches([("k", "second"), ("k", "first")]));
    }

    #[test]
    fn from_str_and_error_display() {
        let f: Filter = "attributes:a".parse().unwrap();
        assert_eq!(f, parse("attributes:a"));
        let e = "attributes:a and attributes:b".parse::<Filter>().unwrap_err();
        assert_eq!(e.to_string(), e.message);
        assert!(e.message.starts_with("invalid filter at byte offset 13: "));
    }

    /// Tiny deterministic generator (xorshift64*), so the fuzz tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const TOKENS: &[&str] = &[
        "attributes",
        "attributes.",
        "attributes:",
        "hasPrefix(",
        "hasPrefix",
        "hasprefix",
        ".",
        ":",
        ",",
        "(",
        ")",
        "((((",
        "))))",
        "=",
        "!=",
        "==",
        "!",
        "<",
        "AND",
        "OR",
        "NOT",
        "and",
        "-",
        "--",
        " ",
        "  ",
        "\t",
        "\n",
        "\"",
        "'",
        "\\",
        "\"reg-1\"",
        "\"\"",
        "'x'",
        "\"a\\\"b\"",
        "\\x",
        "\\x4",
        "\\u12",
        "\\uD800",
        "\\U0010FFFF",
        "\\U00110000",
        "\\377",
        "\\400",
        "\\q",
        "deviceId",
        "subFolder",
        "ce-type",
        "\"iana.org/language_tag\"",
        "é",
        "😀",
        "\u{0}",
        "\u{7f}",
        "\u{a0}",
        "x",
        "1",
        "_",
    ];

    fn garbage_from_tokens(rng: &mut Rng) -> String {
        let len = rng.below(40);
        (0..len).map(|_| TOKENS[rng.below(TOKENS.len())]).collect()
    }

    fn garbage_from_bytes(rng: &mut Rng) -> String {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // Mostly printable ASCII and the filter's punctuation, some anything.
                match rng.below(4) {
                    0 => b"()\"'\\:.,=!- \t"[rng.below(13)],
                    1 | 2 => 0x20 + rng.below(0x5f) as u8,
                    _ => rng.next() as u8,
                }
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn exercise(text: &str) {
        match parse_any_length(text) {
            Ok(f) => {
                f.matches(TELEMETRY.iter().copied());
                f.matches(OTHER.iter().copied());
                f.matches(std::iter::empty());
                if text.len() <= MAX_FILTER_BYTES {
                    assert_eq!(Filter::parse(text).as_ref(), Ok(&f));
                }
            }
            Err(e) => {
                assert!(!e.message.is_empty());
                assert!(e.message.len() < 400, "overlong message {:?} for {text:?}", e.message);
                assert!(Filter::parse(text).is_err(), "{text:?}");
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let text = garbage_from_tokens(&mut rng);
            exercise(&text);
            accepted += usize::from(Filter::parse(&text).is_ok());
            exercise(&garbage_from_bytes(&mut rng));
        }
        // Every prefix of a valid filter, cut at any char boundary, too.
        let valid = r#"NOT (attributes."iana.org/x" = "\u00e9\"" OR hasPrefix(attributes.ce-type, 'dev\x2e')) AND -attributes:k"#;
        parse(valid);
        for (i, _) in valid.char_indices() {
            exercise(&valid[..i]);
            exercise(&valid[i..]);
        }
        assert!(accepted > 0, "the token generator should produce some valid filters");
    }

    /// Random well-formed trees for the round-trip test.
    fn random_node(rng: &mut Rng, depth: usize) -> Node {
        const KEYS: &[&str] = &["a", "deviceId", "ce-type", "iana.org/tag", "with \"quote\"", "é"];
        const VALUES: &[&str] = &["", "x", "reg-1", "a\\b", "tab\there", "\"q\"", "ünï"];
        let pick = |rng: &mut Rng, set: &[&str]| set[rng.below(set.len())].to_owned();
        let choice = if depth == 0 { rng.below(4) } else { rng.below(7) };
        match choice {
            0 => Node::Has(pick(rng, KEYS)),
            1 => Node::Equals(pick(rng, KEYS), pick(rng, VALUES)),
            2 => Node::NotEquals(pick(rng, KEYS), pick(rng, VALUES)),
            3 => Node::HasPrefix(pick(rng, KEYS), pick(rng, VALUES)),
            4 => Node::Not(Box::new(random_node(rng, depth - 1))),
            5 => Node::And((0..2 + rng.below(3)).map(|_| random_node(rng, depth - 1)).collect()),
            _ => Node::Or((0..2 + rng.below(3)).map(|_| random_node(rng, depth - 1)).collect()),
        }
    }

    fn quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn render_key(k: &str) -> String {
        if k.chars().all(is_bare_key_char) { k.to_owned() } else { quote(k) }
    }

    fn render(node: &Node) -> String {
        let grouped = |n: &Node| match n {
            Node::And(_) | Node::Or(_) => format!("({})", render(n)),
            _ => render(n),
        };
        match node {
            Node::Has(k) => format!("attributes:{}", render_key(k)),
            Node::Equals(k, v) => format!("attributes.{} = {}", render_key(k), quote(v)),
            Node::NotEquals(k, v) => format!("attributes.{} != {}", render_key(k), quote(v)),
            Node::HasPrefix(k, p) => format!("hasPrefix(attributes.{}, {})", render_key(k), quote(p)),
            Node::Not(n) => format!("NOT {}", grouped(n)),
            Node::And(items) => items.iter().map(grouped).collect::<Vec<_>>().join(" AND "),
            Node::Or(items) => items.iter().map(grouped).collect::<Vec<_>>().join(" OR "),
        }
    }

    #[test]
    fn random_trees_round_trip() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let attrs = [("a", "x"), ("deviceId", "reg-1"), ("iana.org/tag", ""), ("é", "ünï"), ("ce-type", "a\\b")];
        for _ in 0..2_000 {
            let tree = random_node(&mut rng, 4);
            let text = render(&tree);
            let parsed = parse_any_length(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(parsed.root, tree, "{text}");
            assert_eq!(parsed.matches(attrs), tree.eval(&attrs), "{text}");
        }
    }
}
