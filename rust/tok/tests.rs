use super::*;

/// The byte-level spelling of a text.
fn bl(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}

/// A vocabulary of the 256 bytes (id = byte) plus the results of `merges` (given as plain
/// text), with `added` tokens from id 1000.
fn build(merges: &[(&str, &str)], added: &[&str], max_digits: usize, ignore: bool) -> Bpe {
    build_with(merges, added, max_digits, ignore, Normalizer::None)
}

fn build_with(
    merges: &[(&str, &str)],
    added: &[&str],
    max_digits: usize,
    ignore: bool,
    normalizer: Normalizer,
) -> Bpe {
    let mut vocab: Vec<(String, u32)> = (0..=255u8)
        .map(|b| (byte_char(b).to_string(), b as u32))
        .collect();
    for (a, b) in merges {
        let id = vocab.len() as u32;
        vocab.push((bl(&format!("{a}{b}")), id));
    }
    let merges: Vec<(String, String)> = merges.iter().map(|(a, b)| (bl(a), bl(b))).collect();
    let added: Vec<(String, u32)> = added
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), 1000 + i as u32))
        .collect();
    Bpe::new(Spec {
        vocab,
        merges,
        added,
        max_digits,
        ignore_merges: ignore,
        normalizer,
    })
    .unwrap()
}

/// Ids back to plain text (for readable assertions).
fn text(bpe: &Bpe, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| String::from_utf8(bpe.decode_bytes(&[id]).unwrap()).unwrap())
        .collect()
}

#[test]
fn byte_alphabet_is_gpt2s() {
    assert_eq!(byte_char(b'a'), 'a');
    assert_eq!(byte_char(b'!'), '!');
    assert_eq!(byte_char(0), '\u{100}');
    assert_eq!(byte_char(b'\n'), '\u{10a}');
    assert_eq!(byte_char(b' '), '\u{120}');
    assert_eq!(byte_char(0x7f), '\u{121}');
    assert_eq!(byte_char(0xa0), '\u{142}');
    assert_eq!(byte_char(0xa1), '\u{a1}');
    assert_eq!(byte_char(0xad), '\u{143}');
    assert_eq!(byte_char(0xff), '\u{ff}');
    let all: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
    assert_eq!(all.len(), 256);
    for b in 0..=255u8 {
        assert_eq!(char_byte(byte_char(b)), Some(b));
    }
    for c in [
        ' ',
        '\n',
        '\u{7f}',
        '\u{a0}',
        '\u{ad}',
        '\u{144}',
        '▁',
        '\u{10ffff}',
    ] {
        assert_eq!(char_byte(c), None);
    }
}

#[test]
fn lowest_rank_merges_first_leftmost_on_ties() {
    let bpe = build(
        &[("b", "c"), ("a", "b"), ("a", "a"), ("aa", "a")],
        &[],
        1,
        false,
    );
    // "bc" outranks "ab": a + bc, never ab + c
    assert_eq!(text(&bpe, &bpe.encode("abc").unwrap()), ["a", "bc"]);
    // a a a: the leftmost pair merges first, then "aa" + "a" (rank 3)
    assert_eq!(text(&bpe, &bpe.encode("aaa").unwrap()), ["aaa"]);
    // every a + a (rank 2) before any aa + a (rank 3)
    assert_eq!(text(&bpe, &bpe.encode("aaaa").unwrap()), ["aa", "aa"]);
    assert_eq!(text(&bpe, &bpe.encode("aaaaa").unwrap()), ["aa", "aaa"]);
    // pieces are merged separately
    assert_eq!(text(&bpe, &bpe.encode("ab c").unwrap()), ["ab", " ", "c"]);
}

#[test]
fn ignore_merges_takes_whole_tokens() {
    // "abc" is in the vocabulary, but no merge sequence reaches it from a + bc
    let merges = [("b", "c"), ("a", "b"), ("ab", "c")];
    let plain = build(&merges, &[], 1, false);
    assert_eq!(text(&plain, &plain.encode("abc").unwrap()), ["a", "bc"]);
    let whole = build(&merges, &[], 1, true);
    assert_eq!(text(&whole, &whole.encode("abc").unwrap()), ["abc"]);
    // a piece that is not a whole token still goes through the merges
    assert_eq!(
        text(&whole, &whole.encode("abcabc").unwrap()),
        ["a", "bc", "a", "bc"]
    );
}

