//! The Qwen2 / Llama-3 pre-tokenizer regex as a hand-written scanner.
//!
//! The pattern (Qwen2 / Qwen3 with `\p{N}`, Llama-3 / cl100k with `\p{N}{1,3}`):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! matched as tokenizers matches it (Oniguruma, leftmost-first alternation, repeated
//! searches from the end of the previous match), on any text:
//!
//! - `\p{L}` and `\p{N}` are the code point ranges of [`classes::RANGES`], generated from
//!   tokenizers' own regex engine (`gen_classes.py`; Unicode 16 for tokenizers 0.23);
//! - `\s` is Unicode White_Space, as Oniguruma has it: `\t\n\x0b\x0c\r`, space, U+0085,
//!   U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 (unlike Python's
//!   `str.isspace`, the separators `\x1c`-`\x1f` are not white space);
//! - the contractions are case-insensitive with Unicode case folding, which on these letters
//!   adds only U+017F LATIN SMALL LETTER LONG S for `s` (checked against tokenizers for
//!   every code point).
//!
//! Every character is covered by one of the alternatives, so the pieces tile the text.

use super::classes::RANGES;

/// Character classes.
pub const LETTER: u8 = 1;
/// `\p{N}`: any number (Nd, Nl, No), not only decimal digits.
pub const DIGIT: u8 = 2;
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

/// `\s` beyond ASCII: Unicode White_Space.
const fn is_unicode_space(cp: u32) -> bool {
    matches!(
        cp,
        0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000
    )
}

/// The classes of the Basic Multilingual Plane, two bits per code point (0: other,
/// 1: LETTER, 2: DIGIT, 3: SPACE), from [`RANGES`].
static BMP: [u8; 0x4000] = {
    let mut t = [0u8; 0x4000];
    let mut k = 0;
    while k < RANGES.len() {
        let (first, last, class) = RANGES[k];
        let mut cp = first;
        while cp <= last && cp < 0x10000 {
            t[(cp >> 2) as usize] |= class << ((cp & 3) * 2);
            cp += 1;
        }
        k += 1;
    }
    let mut cp = 0x80;
    while cp < 0x10000 {
        if is_unicode_space(cp) {
            t[(cp >> 2) as usize] |= 3 << ((cp & 3) * 2);
        }
        cp += 1;
    }
    t
};

/// The class of a non-ASCII code point.
pub fn class_of(cp: u32) -> u8 {
    if cp < 0x10000 {
        const CLASSES: [u8; 4] = [0, LETTER, DIGIT, SPACE];
        return CLASSES[(BMP[(cp >> 2) as usize] >> ((cp & 3) * 2) & 3) as usize];
    }
    let k = RANGES.partition_point(|&(_, last, _)| last < cp);
    match RANGES.get(k) {
        Some(&(first, _, class)) if first <= cp => class,
        _ => 0,
    }
}

/// The class and UTF-8 length of the character at `i` (0 and 1 past the end). `s` is UTF-8
/// and `i` a character boundary.
#[inline]
fn at(s: &[u8], i: usize) -> (u8, usize) {
    let Some(&b) = s.get(i) else { return (0, 1) };
    if b < 0x80 {
        return (CLASS[b as usize], 1);
    }
    let cont = |k: usize| u32::from(s.get(i + k).copied().unwrap_or(0x80) & 0x3F);
    let (cp, n) = if b < 0xE0 {
        ((u32::from(b) & 0x1F) << 6 | cont(1), 2)
    } else if b < 0xF0 {
        ((u32::from(b) & 0x0F) << 12 | cont(1) << 6 | cont(2), 3)
    } else {
        (
            (u32::from(b) & 0x07) << 18 | cont(1) << 12 | cont(2) << 6 | cont(3),
            4,
        )
    };
    (class_of(cp), n)
}

#[inline]
fn is(s: &[u8], i: usize, mask: u8) -> bool {
    i < s.len() && at(s, i).0 & mask != 0
}

