//! The Qwen2 / Llama-3 pre-tokenizer regex as a hand-written scanner for ASCII text.
//!
//! The pattern (Qwen2 / Qwen3 with `\p{N}`, Llama-3 / cl100k with `\p{N}{1,3}`):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! matched as tokenizers matches it (Oniguruma, leftmost-first alternation, repeated
//! searches from the end of the previous match). On ASCII, `\p{L}` is `[A-Za-z]`, `\p{N}`
//! is `[0-9]` and `\s` is `[\t\n\x0b\x0c\r ]` (Oniguruma's Unicode `\s`; unlike Python's
//! `str.isspace`, the separators `\x1c`-`\x1f` are not white space). Every ASCII byte is
//! covered by one of the alternatives, so the pieces tile the text.

/// Byte classes.
const LETTER: u8 = 1;
const DIGIT: u8 = 2;
const SPACE: u8 = 4;
const CRLF: u8 = 8;

const fn classes() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() {
            LETTER
        } else if c.is_ascii_digit() {
            DIGIT
        } else if c == b'\n' || c == b'\r' {
            SPACE | CRLF
        } else if matches!(c, b' ' | b'\t' | 0x0b | 0x0c) {
            SPACE
        } else {
            0
        };
        b += 1;
    }
    t
}

static CLASS: [u8; 128] = classes();

#[inline]
fn class(b: u8) -> u8 {
    // Non-ASCII bytes never reach the scanner; treat them as punctuation to stay total.
    CLASS.get(b as usize).copied().unwrap_or(0)
}

#[inline]
fn is(s: &[u8], i: usize, mask: u8) -> bool {
    s.get(i).is_some_and(|&b| class(b) & mask != 0)
}

/// Not white space, not a letter, not a digit: `[^\s\p{L}\p{N}]`.
#[inline]
fn is_punct(s: &[u8], i: usize) -> bool {
    s.get(i).is_some_and(|&b| class(b) == 0)
}

#[inline]
fn run(s: &[u8], mut i: usize, mask: u8) -> usize {
    while is(s, i, mask) {
        i += 1;
    }
    i
}

