//! The `KEY = VALUE` syntax of xl.cfg(5), without meaning: settings with their positions.
//!
//! A file is a series of settings, one per line (or separated by `;`). A value is a string
//! in single or double quotes (backslash escapes `\\ \' \" \n \t \r \xHH`), a number
//! (decimal or `0x` hexadecimal), or a list `[ v, v, ... ]` of strings and numbers that may
//! span lines and end with a trailing comma. `#` starts a comment to the end of the line.

use std::fmt;

use thiserror::Error;

/// A position in a source: 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A string or a number, where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scalar {
    Str(String),
    Int(u64),
}

impl Scalar {
    /// How an error message names the kind of value found.
    pub fn kind(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Int(_) => "a number",
        }
    }
}

/// A list element with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub pos: Pos,
    pub value: Scalar,
}

/// A setting's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Scalar(Scalar),
    List(Vec<Item>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Scalar(s) => s.kind(),
            Value::List(_) => "a list",
        }
    }
}

/// One `KEY = VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    /// Where the key starts, and where the value starts.
    pub key_pos: Pos,
    pub value_pos: Pos,
    pub value: Value,
}

/// What was wrong at a position (the caller adds the file name).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SyntaxError {
    /// A line starts with something that cannot begin a setting name.
    #[error("expected a setting name (letters, digits and '_'), found {found}")]
    ExpectedKey { found: String },
    /// The name is not followed by `=`.
    #[error("expected '=' after '{key}', found {found}")]
    ExpectedEquals { key: String, found: String },
    /// Nothing usable after `=`.
    #[error("expected a string, a number or a list after '=', found {found}")]
    ExpectedValue { found: String },
    /// Nothing usable inside a list.
    #[error("expected a string or a number in the list, found {found}")]
    ExpectedItem { found: String },
    /// A list element is followed by something other than `,` or `]`.
    #[error("expected ',' or ']' in the list opened at line {line}, found {found}")]
    ExpectedCommaOrClose { line: u32, found: String },
    #[error("the list opened at line {line} is never closed: add ']'")]
    UnclosedList { line: u32 },
    #[error("unterminated string: add the closing {quote}")]
    UnterminatedString { quote: char },
    #[error("unknown escape '\\{escape}' in a string (use \\\\ for a backslash)")]
    BadEscape { escape: char },
    #[error("'\\x' must be followed by two hexadecimal digits")]
    BadHexEscape,
    #[error("the number {text} is too large")]
    NumberTooLarge { text: String },
    #[error("malformed number '{text}'")]
    BadNumber { text: String },
    /// More on the line after a complete setting.
    #[error("expected the end of the line after the value of '{key}', found {found}")]
    TrailingGarbage { key: String, found: String },
}

/// A syntax error and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub pos: Pos,
    pub error: SyntaxError,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    pos: Pos,
}

