//! The DSL's surface: tokens and statements, one statement per line.
//!
//! ```text
//! program credit_score          # name of the package (default: `program`)
//! version 3                     # a positive integer; a higher version supersedes a lower one
//! policy cost 1                 # budget units per evaluation
//! policy budget 500             # budget units per identity
//! policy rate 10 per minute     # token bucket (per second|minute|hour|day, or per N seconds)
//! input income in 0..250000 scale 2
//! secret w1 in -10..10 scale 4  # value supplied at install time, never in the package
//! const bias = -0.35
//! add s = a b        sub d = a b       mul p = a b       neg n = a
//! mux y = c a b                 # c ? a : b, c must be 0 or 1
//! dot s = [a b c] [x y z]       # a·x + b·y + c·z: one multiplication layer
//! polyeval y = x [c0 c1 c2]     # c0 + c1·x + c2·x²
//! output y                      # any number of outputs
//! ```
//!
//! Operands are names or number literals. Everything after `#` is a comment.

use quorumvm_core::Decimal;

use crate::error::{CompileError, Span};

#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    Ident(String),
    Number(Decimal),
    Equals,
    LBracket,
    RBracket,
    DotDot,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Name(Name),
    Number(Decimal, Span),
}

impl Operand {
    pub fn span(&self) -> Span {
        match self {
            Operand::Name(n) => n.span,
            Operand::Number(_, s) => *s,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub name: Name,
    pub range: Option<(Decimal, Decimal, Span)>,
    pub scale: Option<(u8, Span)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Program(Name),
    Version(u32, Span),
    PolicyCost(u64, Span),
    PolicyBudget(u64, Span),
    PolicyRate {
        count: u32,
        window_secs: u32,
        span: Span,
    },
    Input(Declared),
    Secret(Declared),
    Const {
        name: Name,
        value: Decimal,
        span: Span,
    },
    Binary {
        op: BinaryOp,
        name: Name,
        a: Operand,
        b: Operand,
    },
    Neg {
        name: Name,
        a: Operand,
    },
    Mux {
        name: Name,
        cond: Operand,
        a: Operand,
        b: Operand,
    },
    Dot {
        name: Name,
        a: Vec<Operand>,
        b: Vec<Operand>,
        span: Span,
    },
    Polyeval {
        name: Name,
        x: Operand,
        coeffs: Vec<Operand>,
        span: Span,
    },
    Output(Name),
}

/// Words that start statements or structure them; none may be used as a name.
pub const KEYWORDS: &[&str] = &[
    "program", "version", "policy", "input", "secret", "const", "add", "sub", "mul", "neg", "mux",
    "dot", "polyeval", "output", "in", "scale", "per",
];

/// Splits one line (without its comment) into tokens.
fn tokenize(line_no: usize, line: &str, src: &str) -> Result<Vec<Token>, CompileError> {
    let chars: Vec<char> = line.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let span = |start: usize, end: usize| Span {
        line: line_no,
        col: start + 1,
        len: (end - start).max(1),
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let kind = if c == '=' {
            i += 1;
            TokenKind::Equals
        } else if c == '[' {
            i += 1;
            TokenKind::LBracket
        } else if c == ']' {
            i += 1;
            TokenKind::RBracket
        } else if c == '.' && chars.get(i + 1) == Some(&'.') {
            i += 2;
            TokenKind::DotDot
        } else if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            TokenKind::Ident(chars[start..i].iter().collect())
        } else if c.is_ascii_digit() || ((c == '-' || c == '+') && next_is_digit(&chars, i + 1)) {
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            // A fraction needs a digit after the point, so `0..10` lexes as 0, .., 10.
            if chars.get(i) == Some(&'.') && next_is_digit(&chars, i + 1) {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < chars.len() && (chars[i].is_ascii_alphabetic() || chars[i] == '_') {
                return Err(CompileError::new(
                    span(start, i + 1),
                    "a number may not run into a name; put a space between them",
                    src,
                ));
            }
            let text: String = chars[start..i].iter().collect();
            let value = Decimal::parse(&text)
                .map_err(|e| CompileError::new(span(start, i), e.to_string(), src))?;
            TokenKind::Number(value)
        } else {
            return Err(CompileError::new(
                span(start, start + 1),
                format!("unexpected character `{c}`"),
                src,
            ));
        };
        tokens.push(Token {
            kind,
            span: span(start, i),
        });
    }
    Ok(tokens)
}

fn next_is_digit(chars: &[char], i: usize) -> bool {
    chars.get(i).is_some_and(|c| c.is_ascii_digit())
}

/// A cursor over one line's tokens, with error helpers that point into the line.
struct Line<'a> {
    tokens: Vec<Token>,
    pos: usize,
    line_no: usize,
    line_len: usize,
    src: &'a str,
}

impl<'a> Line<'a> {
    fn err(&self, span: Span, msg: impl Into<String>) -> CompileError {
        CompileError::new(span, msg, self.src)
    }

