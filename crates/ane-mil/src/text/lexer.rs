//! Tokens of the MIL text dialect, each with its byte span.

use super::error::{ParseError, Span};

/// A token kind; identifiers and numbers borrow the source.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok<'a> {
    Ident(&'a str),
    /// A number as written: optional `-`, decimal or C hex-float.
    Number(&'a str),
    /// A string literal with escapes decoded.
    Str(String),
    Punct(char),
    Arrow,
    Eof,
}

impl Tok<'_> {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Number(s) => format!("number `{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Arrow => "`->`".to_string(),
            Tok::Eof => "end of file".to_string(),
        }
    }
}

/// A token and where it is.
#[derive(Clone, Debug)]
pub(crate) struct Token<'a> {
    pub(crate) tok: Tok<'a>,
    pub(crate) span: Span,
}

/// Splits `src` into tokens; comments (`//` to end of line) and whitespace are skipped.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            Tok::Ident(&src[start..i])
        } else if c.is_ascii_digit()
            || (c == b'-'
                && bytes
                    .get(i + 1)
                    .is_some_and(|b| b.is_ascii_digit() || *b == b'.'))
            || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            i = scan_number(bytes, i);
            Tok::Number(&src[start..i])
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'>') {
            i += 2;
            Tok::Arrow
        } else if c == b'"' {
            let (s, end) = scan_string(src, i)?;
            i = end;
            Tok::Str(s)
        } else if b"()[]{}<>,=;-".contains(&c) {
            i += 1;
            Tok::Punct(c as char)
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(ParseError::new(
                src,
                Span::new(i, i + ch.len_utf8()),
                format!("unexpected character {ch:?}"),
            ));
        };
        out.push(Token {
            tok,
            span: Span::new(start, i),
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        span: Span::new(src.len(), src.len()),
    });
    Ok(out)
}

/// Scans `-?` digits, `.`, hex digits, `p`/`e` exponents with signs; validation is the parser's.
fn scan_number(bytes: &[u8], mut i: usize) -> usize {
    if bytes[i] == b'-' {
        i += 1;
    }
    let hex = bytes.get(i) == Some(&b'0') && matches!(bytes.get(i + 1), Some(b'x' | b'X'));
    if hex {
        i += 2;
    }
    while i < bytes.len() {
        let b = bytes[i];
        let exp = if hex { b"pP" } else { b"eE" };
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
            i += 1;
            if exp.contains(&b) && matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
        } else {
            break;
        }
    }
    i
}

fn scan_string(src: &str, open: usize) -> Result<(String, usize), ParseError> {
    let mut s = String::new();
    let mut chars = src[open + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        let at = open + 1 + off;
        match c {
            '"' => return Ok((s, at + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => s.push('\n'),
                Some((_, 't')) => s.push('\t'),
                Some((_, c @ ('"' | '\\' | '\''))) => s.push(c),
                Some((o, c)) => {
                    let p = open + 1 + o;
                    return Err(ParseError::new(
                        src,
                        Span::new(at, p + c.len_utf8()),
                        format!("unknown escape `\\{c}` in string"),
                    ));
                }
                None => break,
            },
            '\n' => {
                return Err(ParseError::new(
                    src,
                    Span::new(open, at),
                    "string literal runs past the end of the line",
                ))
            }
            c => s.push(c),
        }
    }
    Err(ParseError::new(
        src,
        Span::new(open, src.len()),
        "unterminated string literal",
    ))
}