fn describe(c: Option<char>) -> String {
    match c {
        None => "the end of the file".into(),
        Some('\n') => "the end of the line".into(),
        Some(c) if c.is_control() => format!("the character U+{:04X}", u32::from(c)),
        Some(c) => format!("'{c}'"),
    }
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            chars: text.chars().peekable(),
            pos: Pos { line: 1, col: 1 },
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn err<T>(&self, pos: Pos, error: SyntaxError) -> Result<T, Located> {
        Err(Located { pos, error })
    }

    /// Skips blanks and a comment on the current line (not the newline).
    fn skip_inline(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' => {
                    self.bump();
                }
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                _ => break,
            }
        }
    }

    /// Skips blanks, comments and newlines (inside lists, and between settings).
    fn skip_all(&mut self) {
        loop {
            self.skip_inline();
            if self.peek() == Some('\n') {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn key(&mut self) -> Result<(String, Pos), Located> {
        let pos = self.pos;
        let mut key = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                key.push(c);
                self.bump();
            } else {
                break;
            }
        }
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
            let found = if key.is_empty() {
                describe(self.peek())
            } else {
                format!("'{key}'")
            };
            return self.err(pos, SyntaxError::ExpectedKey { found });
        }
        Ok((key, pos))
    }

    fn string(&mut self, quote: char) -> Result<String, Located> {
        let start = self.pos;
        self.bump();
        let mut s = String::new();
        loop {
            let here = self.pos;
            match self.bump() {
                None | Some('\n') => {
                    return self.err(start, SyntaxError::UnterminatedString { quote });
                }
                Some(c) if c == quote => return Ok(s),
                Some('\\') => match self.bump() {
                    Some('\\') => s.push('\\'),
                    Some('\'') => s.push('\''),
                    Some('"') => s.push('"'),
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('r') => s.push('\r'),
                    Some('x') => {
                        let digits: String = (0..2).filter_map(|_| self.bump()).collect();
                        match u8::from_str_radix(&digits, 16) {
                            Ok(b) if digits.len() == 2 && b.is_ascii() => s.push(char::from(b)),
                            _ => return self.err(here, SyntaxError::BadHexEscape),
                        }
                    }
                    None | Some('\n') => {
                        return self.err(start, SyntaxError::UnterminatedString { quote });
                    }
                    Some(escape) => return self.err(here, SyntaxError::BadEscape { escape }),
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<u64, Located> {
        let pos = self.pos;
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                text.push(c);
                self.bump();
            } else {
                break;
            }
        }
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse::<u64>(),
        };
        match parsed {
            Ok(n) => Ok(n),
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                self.err(pos, SyntaxError::NumberTooLarge { text })
            }
            Err(_) => self.err(pos, SyntaxError::BadNumber { text }),
        }
    }

    /// A string or a number at the current position, if one starts here.
    fn scalar(&mut self) -> Option<Result<Scalar, Located>> {
        match self.peek()? {
            q @ ('"' | '\'') => Some(self.string(q).map(Scalar::Str)),
            c if c.is_ascii_digit() => Some(self.number().map(Scalar::Int)),
            _ => None,
        }
    }

    fn list(&mut self) -> Result<Vec<Item>, Located> {
        let open = self.pos;
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_all();
            if self.peek() == Some(']') {
                self.bump();
                return Ok(items);
            }
            if self.peek().is_none() {
                return self.err(open, SyntaxError::UnclosedList { line: open.line });
            }
            let pos = self.pos;
            match self.scalar() {
                Some(value) => items.push(Item { pos, value: value? }),
                None => {
                    let found = match self.peek() {
                        Some('[') => "a nested list (lists hold strings and numbers)".into(),
                        c => describe(c),
                    };
                    return self.err(pos, SyntaxError::ExpectedItem { found });
                }
            }
            self.skip_all();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {}
                None => return self.err(open, SyntaxError::UnclosedList { line: open.line }),
                c => {
                    let pos = self.pos;
                    return self.err(
                        pos,
                        SyntaxError::ExpectedCommaOrClose {
                            line: open.line,
                            found: describe(c),
                        },
                    );
                }
            }
        }
    }

    fn value(&mut self) -> Result<Value, Located> {
        let pos = self.pos;
        if self.peek() == Some('[') {
            return self.list().map(Value::List);
        }
        match self.scalar() {
            Some(s) => s.map(Value::Scalar),
            None => {
                let found = describe(self.peek());
                self.err(pos, SyntaxError::ExpectedValue { found })
            }
        }
    }

    fn setting(&mut self) -> Result<Setting, Located> {
        let (key, key_pos) = self.key()?;
        self.skip_inline();
        if self.peek() != Some('=') {
            let pos = self.pos;
            let found = describe(self.peek());
            return self.err(pos, SyntaxError::ExpectedEquals { key, found });
        }
        self.bump();
        self.skip_inline();
        let value_pos = self.pos;
        let value = self.value()?;
        self.skip_inline();
        match self.peek() {
            None | Some('\n') => {}
            Some(';') => {
                self.bump();
            }
            c => {
                let pos = self.pos;
                return self.err(
                    pos,
                    SyntaxError::TrailingGarbage {
                        key,
                        found: describe(c),
                    },
                );
            }
        }
        Ok(Setting {
            key,
            key_pos,
            value_pos,
            value,
        })
    }
}