/// Not white space, not a letter, not a number: `[^\s\p{L}\p{N}]`.
#[inline]
fn is_punct(s: &[u8], i: usize) -> bool {
    i < s.len() && at(s, i).0 == 0
}

/// The end of the run of characters in `mask` from `i`.
#[inline]
fn run(s: &[u8], mut i: usize, mask: u8) -> usize {
    while i < s.len() {
        let (c, n) = at(s, i);
        if c & mask == 0 {
            break;
        }
        i += n;
    }
    i
}

/// The end of the run of `[^\s\p{L}\p{N}]` from `i`.
#[inline]
fn run_punct(s: &[u8], mut i: usize) -> usize {
    while i < s.len() {
        let (c, n) = at(s, i);
        if c != 0 {
            break;
        }
        i += n;
    }
    i
}

/// The end of the piece that starts at `i` (`i < s.len()`, a character boundary of the UTF-8
/// text `s`), `max_digits` being the `{1,N}` of `\p{N}` (1 for Qwen, 3 for Llama-3).
pub fn piece_end(s: &[u8], i: usize, max_digits: usize) -> usize {
    let b = s[i];
    let (c, n) = at(s, i);
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if b == b'\'' {
        let lower = |k: usize| s.get(k).map(u8::to_ascii_lowercase);
        match lower(i + 1) {
            Some(b's' | b't' | b'm' | b'd') => return i + 2,
            Some(b'r' | b'v') if lower(i + 2) == Some(b'e') => return i + 3,
            Some(b'l') if lower(i + 2) == Some(b'l') => return i + 3,
            // U+017F LATIN SMALL LETTER LONG S folds to 's'
            Some(0xC5) if s.get(i + 2) == Some(&0xBF) => return i + 3,
            _ => {}
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if c & LETTER != 0 {
        return run(s, i + n, LETTER);
    }
    if c & (CRLF | DIGIT) == 0 && is(s, i + n, LETTER) {
        return run(s, i + n, LETTER);
    }
    // \p{N}{1,max_digits}
    if c & DIGIT != 0 {
        let mut j = i + n;
        for _ in 1..max_digits {
            let (c, n) = at(s, j);
            if j >= s.len() || c & DIGIT == 0 {
                break;
            }
            j += n;
        }
        return j;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    let p = if b == b' ' { i + 1 } else { i };
    if is_punct(s, p) {
        let j = run_punct(s, p);
        return run(s, j, CRLF);
    }
    // Only white space is left: the character at `i` is \s.
    let j = run(s, i, SPACE);
    // \s*[\r\n]+ : the white space up to its last line break (CR and LF are single bytes that
    // no other character's UTF-8 contains)
    if let Some(k) = s[i..j].iter().rposition(|&b| b == b'\n' || b == b'\r') {
        return i + k + 1;
    }
    // \s+(?!\S) : the run, less its last character when a non-space follows
    if j == s.len() {
        return j;
    }
    let mut last = j - 1;
    while s[last] & 0xC0 == 0x80 {
        last -= 1;
    }
    if last > i {
        return last;
    }
    // \s+ (a single white space character before a non-space)
    j
}

/// The pieces of `text` as `(start, end)` byte ranges, in order.
pub fn pieces(text: &str, max_digits: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let s = text.as_bytes();
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
        pieces(s, digits).map(|(a, b)| &s[a..b]).collect()
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

    // The expectations below are tokenizers' own pieces (`pre_tokenize_str`) for these texts.

    #[test]
    fn cjk_and_fullwidth_punctuation() {
        assert_eq!(split("你好，世界！", 1), ["你好", "，世界", "！"]);
        // one leading non-letter of any kind: ideographic space, no-break space
        assert_eq!(
            split("\u{3000}中文 \u{a0}ab", 1),
            ["\u{3000}中文", " ", "\u{a0}ab"]
        );
        assert_eq!(split("Ёлка's", 1), ["Ёлка", "'s"]);
    }

    #[test]
    fn numbers_of_any_script() {
        let arabic = "\u{661}\u{662}\u{663} \u{661}\u{662}\u{663}\u{664}";
        assert_eq!(split(arabic, 1).len(), 8);
        assert_eq!(
            split(arabic, 3),
            [
                "\u{661}\u{662}\u{663}",
                " ",
                "\u{661}\u{662}\u{663}",
                "\u{664}"
            ]
        );
        // fullwidth digits, a vulgar fraction and a Roman numeral are all \p{N}
        assert_eq!(split("１２３４½Ⅻ", 1), ["１", "２", "３", "４", "½", "Ⅻ"]);
        assert_eq!(split("１２３４½Ⅻ", 3), ["１２３", "４½Ⅻ"]);
    }

    #[test]
    fn unicode_white_space() {
        assert_eq!(
            split("a\u{3000}\u{3000}b", 1),
            ["a", "\u{3000}", "\u{3000}b"]
        );
        assert_eq!(split("a\u{a0}\n b", 1), ["a", "\u{a0}\n", " b"]);
        // U+2028 / U+2029 are white space but not [\r\n]
        assert_eq!(
            split("a\u{2028}\nb\u{2029}", 1),
            ["a", "\u{2028}\n", "b", "\u{2029}"]
        );
        assert_eq!(split("x\u{3000} \u{3000}", 1), ["x", "\u{3000} \u{3000}"]);
        assert_eq!(split("x \u{3000}!", 1), ["x", " ", "\u{3000}", "!"]);
        assert_eq!(split("\u{85}\u{85}x", 1), ["\u{85}", "\u{85}x"]);
        // zero width space and the information separators are not white space
        assert_eq!(split("a\u{200b}b\x1cc", 1), ["a", "\u{200b}b", "\x1cc"]);
    }

    #[test]
    fn contraction_with_long_s() {
        // U+017F folds to 's'; fullwidth S does not
        assert_eq!(split("'ſ 'ſt 'ＳＳ", 1), ["'ſ", " '", "ſt", " '", "ＳＳ"]);
        assert_eq!(split("x'ſt", 1), ["x", "'ſ", "t"]);
    }

    #[test]
    fn marks_and_emoji_are_neither_letters_nor_numbers() {
        assert_eq!(split("e\u{301} नमस्ते", 1), ["e", "\u{301}", " नमस", "्त", "े"]);
        assert_eq!(split("🙂👍🏽 🙂x", 1), ["🙂👍🏽", " 🙂", "x"]);
    }

    #[test]
    fn class_table() {
        assert_eq!(class_of(0x4E2D), LETTER); // 中
        assert_eq!(class_of(0xFF10), DIGIT); // fullwidth 0
        assert_eq!(class_of(0x2028), SPACE);
        assert_eq!(class_of(0x0301), 0); // combining acute
        assert_eq!(class_of(0x1F642), 0); // emoji
        assert_eq!(class_of(0x10FFFF), 0);
        // the BMP table and the ranges agree
        for cp in 0x80..0x10000 {
            let k = RANGES.partition_point(|&(_, last, _)| last < cp);
            let want = match RANGES.get(k) {
                Some(&(first, _, class)) if first <= cp => class,
                _ if is_unicode_space(cp) => SPACE,
                _ => 0,
            };
            assert_eq!(class_of(cp), want, "U+{cp:04X}");
        }
        for w in RANGES.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0);
        }
    }

    #[test]
    fn pieces_tile_the_text() {
        let s: String = (0..=0x3100u32)
            .step_by(7)
            .filter_map(char::from_u32)
            .cycle()
            .take(4000)
            .collect();
        let mut at = 0;
        for (a, b) in pieces(&s, 3) {
            assert_eq!(a, at);
            assert!(b > a);
            at = b;
        }
        assert_eq!(at, s.len());
    }
}
