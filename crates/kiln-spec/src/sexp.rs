//! An S-expression reader with sexplib's syntax, the one OBuilder specs are written in.
//!
//! - Atoms are bare (a run of characters other than whitespace, `(`, `)`, `"` and `;`)
//!   or double-quoted. Quoted atoms understand the escapes `\"` `\\` `\'` `\n` `\t`
//!   `\r` `\b` `\ ` (space), `\DDD` (three decimal digits, one byte), `\xHH` (one
//!   byte), and a backslash before a line break, which skips the break and the
//!   next line's leading blanks. The decoded bytes must be UTF-8.
//! - `;` starts a comment to the end of the line, `#| … |#` a block comment (they
//!   nest, and `"` strings inside them are skipped whole), and `#;` comments out
//!   the S-expression that follows.
//! - Every list and atom carries its 1-based `line:col`, columns counting chars.
//! - Comments are kept in the tree ([`Notes`]), so a formatter can put each one back next
//!   to what it annotates: a comment on the line where an item ends trails that item;
//!   other comments lead the item after them, or, before a list's `)`, end the list.
//!   A `#;` datum comment is kept as its source text. Blank lines before an item or a
//!   comment are remembered as one.
//!
//! Nesting is limited to [`MAX_DEPTH`] lists so hostile input cannot exhaust the stack.

use crate::{Pos, SpecError};

/// The deepest list nesting the reader accepts. Real specs use a handful of levels
/// per child build.
pub(crate) const MAX_DEPTH: usize = 128;

/// A read S-expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sexp {
    Atom(Atom),
    List(List),
}

/// An atom with its decoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Atom {
    pub text: String,
    pub pos: Pos,
    pub notes: Notes,
}

/// A list; `pos` is that of its `(`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct List {
    pub items: Vec<Sexp>,
    pub pos: Pos,
    pub notes: Notes,
}

/// A `;`, `#| |#` or `#;` comment exactly as written (a line comment without its line break).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Comment {
    pub text: String,
    pub pos: Pos,
    /// A blank line separates it from what came before.
    pub blank_before: bool,
}

/// The comments that belong to one datum. For the outermost datum, `leading` holds the
/// comments before it and `trailing` those after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Notes {
    /// Comments on their own lines before the datum.
    pub leading: Vec<Comment>,
    /// Comments after the datum on the line where it ends.
    pub trailing: Vec<Comment>,
    /// For a list: comments after its last item, before its `)`.
    pub inner_end: Vec<Comment>,
    /// A blank line separates the datum from what came before (its last leading comment,
    /// if it has any).
    pub blank_before: bool,
}

impl Sexp {
    pub(crate) fn pos(&self) -> Pos {
        match self {
            Sexp::Atom(a) => a.pos,
            Sexp::List(l) => l.pos,
        }
    }

    pub(crate) fn notes(&self) -> &Notes {
        match self {
            Sexp::Atom(a) => &a.notes,
            Sexp::List(l) => &l.notes,
        }
    }

    pub(crate) fn notes_mut(&mut self) -> &mut Notes {
        match self {
            Sexp::Atom(a) => &mut a.notes,
            Sexp::List(l) => &mut l.notes,
        }
    }

    /// Every comment in this datum and inside it, in source order.
    pub(crate) fn all_comments(&self) -> Vec<Comment> {
        let notes = self.notes();
        let mut out = notes.leading.clone();
        if let Sexp::List(list) = self {
            for item in &list.items {
                out.extend(item.all_comments());
            }
        }
        out.extend(notes.inner_end.iter().cloned());
        out.extend(notes.trailing.iter().cloned());
        out
    }
}

/// Reads exactly one S-expression; only whitespace and comments may surround it.
/// Comments before it are its leading notes, those after it its trailing notes.
pub(crate) fn read(text: &str) -> Result<Sexp, SpecError> {
    let mut reader = Reader::new(text);
    let header = reader.gap()?;
    let blank_after_header = header.blank_before_next && !header.comments.is_empty();
    if reader.at_end() {
        return Err(SpecError::new(
            reader.pos(),
            "the spec is empty: write a list such as `((from debian:bookworm) (run (shell \"true\")))`",
        ));
    }
    let mut sexp = reader.datum()?;
    let footer = reader.gap()?;
    match reader.peek() {
        None => {
            let notes = sexp.notes_mut();
            notes.leading = header.comments.into_iter().map(|c| c.comment).collect();
            notes.trailing = footer.comments.into_iter().map(|c| c.comment).collect();
            notes.blank_before = blank_after_header;
            Ok(sexp)
        }
        Some(')') => Err(unmatched_close(reader.pos())),
        Some(_) => Err(SpecError::new(
            reader.pos(),
            "unexpected text after the spec's closing `)`: a spec is a single list; move this inside it or delete it",
        )),
    }
}