    /// The span just past the last token: where something missing was expected.
    fn end_span(&self) -> Span {
        Span {
            line: self.line_no,
            col: self.line_len + 1,
            len: 1,
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self, expected: &str) -> Result<Token, CompileError> {
        match self.tokens.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t.clone())
            }
            None => Err(self.err(self.end_span(), format!("expected {expected}"))),
        }
    }

    fn name(&mut self, what: &str) -> Result<Name, CompileError> {
        let t = self.next(what)?;
        match t.kind {
            TokenKind::Ident(text) if KEYWORDS.contains(&text.as_str()) => Err(self.err(
                t.span,
                format!("`{text}` is a keyword and cannot be used as a name"),
            )),
            TokenKind::Ident(text) => Ok(Name { text, span: t.span }),
            _ => Err(self.err(t.span, format!("expected {what}"))),
        }
    }

    fn keyword(&mut self, word: &str) -> Result<Span, CompileError> {
        let t = self.next(&format!("`{word}`"))?;
        match t.kind {
            TokenKind::Ident(ref w) if w == word => Ok(t.span),
            _ => Err(self.err(t.span, format!("expected `{word}`"))),
        }
    }

    fn equals(&mut self) -> Result<(), CompileError> {
        let t = self.next("`=`")?;
        match t.kind {
            TokenKind::Equals => Ok(()),
            _ => Err(self.err(t.span, "expected `=`")),
        }
    }

    fn number(&mut self, what: &str) -> Result<(Decimal, Span), CompileError> {
        let t = self.next(what)?;
        match t.kind {
            TokenKind::Number(d) => Ok((d, t.span)),
            _ => Err(self.err(t.span, format!("expected {what}"))),
        }
    }

    /// A non-negative integer literal that fits `T`.
    fn integer<T: TryFrom<i128>>(&mut self, what: &str) -> Result<(T, Span), CompileError> {
        let (d, span) = self.number(what)?;
        if d.scale != 0 || d.raw < 0 {
            return Err(self.err(span, format!("expected {what}, a whole number")));
        }
        T::try_from(d.raw)
            .map(|v| (v, span))
            .map_err(|_| self.err(span, format!("{what} is too large")))
    }

    fn operand(&mut self) -> Result<Operand, CompileError> {
        let t = self.next("an operand (a name or a number)")?;
        match t.kind {
            TokenKind::Ident(text) if KEYWORDS.contains(&text.as_str()) => {
                Err(self.err(t.span, format!("`{text}` is a keyword, not an operand")))
            }
            TokenKind::Ident(text) => Ok(Operand::Name(Name { text, span: t.span })),
            TokenKind::Number(d) => Ok(Operand::Number(d, t.span)),
            _ => Err(self.err(t.span, "expected an operand (a name or a number)")),
        }
    }

    /// `[a b c]`, at least one element.
    fn list(&mut self) -> Result<(Vec<Operand>, Span), CompileError> {
        let open = self.next("`[`")?;
        if open.kind != TokenKind::LBracket {
            return Err(self.err(open.span, "expected `[` to start a list"));
        }
        let mut items = Vec::new();
        loop {
            match self.peek() {
                Some(Token {
                    kind: TokenKind::RBracket,
                    span,
                }) => {
                    let close = *span;
                    self.pos += 1;
                    if items.is_empty() {
                        return Err(self.err(open.span, "a list needs at least one element"));
                    }
                    let whole = Span {
                        line: open.span.line,
                        col: open.span.col,
                        len: close.col + 1 - open.span.col,
                    };
                    return Ok((items, whole));
                }
                None => return Err(self.err(self.end_span(), "expected `]` to close the list")),
                _ => items.push(self.operand()?),
            }
        }
    }

    fn finish(&self) -> Result<(), CompileError> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(self.err(t.span, "unexpected text after the end of the statement")),
        }
    }
}