/// The end of the piece that starts at `i` (`i < s.len()`), `max_digits` being the `{1,N}`
/// of `\p{N}` (1 for Qwen, 3 for Llama-3).
pub fn piece_end(s: &[u8], i: usize, max_digits: usize) -> usize {
    let b = s[i];
    let c = class(b);
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if b == b'\'' {
        let lower = |k: usize| s.get(k).map(u8::to_ascii_lowercase);
        match lower(i + 1) {
            Some(b's' | b't' | b'm' | b'd') => return i + 2,
            Some(b'r' | b'v') if lower(i + 2) == Some(b'e') => return i + 3,
            Some(b'l') if lower(i + 2) == Some(b'l') => return i + 3,
            _ => {}
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if c & LETTER != 0 {
        return run(s, i + 1, LETTER);
    }
    if c & (CRLF | DIGIT) == 0 && is(s, i + 1, LETTER) {
        return run(s, i + 2, LETTER);
    }
    // \p{N}{1,max_digits}
    if c & DIGIT != 0 {
        let mut j = i + 1;
        while j - i < max_digits && is(s, j, DIGIT) {
            j += 1;
        }
        return j;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    let p = if b == b' ' { i + 1 } else { i };
    if is_punct(s, p) {
        let j = run_punct(s, p + 1);
        return run(s, j, CRLF);
    }
    // Only white space is left: `b` is \s.
    let j = run(s, i, SPACE);
    // \s*[\r\n]+ : the white space up to its last line break
    if let Some(k) = s[i..j].iter().rposition(|&b| class(b) & CRLF != 0) {
        return i + k + 1;
    }
    // \s+(?!\S) : the run, less its last character when a non-space follows
    if j == s.len() {
        return j;
    }
    if j - 1 > i {
        return j - 1;
    }
    // \s+ (a single white space character before a non-space)
    j
}

#[inline]
fn run_punct(s: &[u8], mut i: usize) -> usize {
    while is_punct(s, i) {
        i += 1;
    }
    i
}

/// The pieces of `s` as `(start, end)` ranges, in order.
pub fn pieces(s: &[u8], max_digits: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= s.len() {
            return None;
        }
        let start = i;
        i = piece_end(s, i, max_digits);
        Some((start, i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str, digits: usize) -> Vec<&str> {
        pieces(s.as_bytes(), digits)
            .map(|(a, b)| &s[a..b])
            .collect()
    }

    #[test]
    fn empty_input_has_no_pieces() {
        assert!(split("", 1).is_empty());
    }

    #[test]
    fn contractions_any_case() {
        assert_eq!(split("it's", 1), ["it", "'s"]);
        assert_eq!(split("IT'S", 1), ["IT", "'S"]);
        assert_eq!(
            split("we'Re they'VE I'm we'LL he'D don't", 1),
            ["we", "'Re", " they", "'VE", " I", "'m", " we", "'LL", " he", "'D", " don", "'t"]
        );
        // the contraction wins over a longer letter run, even inside a word
        assert_eq!(split("'sam", 1), ["'s", "am"]);
        // 'r, 'v, 'l alone are not contractions: the quote prefixes the word, unless a
        // space before it makes it a punctuation piece first
        assert_eq!(split("'rx 'vx", 1), ["'rx", " '", "vx"]);
        assert_eq!(split("'lx", 1), ["'lx"]);
        assert_eq!(split("'", 1), ["'"]);
        assert_eq!(split("''s", 1), ["''", "s"]);
        assert_eq!(split(" 's", 1), [" '", "s"]);
    }

    #[test]
    fn letters_take_one_leading_non_letter() {
        assert_eq!(split("Hello world", 1), ["Hello", " world"]);
        assert_eq!(split("\tx.y_z", 1), ["\tx", ".y", "_z"]);
        // after a space, punctuation is its own piece with the space
        assert_eq!(split(" .y", 1), [" .", "y"]);
        // CR / LF never lead a word; neither do digits
        assert_eq!(split("\nx\rx9x", 1), ["\n", "x", "\r", "x", "9", "x"]);
        assert_eq!(split("\x1cx\x00y", 1), ["\x1cx", "\x00y"]);
    }

    #[test]
    fn digits_grouping() {
        assert_eq!(split("12345", 1), ["1", "2", "3", "4", "5"]);
        assert_eq!(split("12345", 3), ["123", "45"]);
        assert_eq!(split("1234567 x12", 3), ["123", "456", "7", " x", "12"]);
        assert_eq!(split(" 42", 3), [" ", "42"]);
    }

    #[test]
    fn punctuation_runs_take_a_space_and_line_breaks() {
        assert_eq!(split("a, b", 1), ["a", ",", " b"]);
        assert_eq!(split("x ...!\n\n y", 1), ["x", " ...!\n\n", " y"]);
        assert_eq!(split("{}\r\n\r\n", 1), ["{}\r\n\r\n"]);
        assert_eq!(split("  ()", 1), [" ", " ()"]);
        assert_eq!(split("\x00\x7f\x1f", 1), ["\x00\x7f\x1f"]);
        assert_eq!(split("a\t!", 1), ["a", "\t", "!"]);
    }

    #[test]
    fn white_space_runs() {
        // \s*[\r\n]+ : up to the last line break
        assert_eq!(split("a \n \n  b", 1), ["a", " \n \n", " ", " b"]);
        assert_eq!(split("\r\n\r\n", 1), ["\r\n\r\n"]);
        assert_eq!(split("x\r\n  \r\n\t", 1), ["x", "\r\n  \r\n", "\t"]);
        assert_eq!(split("a \n", 1), ["a", " \n"]);
        // \s+(?!\S) : the run less its last character before a non-space
        assert_eq!(split("a    b", 1), ["a", "   ", " b"]);
        assert_eq!(split("a \t\x0b\x0cb", 1), ["a", " \t\x0b", "\x0cb"]);
        assert_eq!(split("a   ", 1), ["a", "   "]);
        assert_eq!(split("   ", 1), ["   "]);
        // \s+ : one white space character before a non-space that does not take it
        assert_eq!(split("1 2", 1), ["1", " ", "2"]);
        assert_eq!(split("  1", 1), [" ", " ", "1"]);
        assert_eq!(split("\t\t!", 1), ["\t", "\t", "!"]);
        // \x1c-\x1f are not white space
        assert_eq!(split(" \x1c", 1), [" \x1c"]);
    }

    #[test]
    fn pieces_tile_the_text() {
        let s: Vec<u8> = (0..=127u8).cycle().take(2000).collect();
        let mut at = 0;
        for (a, b) in pieces(&s, 3) {
            assert_eq!(a, at);
            assert!(b > a);
            at = b;
        }
        assert_eq!(at, s.len());
    }
}