fn unmatched_close(pos: Pos) -> SpecError {
    SpecError::new(pos, "unmatched `)`: delete it or add the `(` it closes")
}

/// True for the characters sexplib treats as blanks between tokens.
pub(crate) fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

/// True for the characters that end a bare atom.
pub(crate) fn ends_bare_atom(c: char) -> bool {
    is_whitespace(c) || matches!(c, '(' | ')' | '"' | ';')
}

/// What lies between two data: comments, and whether a blank line precedes what follows.
struct Gap {
    comments: Vec<GapComment>,
    blank_before_next: bool,
}

struct GapComment {
    comment: Comment,
    /// The line its last character is on.
    end_line: u32,
}

struct Reader {
    chars: Vec<char>,
    at: usize,
    line: u32,
    col: u32,
    /// Open lists plus pending `#;` comments: both recurse, so both count.
    depth: usize,
}

impl Reader {
    fn new(text: &str) -> Self {
        Reader {
            chars: text.chars().collect(),
            at: 0,
            line: 1,
            col: 1,
            depth: 0,
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    fn at_end(&self) -> bool {
        self.at >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek2(&self) -> Option<char> {
        self.chars.get(self.at + 1).copied()
    }

    fn starts_with(&self, a: char, b: char) -> bool {
        self.peek() == Some(a) && self.peek2() == Some(b)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    /// Reads whitespace and comments up to the next datum, `)` or the end.
    fn gap(&mut self) -> Result<Gap, SpecError> {
        let mut comments = Vec::new();
        let mut newlines = 0usize;
        loop {
            let pos = self.pos();
            let start = self.at;
            match self.peek() {
                Some(c) if is_whitespace(c) => {
                    if c == '\n' {
                        newlines += 1;
                    }
                    self.bump();
                    continue;
                }
                Some(';') => self.skip_to_line_end(),
                Some('#') if self.peek2() == Some('|') => self.skip_block_comment()?,
                Some('#') if self.peek2() == Some(';') => self.skip_datum_comment()?,
                _ => {
                    return Ok(Gap {
                        comments,
                        blank_before_next: newlines >= 2,
                    })
                }
            }
            let text: String = self.chars[start..self.at].iter().collect();
            let end_line = self.line;
            comments.push(GapComment {
                comment: Comment {
                    text: text.trim_end_matches('\r').to_string(),
                    pos,
                    blank_before: newlines >= 2,
                },
                end_line,
            });
            newlines = 0;
        }
    }

    /// Skips whitespace and all three kinds of comments.
    fn skip_trivia(&mut self) -> Result<(), SpecError> {
        self.gap().map(drop)
    }

    /// Skips a `;` comment, leaving its line break to be read as whitespace.
    fn skip_to_line_end(&mut self) {
        while self.peek().is_some_and(|c| c != '\n') {
            self.bump();
        }
    }

    fn skip_block_comment(&mut self) -> Result<(), SpecError> {
        let start = self.pos();
        let unterminated = || {
            SpecError::new(
                start,
                "unterminated block comment: close this `#|` with `|#`",
            )
        };
        self.bump();
        self.bump();
        let mut depth = 1usize;
        while depth > 0 {
            if self.starts_with('#', '|') {
                self.bump();
                self.bump();
                depth += 1;
            } else if self.starts_with('|', '#') {
                self.bump();
                self.bump();
                depth -= 1;
            } else {
                match self.bump() {
                    None => return Err(unterminated()),
                    Some('"') => {
                        if !self.skip_string_body() {
                            return Err(unterminated());
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Skips a string inside a block comment without decoding it; false at end of input.
    fn skip_string_body(&mut self) -> bool {
        loop {
            match self.bump() {
                None => return false,
                Some('"') => return true,
                Some('\\') => {
                    if self.bump().is_none() {
                        return false;
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn skip_datum_comment(&mut self) -> Result<(), SpecError> {
        let start = self.pos();
        self.enter(start)?;
        self.bump();
        self.bump();
        self.skip_trivia()?;
        let result = match self.peek() {
            None | Some(')') => Err(SpecError::new(
                start,
                "`#;` comments out the S-expression after it, but none follows: delete the `#;`",
            )),
            Some(_) => self.datum().map(drop),
        };
        self.depth -= 1;
        result
    }

    /// Counts one more level of recursion, refusing to go past [`MAX_DEPTH`].
    fn enter(&mut self, pos: Pos) -> Result<(), SpecError> {
        if self.depth >= MAX_DEPTH {
            return Err(SpecError::new(
                pos,
                format!(
                    "lists are nested more than {MAX_DEPTH} deep: a spec never needs that many"
                ),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    /// Reads one datum at the current position (trivia already skipped).
    fn datum(&mut self) -> Result<Sexp, SpecError> {
        match self.peek() {
            Some('(') => self.list().map(Sexp::List),
            Some(')') => Err(unmatched_close(self.pos())),
            Some('"') => self.quoted().map(Sexp::Atom),
            Some('|') if self.peek2() == Some('#') => Err(SpecError::new(
                self.pos(),
                "`|#` without an opening `#|`: delete it or quote the atom",
            )),
            Some(_) => self.bare().map(Sexp::Atom),
            None => Err(SpecError::new(self.pos(), "unexpected end of input")),
        }
    }

    fn list(&mut self) -> Result<List, SpecError> {
        let pos = self.pos();
        self.enter(pos)?;
        self.bump();
        let mut items: Vec<Sexp> = Vec::new();
        // The line the previous item (or a comment trailing it) ends on.
        let mut last_line = None;
        loop {
            let gap = self.gap()?;
            let mut leading = Vec::new();
            for GapComment { comment, end_line } in gap.comments {
                match items.last_mut() {
                    Some(prev) if leading.is_empty() && last_line == Some(comment.pos.line) => {
                        last_line = Some(end_line);
                        prev.notes_mut().trailing.push(comment);
                    }
                    _ => leading.push(comment),
                }
            }
            match self.peek() {
                None => {
                    return Err(SpecError::new(
                        pos,
                        "unclosed `(`: add the matching `)` at the end of this list",
                    ))
                }
                Some(')') => {
                    self.bump();
                    self.depth -= 1;
                    let notes = Notes {
                        inner_end: leading,
                        ..Notes::default()
                    };
                    return Ok(List { items, pos, notes });
                }
                Some(_) => {
                    let mut item = self.datum()?;
                    let notes = item.notes_mut();
                    notes.leading = leading;
                    notes.blank_before = gap.blank_before_next;
                    last_line = Some(self.end_line());
                    items.push(item);
                }
            }
        }
    }

    /// The line of the last character read.
    fn end_line(&self) -> u32 {
        match self.at.checked_sub(1).map(|i| self.chars[i]) {
            Some('\n') => self.line - 1,
            _ => self.line,
        }
    }

    fn bare(&mut self) -> Result<Atom, SpecError> {
        let pos = self.pos();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if ends_bare_atom(c) {
                break;
            }
            if self.starts_with('#', '|') || self.starts_with('|', '#') {
                return Err(SpecError::new(
                    self.pos(),
                    "comment marker `#|` or `|#` inside an unquoted atom: put the atom in double quotes",
                ));
            }
            text.push(c);
            self.bump();
        }
        Ok(Atom {
            text,
            pos,
            notes: Notes::default(),
        })
    }

    fn quoted(&mut self) -> Result<Atom, SpecError> {
        let pos = self.pos();
        self.bump();
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return Err(SpecError::new(
                        pos,
                        "unterminated string: add the closing `\"`",
                    ))
                }
                Some('"') => {
                    self.bump();
                    break;
                }
                Some('\\') => self.escape(pos, &mut bytes)?,
                Some(c) => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    self.bump();
                }
            }
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            SpecError::new(
                pos,
                "string is not valid UTF-8 once its `\\DDD`/`\\xHH` escapes are decoded: escape whole UTF-8 sequences",
            )
        })?;
        Ok(Atom {
            text,
            pos,
            notes: Notes::default(),
        })
    }

    /// Decodes one escape; the reader is on its backslash. `start` is the string's `"`.
    fn escape(&mut self, start: Pos, bytes: &mut Vec<u8>) -> Result<(), SpecError> {
        let at = self.pos();
        self.bump();
        let unterminated = || SpecError::new(start, "unterminated string: add the closing `\"`");
        let Some(c) = self.bump() else {
            return Err(unterminated());
        };
        let simple = match c {
            '"' => Some(b'"'),
            '\\' => Some(b'\\'),
            '\'' => Some(b'\''),
            'n' => Some(b'\n'),
            't' => Some(b'\t'),
            'r' => Some(b'\r'),
            'b' => Some(b'\x08'),
            ' ' => Some(b' '),
            _ => None,
        };
        if let Some(b) = simple {
            bytes.push(b);
            return Ok(());
        }
        match c {
            '\n' => self.skip_continuation_blanks(),
            '\r' if self.peek() == Some('\n') => {
                self.bump();
                self.skip_continuation_blanks();
            }
            '0'..='9' if self.next_are(2, |c| c.is_ascii_digit()) => {
                bytes.push(self.decimal_escape(at, c)?)
            }
            'x' if self.next_are(2, |c| c.is_ascii_hexdigit()) => bytes.push(self.hex_escape()),
            // sexplib keeps any other escape as written (`"C:\obuilder"` is `C:\obuilder`,
            // `\4x` is `\4x`); so does kiln, for OBuilder's Windows specs.
            other => {
                bytes.push(b'\\');
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
            }
        }
        Ok(())
    }

    /// True when the next `n` characters exist and all satisfy `test`.
    fn next_are(&self, n: usize, test: impl Fn(char) -> bool) -> bool {
        (0..n).all(|i| self.chars.get(self.at + i).is_some_and(|&c| test(c)))
    }

    fn skip_continuation_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
    }

    /// `\DDD` once its three digits are known to be there: over 255 is an error, as in sexplib.
    fn decimal_escape(&mut self, at: Pos, first: char) -> Result<u8, SpecError> {
        let mut value = first.to_digit(10).unwrap_or(0);
        for _ in 0..2 {
            value = value * 10 + self.bump().and_then(|c| c.to_digit(10)).unwrap_or(0);
        }
        u8::try_from(value).map_err(|_| {
            SpecError::new(
                at,
                "bad escape: `\\DDD` is a byte from 000 to 255: write `\\\\` for a literal backslash",
            )
        })
    }

    /// `\xHH` once its two hex digits are known to be there.
    fn hex_escape(&mut self) -> u8 {
        let mut value = 0u32;
        for _ in 0..2 {
            value = value * 16 + self.bump().and_then(|c| c.to_digit(16)).unwrap_or(0);
        }
        // Two hex digits never exceed 255.
        value as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(s: &Sexp) -> &str {
        match s {
            Sexp::Atom(a) => &a.text,
            Sexp::List(_) => panic!("expected an atom, got {s:?}"),
        }
    }

    fn items(s: &Sexp) -> &[Sexp] {
        match s {
            Sexp::List(l) => &l.items,
            Sexp::Atom(_) => panic!("expected a list, got {s:?}"),
        }
    }

    fn err(text: &str) -> String {
        read(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no error".into())
    }

    fn texts(comments: &[Comment]) -> Vec<&str> {
        comments.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn comments_land_in_the_tree_next_to_what_they_annotate() {
        let text = "; head\n(a ; eol a\n #| b\n |# c #;(x\n y) ; eol c\n\n ; lead d\n\n d\n (e ; after e\n  f) ; after list\n ; end\n)\n; tail";
        let root = read(text).unwrap();
        assert_eq!(texts(&root.notes().leading), ["; head"]);
        assert_eq!(texts(&root.notes().trailing), ["; tail"]);
        assert_eq!(texts(&root.notes().inner_end), ["; end"]);
        let it = items(&root);
        assert_eq!(texts(&it[0].notes().trailing), ["; eol a"]);
        assert_eq!(texts(&it[1].notes().leading), ["#| b\n |#"]);
        assert_eq!(texts(&it[1].notes().trailing), ["#;(x\n y)", "; eol c"]);
        let d = it[2].notes();
        assert_eq!(texts(&d.leading), ["; lead d"]);
        assert!(d.leading[0].blank_before && d.blank_before);
        assert!(!it[1].notes().blank_before);
        assert_eq!(texts(&items(&it[3])[0].notes().trailing), ["; after e"]);
        assert_eq!(texts(&it[3].notes().trailing), ["; after list"]);
        assert_eq!(d.leading[0].pos, Pos { line: 7, col: 2 });
        let all: Vec<String> = root.all_comments().into_iter().map(|c| c.text).collect();
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn a_comment_after_an_open_paren_leads_the_first_item() {
        let root = read("( ; c\n a)").unwrap();
        assert_eq!(texts(&items(&root)[0].notes().leading), ["; c"]);
        assert!(texts(&read("(a \"; not #| x\" b)").unwrap().all_comments()).is_empty());
    }

    #[test]
    fn reads_bare_and_quoted_atoms_with_positions() {
        let s = read("(a \"b c\"\n  dé)").unwrap();
        let it = items(&s);
        assert_eq!(atom(&it[0]), "a");
        assert_eq!(atom(&it[1]), "b c");
        assert_eq!(atom(&it[2]), "dé");
        assert_eq!(it[1].pos(), Pos { line: 1, col: 4 });
        assert_eq!(it[2].pos(), Pos { line: 2, col: 3 });
    }

    #[test]
    fn columns_count_chars_not_bytes() {
        let s = read("(ééé x)").unwrap();
        assert_eq!(items(&s)[1].pos(), Pos { line: 1, col: 6 });
    }

    #[test]
    fn decodes_every_escape() {
        let s = read(r#"("\"\\\'\n\t\r\b\ \065\x41")"#).unwrap();
        assert_eq!(atom(&items(&s)[0]), "\"\\'\n\t\r\x08 AA");
    }

    #[test]
    fn other_escapes_stay_as_written_like_sexplib() {
        let s = read(r#"("C:\obuilder" "\4x" "\12" "\xG0" "\x4" "a\qb")"#).unwrap();
        let texts: Vec<&str> = items(&s).iter().map(atom).collect();
        assert_eq!(
            texts,
            ["C:\\obuilder", "\\4x", "\\12", "\\xG0", "\\x4", "a\\qb"]
        );
    }

    #[test]
    fn decimal_escapes_build_utf8() {
        let s = read(r#"("\226\128\148")"#).unwrap();
        assert_eq!(atom(&items(&s)[0]), "—");
    }

    #[test]
    fn backslash_newline_skips_leading_blanks() {
        let s = read("(\"one \\\n     two\" \"a\\\r\n\tb\")").unwrap();
        assert_eq!(atom(&items(&s)[0]), "one two");
        assert_eq!(atom(&items(&s)[1]), "ab");
    }

    #[test]
    fn literal_newlines_stay_in_strings() {
        let s = read("(\"a\nb\")").unwrap();
        assert_eq!(atom(&items(&s)[0]), "a\nb");
    }

    #[test]
    fn skips_all_comment_kinds() {
        let text = "; header\n(a #| block #| nested |# \"|#\" |# b #;(c d) #; #; e f g ; tail\n)";
        let s = read(text).unwrap();
        let names: Vec<&str> = items(&s).iter().map(atom).collect();
        assert_eq!(names, ["a", "b", "g"]);
    }

    #[test]
    fn semicolon_and_quote_end_bare_atoms() {
        let s = read("(a;c\nb\"q\")").unwrap();
        let names: Vec<&str> = items(&s).iter().map(atom).collect();
        assert_eq!(names, ["a", "b", "q"]);
    }

    #[test]
    fn hash_alone_is_an_atom() {
        let s = read("(#a # a#)").unwrap();
        let names: Vec<&str> = items(&s).iter().map(atom).collect();
        assert_eq!(names, ["#a", "#", "a#"]);
    }

    #[test]
    fn syntax_errors_have_positions() {
        assert_eq!(err(""), "1:1: the spec is empty: write a list such as `((from debian:bookworm) (run (shell \"true\")))`");
        assert_eq!(err("  ; only a comment\n"), err("").replace("1:1", "2:1"));
        assert_eq!(
            err("(a (b)"),
            "1:1: unclosed `(`: add the matching `)` at the end of this list"
        );
        assert_eq!(
            err("(a))"),
            "1:4: unmatched `)`: delete it or add the `(` it closes"
        );
        assert_eq!(
            err("(a \"bc)"),
            "1:4: unterminated string: add the closing `\"`"
        );
        assert_eq!(
            err("(\"\\256\")"),
            "1:3: bad escape: `\\DDD` is a byte from 000 to 255: write `\\\\` for a literal backslash"
        );
        assert!(
            err("(\"\\xff\")").contains("not valid UTF-8"),
            "{}",
            err("(\"\\xff\")")
        );
        assert_eq!(
            err("(a #| x)"),
            "1:4: unterminated block comment: close this `#|` with `|#`"
        );
        assert!(err("(a) b").starts_with("1:5: unexpected text after"));
        assert!(err("(a#|b)").starts_with("1:3: comment marker"));
        assert!(err("(|# a)").starts_with("1:2: `|#` without"));
        assert!(err("(a #;)").starts_with("1:4: `#;` comments out"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "(".repeat(100_000);
        assert!(err(&text).contains("nested more than"));
        let text = format!("(a {})", "#; ".repeat(100_000));
        assert!(err(&text).contains("nested more than"));
        let ok = format!("{}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(read(&ok).is_ok());
    }
}