#[test]
fn added_tokens_leftmost_then_longest() {
    let bpe = build(&[], &["<a>", "<a><b>", "<b>", "b>xy"], 1, false);
    let ids = |s: &str| bpe.encode(s).unwrap();
    // longest at the same position
    assert_eq!(ids("<a><b>"), [1001]);
    // leftmost wins over a longer match that starts later
    assert_eq!(ids("<b>xy"), [1002, b'x' as u32, b'y' as u32]);
    assert_eq!(ids("-b>xy"), [b'-' as u32, 1003]);
    assert_eq!(ids("x<a><a><b>"), [b'x' as u32, 1000, 1001]);
    // adjacent tokens, text between and around
    assert_eq!(ids("<b><b>"), [1002, 1002]);
    assert_eq!(ids("<a"), [b'<' as u32, b'a' as u32]);
    // a partial token is plain text, split by the pre-tokenizer on its own side of a token
    assert_eq!(text(&bpe, &ids("a<<b>b")), ["a", "<", "<b>", "b"]);
    assert_eq!(ids(""), Vec::<u32>::new());
}

#[test]
fn added_tokens_sharing_prefixes() {
    // Llama-3 style: many tokens with a common prefix, some a prefix of others
    let mut names: Vec<String> = (0..300).map(|k| format!("<|reserved_{k}|>")).collect();
    names.extend(["<|eot|>", "<|eot|><|eot|>", "<|e", "<|reserved_1|>"].map(String::from));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let bpe = build(&[], &refs, 1, false);
    let ids = |s: &str| bpe.encode(s).unwrap();
    assert_eq!(ids("<|reserved_1|>"), [1001]); // the first of two equal contents
    assert_eq!(ids("<|reserved_12|><|reserved_123|>"), [1012, 1123]);
    assert_eq!(ids("<|reserved_299|>x"), [1299, u32::from(b'x')]);
    // the longest that matches, not the longest that starts to match
    assert_eq!(ids("<|eot|><|eot|>"), [1301]);
    assert_eq!(ids("<|eot|><|eo"), [1300, 1302, u32::from(b'o')]);
    assert_eq!(ids("<|eot"), [1302, u32::from(b'o'), u32::from(b't')]);
    // no token: plain text (bytes, without merges)
    assert_eq!(ids("<|reserved_300|>"), bytes_of("<|reserved_300|>"));
    assert_eq!(ids("<|reserved_3"), bytes_of("<|reserved_3"));
}

#[test]
fn added_tokens_with_many_first_bytes() {
    // one to five distinct first bytes (memchr, memchr2, memchr3, then a table)
    let all = ["<a>", "[b]", "{c}", "(d)", "x!"];
    for n in 1..=all.len() {
        let bpe = build(&[], &all[..n], 1, false);
        let text = "x [b] (d) <a>x!{c} [";
        let mut want = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match all[..n].iter().position(|t| rest.starts_with(t)) {
                Some(k) => {
                    want.push(1000 + k as u32);
                    rest = &rest[all[k].len()..];
                }
                None => {
                    want.push(u32::from(rest.as_bytes()[0]));
                    rest = &rest[1..];
                }
            }
        }
        assert_eq!(bpe.encode(text).unwrap(), want, "{n} added tokens");
    }
}

#[test]
fn added_tokens_split_before_pre_tokenizing() {
    let bpe = build(&[(" ", " "), (" ", "y")], &["<x>"], 1, false);
    // without the added token "  <x>" would be " " + " <x>"; with it, "  " is a segment
    assert_eq!(
        text(&bpe, &bpe.encode("  <x>  y").unwrap()),
        ["  ", "<x>", " ", " y"]
    );
}