/// Parses a whole source into statements; the first malformed line is the error.
pub fn parse(src: &str) -> Result<Vec<Stmt>, CompileError> {
    let mut stmts = Vec::new();
    for (idx, raw_line) in src.lines().enumerate() {
        let line_no = idx + 1;
        let code = raw_line.split('#').next().unwrap_or("");
        let tokens = tokenize(line_no, code, src)?;
        if tokens.is_empty() {
            continue;
        }
        let mut line = Line {
            tokens,
            pos: 0,
            line_no,
            line_len: code.trim_end().chars().count(),
            src,
        };
        stmts.push(parse_stmt(&mut line)?);
        line.finish()?;
    }
    Ok(stmts)
}

fn parse_stmt(l: &mut Line) -> Result<Stmt, CompileError> {
    let head = l.next("a statement")?;
    let word = match &head.kind {
        TokenKind::Ident(w) => w.clone(),
        _ => {
            return Err(l.err(
                head.span,
                "a statement starts with a keyword such as `input`",
            ));
        }
    };
    Ok(match word.as_str() {
        "program" => Stmt::Program(l.name("the program's name")?),
        "version" => {
            let (v, span) = l.integer::<u32>("a version number")?;
            if v == 0 {
                return Err(l.err(span, "versions start at 1"));
            }
            Stmt::Version(v, span)
        }
        "policy" => parse_policy(l)?,
        "input" => Stmt::Input(parse_declared(l)?),
        "secret" => Stmt::Secret(parse_declared(l)?),
        "const" => {
            let name = l.name("a name")?;
            l.equals()?;
            let (value, span) = l.number("a number")?;
            Stmt::Const { name, value, span }
        }
        "add" | "sub" | "mul" => {
            let op = match word.as_str() {
                "add" => BinaryOp::Add,
                "sub" => BinaryOp::Sub,
                _ => BinaryOp::Mul,
            };
            let name = l.name("a name")?;
            l.equals()?;
            let a = l.operand()?;
            let b = l.operand()?;
            Stmt::Binary { op, name, a, b }
        }
        "neg" => {
            let name = l.name("a name")?;
            l.equals()?;
            Stmt::Neg {
                name,
                a: l.operand()?,
            }
        }
        "mux" => {
            let name = l.name("a name")?;
            l.equals()?;
            let cond = l.operand()?;
            let a = l.operand()?;
            let b = l.operand()?;
            Stmt::Mux { name, cond, a, b }
        }
        "dot" => {
            let name = l.name("a name")?;
            l.equals()?;
            let (a, sa) = l.list()?;
            let (b, sb) = l.list()?;
            let span = Span {
                line: sa.line,
                col: sa.col,
                len: sb.col + sb.len - sa.col,
            };
            if a.len() != b.len() {
                return Err(l.err(
                    span,
                    format!(
                        "wrong arity: `dot` needs two lists of the same length, got {} and {}",
                        a.len(),
                        b.len()
                    ),
                ));
            }
            Stmt::Dot { name, a, b, span }
        }
        "polyeval" => {
            let name = l.name("a name")?;
            l.equals()?;
            let x = l.operand()?;
            let (coeffs, span) = l.list()?;
            Stmt::Polyeval {
                name,
                x,
                coeffs,
                span,
            }
        }
        "output" => Stmt::Output(match l.operand()? {
            Operand::Name(n) => n,
            Operand::Number(_, span) => {
                return Err(l.err(span, "an output must name a value"));
            }
        }),
        other => {
            return Err(l.err(
                head.span,
                format!(
                    "unknown statement `{other}` (expected one of: program, version, policy, \
                     input, secret, const, add, sub, mul, neg, mux, dot, polyeval, output)"
                ),
            ));
        }
    })
}