/// Parses a whole file into its settings, in file order.
pub fn parse(text: &str) -> Result<Vec<Setting>, Located> {
    let mut lx = Lexer::new(text);
    let mut out = Vec::new();
    loop {
        lx.skip_all();
        while lx.peek() == Some(';') {
            lx.bump();
            lx.skip_all();
        }
        if lx.peek().is_none() {
            return Ok(out);
        }
        out.push(lx.setting()?);
    }
}

/// Parses one command-line override `KEY=VALUE`. A value that is not quoted, not a list
/// and not a number is taken as a plain string (`name=web1`), so shells need no nested
/// quotes for simple words.
pub fn parse_override(arg: &str) -> Result<Setting, Located> {
    let mut lx = Lexer::new(arg);
    lx.skip_inline();
    let (key, key_pos) = lx.key()?;
    lx.skip_inline();
    if lx.peek() != Some('=') {
        let pos = lx.pos;
        let found = describe(lx.peek());
        return Err(Located {
            pos,
            error: SyntaxError::ExpectedEquals { key, found },
        });
    }
    lx.bump();
    let value_pos = lx.pos;
    let rest: String = lx.chars.clone().collect();
    let is_number = rest.starts_with(|c: char| c.is_ascii_digit())
        && Lexer::new(&rest).number().is_ok_and(|_| {
            rest.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        });
    let bare = !rest.starts_with(['"', '\'', '[']) && !is_number;
    if bare {
        return Ok(Setting {
            key,
            key_pos,
            value_pos,
            value: Value::Scalar(Scalar::Str(rest)),
        });
    }
    let value = lx.value()?;
    lx.skip_inline();
    if let Some(c) = lx.peek() {
        let pos = lx.pos;
        return Err(Located {
            pos,
            error: SyntaxError::TrailingGarbage {
                key,
                found: describe(Some(c)),
            },
        });
    }
    Ok(Setting {
        key,
        key_pos,
        value_pos,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Scalar {
        Scalar::Str(v.into())
    }

    fn err_at(text: &str) -> (u32, u32, String) {
        let e = parse(text).unwrap_err();
        (e.pos.line, e.pos.col, e.error.to_string())
    }

    #[test]
    fn scalars_lists_comments() {
        let text = "# a guest\n\nname = \"web1\"   # trailing comment\nmemory=256\n\
                    kernel = '/boot/vmlinuz'\nvif = [ 'mac=00:16:3e:00:00:01, bridge=xenbr0',\n\
                    \"bridge=xenbr1\", ]\nmaxmem = 0x200; vcpus = 2\nempty = []\n";
        let set = parse(text).unwrap();
        let keys: Vec<_> = set.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            ["name", "memory", "kernel", "vif", "maxmem", "vcpus", "empty"]
        );
        assert_eq!(set[0].value, Value::Scalar(s("web1")));
        assert_eq!(set[0].key_pos, Pos { line: 3, col: 1 });
        assert_eq!(set[0].value_pos, Pos { line: 3, col: 8 });
        assert_eq!(set[1].value, Value::Scalar(Scalar::Int(256)));
        assert_eq!(set[4].value, Value::Scalar(Scalar::Int(512)));
        let Value::List(items) = &set[3].value else {
            panic!("vif is a list")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].pos, Pos { line: 7, col: 1 });
        assert_eq!(items[1].value, s("bridge=xenbr1"));
        assert_eq!(set[6].value, Value::List(vec![]));
    }

    #[test]
    fn escapes() {
        let set = parse(r#"extra = "a\"b\\c\x41\n" "#).unwrap();
        assert_eq!(set[0].value, Value::Scalar(s("a\"b\\cA\n")));
        let set = parse(r"extra = 'it\'s'").unwrap();
        assert_eq!(set[0].value, Value::Scalar(s("it's")));
    }

    #[test]
    fn every_error_has_its_position() {
        assert_eq!(
            err_at("name = \"a\"\n\nmemory = \n"),
            (
                3,
                10,
                "expected a string, a number or a list after '=', found the end of the line".into()
            )
        );
        assert_eq!(
            err_at("memory = abc"),
            (
                1,
                10,
                "expected a string, a number or a list after '=', found 'a'".into()
            )
        );
        assert_eq!(
            err_at("  = 3").2,
            "expected a setting name (letters, digits and '_'), found '='"
        );
        assert_eq!(err_at("  = 3").1, 3);
        assert_eq!(
            err_at("9lives = 3").2,
            "expected a setting name (letters, digits and '_'), found '9lives'"
        );
        assert_eq!(
            err_at("name \"x\""),
            (1, 6, "expected '=' after 'name', found '\"'".into())
        );
        assert_eq!(
            err_at("name = 'abc\nmemory = 3"),
            (1, 8, "unterminated string: add the closing '".into())
        );
        assert_eq!(
            err_at("x = \"a\\qb\""),
            (
                1,
                7,
                "unknown escape '\\q' in a string (use \\\\ for a backslash)".into()
            )
        );
        assert_eq!(
            err_at("x = \"\\x4\""),
            (
                1,
                6,
                "'\\x' must be followed by two hexadecimal digits".into()
            )
        );
        assert_eq!(
            err_at("x = 99999999999999999999999"),
            (
                1,
                5,
                "the number 99999999999999999999999 is too large".into()
            )
        );
        assert_eq!(err_at("x = 12ab"), (1, 5, "malformed number '12ab'".into()));
        assert_eq!(
            err_at("x = 'a' 'b'"),
            (
                1,
                9,
                "expected the end of the line after the value of 'x', found '''".into()
            )
        );
        assert_eq!(
            err_at("vif = [ 'a'\n  'b' ]"),
            (
                2,
                3,
                "expected ',' or ']' in the list opened at line 1, found '''".into()
            )
        );
        assert_eq!(
            err_at("vif = [ 'a',\n"),
            (
                1,
                7,
                "the list opened at line 1 is never closed: add ']'".into()
            )
        );
        assert_eq!(
            err_at("vif = [ 'a'"),
            (
                1,
                7,
                "the list opened at line 1 is never closed: add ']'".into()
            )
        );
        assert_eq!(
            err_at("vif = [ ['a'] ]"),
            (
                1,
                9,
                "expected a string or a number in the list, found a nested list (lists hold strings and numbers)"
                    .into()
            )
        );
        assert_eq!(
            err_at("vif = [ x ]"),
            (
                1,
                9,
                "expected a string or a number in the list, found 'x'".into()
            )
        );
    }

    #[test]
    fn overrides() {
        let o = parse_override("memory=256").unwrap();
        assert_eq!(
            (o.key.as_str(), o.value),
            ("memory", Value::Scalar(Scalar::Int(256)))
        );
        let o = parse_override("extra=\"console=hvc0\"").unwrap();
        assert_eq!(o.value, Value::Scalar(s("console=hvc0")));
        let o = parse_override("name=web-2").unwrap();
        assert_eq!(o.value, Value::Scalar(s("web-2")));
        let o = parse_override("memory=256m").unwrap();
        assert_eq!(o.value, Value::Scalar(s("256m")));
        let o = parse_override("vif=['bridge=xenbr0']").unwrap();
        assert!(matches!(o.value, Value::List(ref l) if l.len() == 1));
        let e = parse_override("memory").unwrap_err();
        assert_eq!(e.pos.col, 7);
        assert_eq!(
            e.error.to_string(),
            "expected '=' after 'memory', found the end of the file"
        );
        assert!(parse_override("extra='a' b").is_err());
    }
}
