//! The DSL's surface: tokens and statements, one statement per line.
//!
//! ```text
//! program credit_score          # name of the package (default: `program`)
//! version 3                     # a positive integer; a higher version supersedes a lower one
//! policy cost 1                 # budget units per evaluation
//! policy budget 500             # budget units per identity
//! policy rate 10 per minute     # token bucket (per second|minute|hour|day, or per N seconds)
//! policy watch sweep 12 freeze  # anomaly rules, any number: RULE PARAMETER ACTION
//! policy watch edges 50% throttle
//! policy watch near 50% audit
//! policy watch rate 5x freeze
//! input income in 0..250000 scale 2   # visible: every custodian checks its range
//! private age in 18..100        # shared by the caller's client; the coordinator never sees it
//! secret w1 in -10..10 scale 4  # value supplied at install time, never in the package
//! const bias = -0.35
//! add s = a b        sub d = a b       mul p = a b       neg n = a
//! mux y = c a b                 # c ? a : b, c must be 0 or 1
//! dot s = [a b c] [x y z]       # a·x + b·y + c·z: one multiplication layer
//! dot s = a x b y c z           # the same, flat: pairs interleaved
//! polyeval y = x [c0 c1 c2]     # c0 + c1·x + c2·x²
//! polyeval y = x c0 c1 c2       # the same, flat
//! output y                      # any number of outputs
//! ```
//!
//! Operands are names or number literals. Everything after `#` is a comment.
//!
//! A `policy watch` line adds a rule over each identity's recent queries (see
//! [`quorumvm_core::circuit::Rule`]): `rate Nx` (a minute's queries at N times the identity's own
//! average), `edges P%` (values at the edges of their ranges), `near P%` (near-duplicate queries),
//! `sweep N` (one input swept monotonically over N queries). The action is `audit`, `throttle`
//! or `freeze`.
//!
//! The flat `dot` and `polyeval` are how the original (Python) QuorumVM DSL writes them, so its
//! programs compile unchanged; a `[` where the list would start picks the bracketed form.

use quorumvm_core::Decimal;
use quorumvm_core::circuit::{Action, Rule, Watch};

use crate::error::{CompileError, Span};

#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    Ident(String),
    Number(Decimal),
    Equals,
    LBracket,
    RBracket,
    DotDot,
    /// `%` after a number, as in `policy watch edges 50%`.
    Percent,
    /// A number run into an `x`, as in `policy watch rate 5x`. Only a rate factor may be one:
    /// anywhere else [`Line::next`] reports it as a number run into a name.
    Factor(Decimal),
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
    PolicyWatch(Watch),
    Input(Declared),
    Private(Declared),
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
    "program", "version", "policy", "input", "private", "secret", "const", "add", "sub", "mul",
    "neg", "mux", "dot", "polyeval", "output", "in", "scale", "per",
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
        } else if c == '%' {
            i += 1;
            TokenKind::Percent
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
            let end = i;
            let factor = chars.get(i) == Some(&'x') && !is_name_char(chars.get(i + 1));
            if factor {
                i += 1;
            } else if is_name_char(chars.get(i)) {
                return Err(run_into_name(span(start, i + 1), src));
            }
            let text: String = chars[start..end].iter().collect();
            let value = Decimal::parse(&text)
                .map_err(|e| CompileError::new(span(start, end), e.to_string(), src))?;
            if factor {
                TokenKind::Factor(value)
            } else {
                TokenKind::Number(value)
            }
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

fn is_name_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
}