/// `NAME [in LO..HI] [scale S]`
fn parse_declared(l: &mut Line) -> Result<Declared, CompileError> {
    let name = l.name("a name")?;
    let mut range = None;
    let mut scale = None;
    while let Some(t) = l.peek().cloned() {
        match &t.kind {
            TokenKind::Ident(w) if w == "in" && range.is_none() => {
                l.pos += 1;
                let (lo, lo_span) = l.number("the lower bound of the range")?;
                let dots = l.next("`..`")?;
                if dots.kind != TokenKind::DotDot {
                    return Err(l.err(dots.span, "expected `..` between the bounds"));
                }
                let (hi, hi_span) = l.number("the upper bound of the range")?;
                let span = Span {
                    line: lo_span.line,
                    col: lo_span.col,
                    len: hi_span.col + hi_span.len - lo_span.col,
                };
                range = Some((lo, hi, span));
            }
            TokenKind::Ident(w) if w == "scale" && scale.is_none() => {
                l.pos += 1;
                scale = Some(l.integer::<u8>("a scale (digits after the point)")?);
            }
            _ => {
                return Err(l.err(t.span, "expected `in LO..HI` or `scale N`"));
            }
        }
    }
    Ok(Declared { name, range, scale })
}

fn parse_policy(l: &mut Line) -> Result<Stmt, CompileError> {
    let what = l.next("`cost`, `budget` or `rate`")?;
    let word = match &what.kind {
        TokenKind::Ident(w) => w.clone(),
        _ => String::new(),
    };
    match word.as_str() {
        "cost" => {
            let (v, span) = l.integer::<u64>("a cost per evaluation")?;
            Ok(Stmt::PolicyCost(v, span))
        }
        "budget" => {
            let (v, span) = l.integer::<u64>("a budget per identity")?;
            Ok(Stmt::PolicyBudget(v, span))
        }
        "rate" => {
            let (count, span) = l.integer::<u32>("a number of evaluations")?;
            l.keyword("per")?;
            let window_secs = match l.peek().map(|t| t.kind.clone()) {
                Some(TokenKind::Number(_)) => {
                    let (n, _) = l.integer::<u32>("a number of seconds")?;
                    l.keyword("seconds")?;
                    n
                }
                _ => {
                    let unit = l.next("second, minute, hour or day")?;
                    match &unit.kind {
                        TokenKind::Ident(u) if u == "second" => 1,
                        TokenKind::Ident(u) if u == "minute" => 60,
                        TokenKind::Ident(u) if u == "hour" => 3600,
                        TokenKind::Ident(u) if u == "day" => 86400,
                        _ => {
                            return Err(l.err(
                                unit.span,
                                "expected second, minute, hour, day or `N seconds`",
                            ));
                        }
                    }
                }
            };
            if count == 0 || window_secs == 0 {
                return Err(l.err(span, "a rate limit needs a positive count and window"));
            }
            Ok(Stmt::PolicyRate {
                count,
                window_secs,
                span,
            })
        }
        _ => Err(l.err(
            what.span,
            "expected `cost`, `budget` or `rate` after `policy`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_decimals_lex() {
        let stmts = parse("input income in -0.5..250000 scale 2").unwrap();
        let Stmt::Input(d) = &stmts[0] else { panic!() };
        let (lo, hi, _) = d.range.unwrap();
        assert_eq!((lo.raw, lo.scale, hi.raw), (-5, 1, 250000));
        assert_eq!(d.scale.unwrap().0, 2);
    }

    #[test]
    fn errors_point_at_the_right_column() {
        let cases = [
            ("input x\nadd y = x", 2, 10, "expected an operand"),
            ("input x\nfoo y = x", 2, 1, "unknown statement `foo`"),
            ("input x in 0..", 1, 15, "upper bound"),
            ("const c = 1.2.3", 1, 14, "unexpected character"),
            ("input 3x", 1, 7, "run into a name"),
            ("input input", 1, 7, "keyword"),
            ("dot d = [a b] [c]", 1, 9, "wrong arity"),
            ("add y = x 1 2", 1, 13, "unexpected text"),
            ("policy rate 0 per minute", 1, 13, "positive"),
        ];
        for (src, line, col, needle) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!((e.span.line, e.span.col), (line, col), "{src}: {e}");
            assert!(e.message.contains(needle), "{src}: {}", e.message);
        }
    }
}