/// The ids of single bytes, for expectations.
fn bytes_of(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

#[test]
fn non_ascii_text_is_encoded_by_its_utf8_bytes() {
    // bytes E4 + B8 merge (the first two bytes of many CJK characters); "中" (E4 B8 AD) is an
    // added token, "丸" (E4 B8 B8) is not
    let (e4, b8) = (byte_char(0xe4).to_string(), byte_char(0xb8).to_string());
    let mut vocab: Vec<(String, u32)> = (0..=255u8)
        .map(|b| (byte_char(b).to_string(), u32::from(b)))
        .collect();
    vocab.push((format!("{e4}{b8}"), 300));
    let bpe = Bpe::new(Spec {
        vocab,
        merges: vec![(e4, b8)],
        added: vec![("<é>".into(), 1000), ("中".into(), 1001)],
        max_digits: 1,
        ignore_merges: false,
        normalizer: Normalizer::None,
    })
    .unwrap();
    assert_eq!(bpe.encode("中").unwrap(), [1001]);
    assert_eq!(
        bpe.encode("丸x<é>中").unwrap(),
        [300, 0xb8, u32::from(b'x'), 1000, 1001]
    );
    assert_eq!(bpe.encode("é").unwrap(), bytes_of("é"));
}

#[test]
fn nfc_check() {
    // below U+0300 every character is inert (the check skips the table there)
    assert!((0..0x300).filter_map(char::from_u32).all(nfc_inert));
    for (text, nfc) in [
        ("", true),
        ("plain ASCII", true),
        ("中文，テスト、한국어 Ёж 🙂 \u{3000}", true),
        ("caf\u{e9}", true),
        ("cafe\u{301}", false),
        ("\u{b95}\u{bbe}", true),      // Tamil: "maybe", in NFC
        ("\u{bc6}\u{bbe}", false),     // composes to U+0BCA
        ("a\u{301}\u{316}", false),    // marks out of canonical order
        ("a\u{316}\u{301}", false),    // in order, but a + U+0301 compose
        ("x\u{316}\u{301}", true),     // nothing composes with x
        ("\u{212b}", false),           // singleton: U+00C5
        ("\u{1d15e}", false),          // astral composition exclusion
        ("\u{1f642}\u{1f3fd}", true),  // astral, inert
        ("\u{11131}\u{11127}", false), // Chakma: composes to U+1112E
    ] {
        assert_eq!(is_nfc(text), nfc, "{text:?}");
        assert_eq!(unicode_normalization::is_nfc(text), nfc, "{text:?}");
    }
}

#[test]
fn nfc_normalizer_refuses_only_text_that_is_not_nfc() {
    let nfc = build_with(&[], &["<x>"], 1, false, Normalizer::Nfc);
    assert_eq!(nfc.encode("caf\u{e9}").unwrap(), bytes_of("caf\u{e9}"));
    // decomposed: NFC would compose it
    assert_eq!(nfc.encode("cafe\u{301}"), None);
    // Tamil: a vowel sign NFC only may compose ("Maybe" in the quick check), here in NFC
    assert_eq!(
        nfc.encode("\u{b95}\u{bbe}").unwrap(),
        bytes_of("\u{b95}\u{bbe}")
    );
    // segments are checked apart: a mark right after an added token stays as it is
    assert_eq!(
        nfc.encode("e<x>\u{301}").unwrap(),
        [u32::from(b'e'), 1000, 0xcc, 0x81]
    );
    assert_eq!(nfc.encode("<x>e\u{301}"), None);
    let plain = build(&[], &[], 1, false);
    assert_eq!(plain.encode("e\u{301}").unwrap(), bytes_of("e\u{301}"));
    let ascii_only = build_with(&[], &[], 1, false, Normalizer::AsciiOnly);
    assert_eq!(ascii_only.encode("caf\u{e9}"), None);
    assert_eq!(ascii_only.encode("cafe").unwrap(), bytes_of("cafe"));
}

#[test]
fn digits_follow_max_digits() {
    let merges = [("1", "2"), ("12", "3")];
    let one = build(&merges, &[], 1, false);
    assert_eq!(
        text(&one, &one.encode("1234").unwrap()),
        ["1", "2", "3", "4"]
    );
    let three = build(&merges, &[], 3, false);
    assert_eq!(text(&three, &three.encode("1234").unwrap()), ["123", "4"]);
}

#[test]
fn long_pieces_and_the_cache() {
    let bpe = build(&[("\n", "\n"), ("\n\n", "\n\n")], &[], 1, false);
    let long = "\n".repeat(100_001);
    let ids = bpe.encode(&long).unwrap();
    assert_eq!(ids.len(), 25_001);
    assert_eq!(bpe.cached_pieces(), 0, "long pieces are not cached");
    let words: String = (0..70_000u32)
        .map(|k| {
            let w: String = (0..4)
                .map(|d| (b'a' + (k / 26u32.pow(d) % 26) as u8) as char)
                .collect();
            format!(" {w}")
        })
        .collect();
    let first = bpe.encode(&words).unwrap();
    assert!(bpe.cached_pieces() <= MAX_CACHED_PIECES);
    assert!(bpe.cached_pieces() > 0);
    assert_eq!(bpe.encode(&words).unwrap(), first);
    // pieces up to 256 bytes are cached, within a budget of bytes: 6,000 distinct pieces of
    // 200 bytes, 1,000 bytes each with their 200 ids, fill it about one and a half times
    let fresh = build(&[], &[], 1, false);
    let long: String = (0..6000u32)
        .flat_map(|k| {
            let piece = (0..65).map(move |j| char::from_u32(0x4e00 + (k * 3 + j) % 20000));
            std::iter::once(Some(' ')).chain(piece).flatten()
        })
        .collect();
    fresh.encode(&long).unwrap();
    // each piece: " " + 65 CJK characters, 196 bytes and 196 ids
    let n = fresh.cached_pieces();
    assert!(n > 1000 && n * 980 <= MAX_CACHED_BYTES + 980, "{n} pieces");
}

#[test]
fn decode_as_the_byte_level_decoder() {
    let mut vocab: Vec<(String, u32)> = (0..=255u8)
        .map(|b| (byte_char(b).to_string(), b as u32))
        .collect();
    vocab.push(("Ġhi".into(), 300));
    vocab.push(("a b".into(), 301)); // a space is outside the alphabet: decoded as it is
    vocab.push(("Ġé".into(), 302)); // all in the alphabet: " " + byte 0xE9
    let added = vec![
        ("<|end|>".to_owned(), 400),
        ("né".to_owned(), 401),    // in the alphabet: "n" + byte 0xE9
        ("x ▁".to_owned(), 402),   // outside it: the UTF-8 text
        ("Ġover".to_owned(), 300), // an added token replaces the vocabulary's token
    ];
    let bpe = Bpe::new(Spec {
        vocab,
        merges: Vec::<(String, String)>::new(),
        added,
        max_digits: 1,
        ignore_merges: false,
        normalizer: Normalizer::None,
    })
    .unwrap();
    assert_eq!(bpe.decode_bytes(&[300, 32, 301]).unwrap(), b" over a b");
    assert_eq!(bpe.decode_bytes(&[302, 401]).unwrap(), b" \xe9n\xe9");
    assert_eq!(
        bpe.decode_bytes(&[402, 400]).unwrap(),
        "x ▁<|end|>".as_bytes()
    );
    assert_eq!(bpe.decode_bytes(&[0xc3, 0xa9]).unwrap(), "é".as_bytes());
    assert_eq!(bpe.decode_bytes(&[299]), None);
    assert_eq!(bpe.decode_bytes(&[1 << 30]), None);
    assert_eq!(bpe.decode_bytes(&[]).unwrap(), b"");

    assert!(bpe.spells(&[300, 400], " over<|end|>"));
    assert!(!bpe.spells(&[300], " over<|end|>"));
    // unknown ids are skipped, as tokenizers does
    assert!(bpe.spells(&[299, 300, 5000], " over"));
    // invalid UTF-8 compares as tokenizers' lossy string
    assert!(bpe.spells(&[0xc3], "\u{fffd}"));
    assert!(bpe.spells(&[302], " \u{fffd}"));
    assert!(!bpe.spells(&[0xc3], ""));
    assert!(bpe.spells(&[], ""));
}

#[test]
fn build_errors() {
    let vocab = |n: u16| -> Vec<(String, u32)> {
        (0..n)
            .map(|b| (byte_char(b as u8).to_string(), u32::from(b)))
            .collect()
    };
    let spec = |vocab, merges: Vec<(String, String)>, added: Vec<(String, u32)>, max_digits| Spec {
        vocab,
        merges,
        added,
        max_digits,
        ignore_merges: false,
        normalizer: Normalizer::None,
    };
    let err = |s| Bpe::new(s).err().unwrap();
    assert_eq!(
        err(spec(vocab(100), vec![], vec![], 1)),
        BuildError::MissingByte(100)
    );
    assert_eq!(
        err(spec(vocab(256), vec![("a".into(), "b".into())], vec![], 1)),
        BuildError::MergeOutOfVocab {
            index: 0,
            token: "ab".into()
        }
    );
    assert_eq!(
        err(spec(vocab(256), vec![("a".into(), "zz".into())], vec![], 1)),
        BuildError::MergeOutOfVocab {
            index: 0,
            token: "zz".into()
        }
    );
    assert_eq!(
        err(spec(vocab(256), vec![], vec![(String::new(), 7)], 1)),
        BuildError::EmptyAddedToken(7)
    );
    assert_eq!(
        err(spec(vocab(256), vec![], vec![], 0)),
        BuildError::ZeroDigits
    );
    assert!(err(spec(vocab(0), vec![], vec![], 1))
        .to_string()
        .contains("byte 0x00"));
}