fn run_into_name(span: Span, src: &str) -> CompileError {
    CompileError::new(
        span,
        "a number may not run into a name; put a space between them",
        src,
    )
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

    /// Whether the token `ahead` places past the cursor opens a list: how `dot` and `polyeval`
    /// tell their bracketed form from the flat one.
    fn list_at(&self, ahead: usize) -> bool {
        matches!(self.tokens.get(self.pos + ahead), Some(t) if t.kind == TokenKind::LBracket)
    }

    fn next(&mut self, expected: &str) -> Result<Token, CompileError> {
        match self.tokens.get(self.pos) {
            Some(t) if matches!(t.kind, TokenKind::Factor(_)) => {
                Err(run_into_name(t.span, self.src))
            }
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
        self.whole(d, span, what)
    }

    fn whole<T: TryFrom<i128>>(
        &self,
        d: Decimal,
        span: Span,
        what: &str,
    ) -> Result<(T, Span), CompileError> {
        if d.scale != 0 || d.raw < 0 {
            return Err(self.err(span, format!("expected {what}, a whole number")));
        }
        T::try_from(d.raw)
            .map(|v| (v, span))
            .map_err(|_| self.err(span, format!("{what} is too large")))
    }

    /// `N%`: a whole percentage, its span covering the sign.
    fn percent(&mut self, what: &str) -> Result<(u32, Span), CompileError> {
        let (v, span) = self.integer::<u32>(what)?;
        match self.peek() {
            Some(t) if t.kind == TokenKind::Percent => {
                let span = cover(span, t.span);
                self.pos += 1;
                Ok((v, span))
            }
            Some(t) => Err(self.err(t.span, format!("expected `%` after {what}"))),
            None => Err(self.err(self.end_span(), format!("expected `%` after {what}"))),
        }
    }

    /// `Nx`: a whole factor.
    fn factor(&mut self, what: &str) -> Result<(u32, Span), CompileError> {
        match self.tokens.get(self.pos) {
            Some(Token {
                kind: TokenKind::Factor(d),
                span,
            }) => {
                let (d, span) = (*d, *span);
                self.pos += 1;
                self.whole(d, span, what)
            }
            Some(t) => Err(self.err(t.span, format!("expected {what}, such as `5x`"))),
            None => Err(self.err(self.end_span(), format!("expected {what}, such as `5x`"))),
        }
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
                    return Ok((items, cover(open.span, close)));
                }
                None => return Err(self.err(self.end_span(), "expected `]` to close the list")),
                _ => items.push(self.operand()?),
            }
        }
    }

    /// Operands up to the end of the line, for the flat forms, whose arity is the count.
    fn rest(&mut self) -> Result<Vec<Operand>, CompileError> {
        let mut items = Vec::new();
        while self.peek().is_some() {
            items.push(self.operand()?);
        }
        Ok(items)
    }

    /// Where a run of operands is, for an error about all of them; where they were expected
    /// when there are none.
    fn operands_span(&self, ops: &[Operand]) -> Span {
        match (ops.first(), ops.last()) {
            (Some(first), Some(last)) => cover(first.span(), last.span()),
            _ => self.end_span(),
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
        "private" => Stmt::Private(parse_declared(l)?),
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
        "dot" => parse_dot(l)?,
        "polyeval" => parse_polyeval(l)?,
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

/// From the start of `first` to the end of `last`, both on one line.
fn cover(first: Span, last: Span) -> Span {
    Span {
        line: first.line,
        col: first.col,
        len: last.col + last.len - first.col,
    }
}

/// The terms of a dot product: left factors, right factors, and where they are.
type Terms = (Vec<Operand>, Vec<Operand>, Span);

/// `NAME = [a1 … aN] [b1 … bN]` or, flat, `NAME = a1 b1 … aN bN`.
fn parse_dot(l: &mut Line) -> Result<Stmt, CompileError> {
    let name = l.name("a name")?;
    l.equals()?;
    let (a, b, span) = if l.list_at(0) {
        dot_lists(l)?
    } else {
        dot_pairs(l)?
    };
    Ok(Stmt::Dot { name, a, b, span })
}

/// Two lists, which must be as long as each other.
fn dot_lists(l: &mut Line) -> Result<Terms, CompileError> {
    let (a, sa) = l.list()?;
    let (b, sb) = l.list()?;
    let span = cover(sa, sb);
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
    Ok((a, b, span))
}

/// The pairs interleaved, `a1 b1 a2 b2 …`: an odd count leaves a factor without its partner.
fn dot_pairs(l: &mut Line) -> Result<Terms, CompileError> {
    let ops = l.rest()?;
    let span = l.operands_span(&ops);
    if ops.is_empty() || ops.len() % 2 == 1 {
        let got = match ops.len() {
            0 => "none".to_string(),
            n => format!("{n}, an odd number"),
        };
        return Err(l.err(
            span,
            format!("wrong arity: `dot` needs operands in pairs, `a1 b1 a2 b2 …`; got {got}"),
        ));
    }
    let (a, b) = ops
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .unzip();
    Ok((a, b, span))
}

/// `NAME = X [c0 … cN]` or, flat, `NAME = X c0 … cN`.
fn parse_polyeval(l: &mut Line) -> Result<Stmt, CompileError> {
    let name = l.name("a name")?;
    l.equals()?;
    let (x, coeffs, span) = if l.list_at(1) {
        let x = l.operand()?;
        let (coeffs, span) = l.list()?;
        (x, coeffs, span)
    } else {
        poly_flat(l)?
    };
    Ok(Stmt::Polyeval {
        name,
        x,
        coeffs,
        span,
    })
}

/// `x` then the coefficients, whose span stands for the polynomial as the list's does; without
/// a coefficient there is no polynomial.
fn poly_flat(l: &mut Line) -> Result<(Operand, Vec<Operand>, Span), CompileError> {
    let mut ops = l.rest()?;
    if ops.len() < 2 {
        let got = if ops.is_empty() { "none" } else { "only x" };
        return Err(l.err(
            l.operands_span(&ops),
            format!(
                "wrong arity: `polyeval` needs x and at least one coefficient, `x c0 c1 …`; \
                 got {got}"
            ),
        ));
    }
    let coeffs = ops.split_off(1);
    let span = l.operands_span(&coeffs);
    Ok((ops.remove(0), coeffs, span))
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
                range = Some((lo, hi, cover(lo_span, hi_span)));
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
    let what = l.next("`cost`, `budget`, `rate` or `watch`")?;
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
        "watch" => parse_watch(l),
        _ => Err(l.err(
            what.span,
            "expected `cost`, `budget`, `rate` or `watch` after `policy`",
        )),
    }
}

/// `RULE PARAMETER ACTION` after `policy watch`: `rate 5x`, `edges 50%`, `near 50%` or
/// `sweep 12`, then `audit`, `throttle` or `freeze`.
fn parse_watch(l: &mut Line) -> Result<Stmt, CompileError> {
    let head = l.next("a rule: `rate`, `edges`, `near` or `sweep`")?;
    let (rule, span) = match &head.kind {
        TokenKind::Ident(w) if w == "rate" => {
            let (factor, span) = l.factor("a factor over the identity's average")?;
            (Rule::Rate { factor }, span)
        }
        TokenKind::Ident(w) if w == "edges" => {
            let (percent, span) = l.percent("a percentage of values at an edge")?;
            (Rule::Edges { percent }, span)
        }
        TokenKind::Ident(w) if w == "near" => {
            let (percent, span) = l.percent("a percentage of near-duplicate queries")?;
            (Rule::NearDuplicates { percent }, span)
        }
        TokenKind::Ident(w) if w == "sweep" => {
            let (length, span) = l.integer::<u32>("a number of queries")?;
            (Rule::Sweep { length }, span)
        }
        _ => {
            return Err(l.err(
                head.span,
                "expected a rule: `rate`, `edges`, `near` or `sweep`",
            ));
        }
    };
    let act = l.next("an action: `audit`, `throttle` or `freeze`")?;
    let action = match &act.kind {
        TokenKind::Ident(w) if w == "audit" => Action::Audit,
        TokenKind::Ident(w) if w == "throttle" => Action::Throttle,
        TokenKind::Ident(w) if w == "freeze" => Action::Freeze,
        _ => {
            return Err(l.err(
                act.span,
                "expected an action: `audit`, `throttle` or `freeze`",
            ));
        }
    };
    let watch = Watch { rule, action };
    watch.check().map_err(|e| l.err(span, e.to_string()))?;
    Ok(Stmt::PolicyWatch(watch))
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
            ("dot d = a [b]", 1, 11, "expected an operand"),
            ("dot d = [a b] c d", 1, 15, "expected `[`"),
            ("polyeval p = [c0 c1]", 1, 14, "expected an operand"),
            ("add y = x 1 2", 1, 13, "unexpected text"),
            ("policy rate 0 per minute", 1, 13, "positive"),
            ("policy watch", 1, 13, "expected a rule"),
            ("policy watch spike 5x audit", 1, 14, "expected a rule"),
            ("policy watch rate 5 audit", 1, 19, "such as `5x`"),
            ("policy watch rate 1x audit", 1, 19, "at least 2x"),
            ("policy watch rate 2.5x audit", 1, 19, "whole number"),
            ("policy watch edges 50 audit", 1, 23, "expected `%`"),
            ("policy watch near 50%", 1, 22, "expected an action"),
            ("policy watch near 0% audit", 1, 19, "between 1% and 100%"),
            ("policy watch edges 101% audit", 1, 20, "1% and 100%"),
            ("policy watch sweep 3 freeze", 1, 20, "between 4 and 32"),
            ("policy watch sweep 33 freeze", 1, 20, "between 4 and 32"),
            ("policy watch sweep 12 ban", 1, 23, "expected an action"),
            ("policy watch sweep 12 freeze now", 1, 30, "unexpected text"),
            ("const c = 5x", 1, 11, "run into a name"),
        ];
        for (src, line, col, needle) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!((e.span.line, e.span.col), (line, col), "{src}: {e}");
            assert!(e.message.contains(needle), "{src}: {}", e.message);
        }
    }

    #[test]
    fn watch_lines_parse_in_order() {
        let src = "policy watch sweep 12 freeze\npolicy watch edges 50% throttle\n\
                   policy watch near 50 % audit   # the sign may stand apart\n\
                   policy watch rate 5x freeze\n";
        let watches: Vec<Watch> = parse(src)
            .unwrap()
            .into_iter()
            .map(|s| match s {
                Stmt::PolicyWatch(w) => w,
                other => panic!("{other:?}"),
            })
            .collect();
        let want = [
            (Rule::Sweep { length: 12 }, Action::Freeze),
            (Rule::Edges { percent: 50 }, Action::Throttle),
            (Rule::NearDuplicates { percent: 50 }, Action::Audit),
            (Rule::Rate { factor: 5 }, Action::Freeze),
        ]
        .map(|(rule, action)| Watch { rule, action });
        assert_eq!(watches, want);
    }

    /// Every `policy watch` line lands in the manifest, in order; without one there are none.
    #[test]
    fn watch_lines_reach_the_manifest() {
        let body = "input x in 0..10\noutput x\n";
        let bare = crate::compile::compile(body, "w").unwrap();
        assert!(bare.manifest.policy.watch.is_empty());
        let src = format!("policy watch sweep 4 audit\npolicy watch sweep 4 audit\n{body}");
        let p = crate::compile::compile(&src, "w").unwrap();
        let sweep = Watch {
            rule: Rule::Sweep { length: 4 },
            action: Action::Audit,
        };
        assert_eq!(p.manifest.policy.watch, [sweep, sweep]);
    }

    #[test]
    fn flat_dot_interleaves_its_pairs() {
        let stmts = parse("dot s = a1 b1 a2 2.5").unwrap();
        let Stmt::Dot { a, b, span, .. } = &stmts[0] else {
            panic!()
        };
        let text = |ops: &[Operand]| -> Vec<String> {
            ops.iter()
                .map(|o| match o {
                    Operand::Name(n) => n.text.clone(),
                    Operand::Number(d, _) => d.to_string(),
                })
                .collect()
        };
        assert_eq!(text(a), ["a1", "a2"]);
        assert_eq!(text(b), ["b1", "2.5"]);
        assert_eq!((span.col, span.len), (9, 12));
    }

    /// The flat form is only another spelling: circuit and manifest, so the package, are the same.
    #[test]
    fn flat_and_bracketed_forms_compile_to_the_same_circuit() {
        let decls = "input x in -10..10\nsecret a in -5..5 scale 1\nsecret b in -5..5\n";
        let cases = [
            ("dot s = [a b] [x x]", "dot s = a x b x"),
            ("dot s = [a] [x]", "dot s = a x"),
            ("dot s = [a 2 -0.5] [x b 3]", "dot s = a x 2 b -0.5 3"),
            ("polyeval s = x [a b 3]", "polyeval s = x a b 3"),
            ("polyeval s = x [a]", "polyeval s = x a"),
            ("polyeval s = 2 [a -1.5 b]", "polyeval s = 2 a -1.5 b"),
        ];
        for (bracketed, flat) in cases {
            let build = |stmt: &str| {
                let src = format!("{decls}{stmt}\noutput s\n");
                crate::compile::compile(&src, "same").unwrap_or_else(|e| panic!("{stmt}: {e}"))
            };
            let (want, got) = (build(bracketed), build(flat));
            assert_eq!(want.circuit, got.circuit, "{flat}");
            assert_eq!(want.manifest, got.manifest, "{flat}");
        }
    }

    #[test]
    fn flat_forms_with_the_wrong_arity_point_at_their_operands() {
        // (source, line, column, carets, what the message says it got)
        let cases = [
            ("input a\ndot d = a", 2, 9, 1, "got 1, an odd number"),
            ("input a\ndot d = a a 2", 2, 9, 5, "got 3, an odd number"),
            ("dot d =", 1, 8, 1, "got none"),
            ("dot d =   # the pairs come later", 1, 8, 1, "got none"),
            ("input x\n\npolyeval p = x", 3, 14, 1, "got only x"),
            ("polyeval p =", 1, 13, 1, "got none"),
        ];
        for (src, line, col, len, got) in cases {
            let e = parse(src).unwrap_err();
            let span = (e.span.line, e.span.col, e.span.len);
            assert_eq!(span, (line, col, len), "{src}: {e}");
            assert!(e.message.starts_with("wrong arity"), "{src}: {}", e.message);
            assert!(e.message.ends_with(got), "{src}: {}", e.message);
        }
    }
}
