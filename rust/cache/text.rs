//! Byte-level helpers for the tree: longest common prefix, character counting, JSON of ids.

/// Length in bytes of the longest common prefix of `a` and `b`.
#[inline]
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // The common case on a hit is a full match: one memcmp.
    if a == b {
        return n;
    }
    // Otherwise narrow down: 512-byte blocks (memcmp), then 8-byte words, then bytes.
    const BLOCK: usize = 512;
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    while i + 8 <= n {
        let x = word(a, i) ^ word(b, i);
        if x != 0 {
            return i + (x.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Number of characters (Unicode scalar values, i.e. Python `str` indices) in UTF-8 `s`.
#[inline]
pub fn count_chars(s: &[u8]) -> usize {
    // Every byte that is not a continuation byte (0b10xx_xxxx) starts a character.
    // Byte-wide counters per 192-byte block (at most 192 per lane, so no overflow) let the
    // compiler vectorize the loop; longer blocks mean fewer horizontal sums.
    let starts = |b: &u8| u8::from((*b as i8) >= -0x40);
    let mut blocks = s.chunks_exact(192);
    let mut n = 0;
    for block in &mut blocks {
        n += block.iter().map(starts).fold(0u8, u8::wrapping_add) as usize;
    }
    n + blocks
        .remainder()
        .iter()
        .map(|b| starts(b) as usize)
        .sum::<usize>()
}

/// Byte offset of the character at index `chars` of UTF-8 `s` (`s.len()` if past the end).
pub fn char_to_byte(s: &str, chars: usize) -> usize {
    if s.is_ascii() {
        return chars.min(s.len());
    }
    s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i)
}

/// Each token's end offset (characters) in the text that `ids` spell, counted from `start`:
/// `table[id]` is the number of characters whose first UTF-8 byte lies in token `id` (for a
/// byte-level tokenizer, the lead bytes of the token's bytes), so a token's end is `start` plus
/// the characters begun in it and in every token before it.
/// Fails with the index of the first id outside the table, or of the first end past `u32::MAX`.
pub fn token_char_ends<T: Copy + Into<u32>>(
    ids: &[u32],
    table: &[T],
    start: u32,
) -> Result<Vec<u32>, CharEndsError> {
    let n = table.len();
    // Check every id first (a branch-free scan), so the main loop has no early exit.
    if ids.iter().fold(false, |bad, &id| bad | (id as usize >= n)) {
        let index = ids.iter().position(|&id| id as usize >= n).unwrap_or(0);
        return Err(CharEndsError::UnknownId {
            index,
            id: ids[index],
        });
    }
    let count = |id: u32| u64::from(table[(id as usize).min(n - 1)].into());
    let mut end = u64::from(start);
    let out = ids
        .iter()
        .map(|&id| {
            end += count(id);
            end as u32
        })
        .collect();
    // Ends never decrease, so if the last one fits they all do (and were stored exactly).
    if end > u64::from(u32::MAX) {
        let mut e = u64::from(start);
        let index = ids
            .iter()
            .position(|&id| {
                e += count(id);
                e > u64::from(u32::MAX)
            })
            .unwrap_or(0);
        return Err(CharEndsError::Overflow { index });
    }
    Ok(out)
}

/// Why `token_char_ends` failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CharEndsError {
    /// `ids[index] = id` has no entry in the table.
    UnknownId { index: usize, id: u32 },
    /// The end of token `index` is past `u32::MAX`.
    Overflow { index: usize },
}

const DIGITS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Length of `v` in decimal digits.
#[inline]
fn digits(v: u32) -> usize {
    1 + usize::from(v >= 10)
        + usize::from(v >= 100)
        + usize::from(v >= 1_000)
        + usize::from(v >= 10_000)
        + usize::from(v >= 100_000)
        + usize::from(v >= 1_000_000)
        + usize::from(v >= 10_000_000)
        + usize::from(v >= 100_000_000)
        + usize::from(v >= 1_000_000_000)
}

/// The ids in decimal, each followed by a comma (`b"1,22,333,"`): the building block of
/// the JSON form, cut after any token by counting commas.
pub fn ids_csv(ids: &[u32]) -> Box<[u8]> {
    let len = ids.len() + ids.iter().map(|&v| digits(v)).sum::<usize>();
    let mut out = vec![0u8; len];
    let mut pos = 0;
    for &v in ids {
        let n = digits(v);
        let mut end = pos + n;
        let mut v = v;
        while v >= 100 {
            let r = (v % 100) as usize * 2;
            v /= 100;
            out[end - 2..end].copy_from_slice(&DIGITS[r..r + 2]);
            end -= 2;
        }
        if v >= 10 {
            let r = v as usize * 2;
            out[end - 2..end].copy_from_slice(&DIGITS[r..r + 2]);
        } else {
            out[end - 1] = b'0' + v as u8;
        }
        out[pos + n] = b',';
        pos += n + 1;
    }
    out.into()
}

/// Byte offset just after the `n`-th comma of `s` (`s.len()` if there are fewer).
pub fn after_nth_comma(s: &[u8], n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let mut seen = 0;
    let mut base = 0;
    for block in s.chunks(64) {
        let c = block
            .iter()
            .map(|&b| u8::from(b == b','))
            .fold(0u8, u8::wrapping_add) as usize;
        if seen + c >= n {
            for (i, &b) in block.iter().enumerate() {
                if b == b',' {
                    seen += 1;
                    if seen == n {
                        return base + i + 1;
                    }
                }
            }
        }
        seen += c;
        base += block.len();
    }
    s.len()
}

/// Join comma-terminated parts (see `ids_csv`) into a JSON array; `out` must be
/// `json_len(parts)` bytes.
pub fn write_json<'a>(parts: impl IntoIterator<Item = &'a [u8]>, out: &mut [u8]) {
    out[0] = b'[';
    let mut pos = 1;
    for p in parts {
        out[pos..pos + p.len()].copy_from_slice(p);
        pos += p.len();
    }
    // The last comma becomes the closing bracket ("[]" when there are no ids).
    let last = out.len() - 1;
    out[last] = b']';
}

/// Length of the JSON array made of comma-terminated parts.
pub fn json_len<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let n: usize = parts.into_iter().map(<[u8]>::len).sum();
    if n == 0 {
        2
    } else {
        n + 1
    }
}

/// `ids` as a JSON array (`b"[1,2,3]"`).
pub fn ids_json(ids: &[u32]) -> Vec<u8> {
    let csv = ids_csv(ids);
    let mut out = vec![0; json_len([&csv[..]])];
    write_json([&csv[..]], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix() {
        assert_eq!(common_prefix(b"abc", b"abd"), 2);
        assert_eq!(common_prefix(b"abc", b"ab"), 2);
        assert_eq!(common_prefix(b"", b"ab"), 0);
        let a = vec![7u8; 1000];
        for at in [0, 1, 7, 8, 9, 511, 512, 513, 777, 991, 992, 999] {
            let mut b = a.clone();
            b[at] = 1;
            assert_eq!(common_prefix(&a, &b), at);
            assert_eq!(common_prefix(&b[..at + 1], &a), at);
        }
        assert_eq!(common_prefix(&a, &a), 1000);
        assert_eq!(common_prefix(&a[..600], &a), 600);
    }

    #[test]
    fn chars() {
        assert_eq!(count_chars("aé€😀".as_bytes()), 4);
        // Lengths around the 192-byte blocks.
        let text: String = "aé€😀xyz".repeat(700);
        for cut in [0, 1, 15, 191, 192, 193, 383, 384, 4096, 8161, text.len()] {
            let cut = (0..=cut)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            assert_eq!(
                count_chars(&text.as_bytes()[..cut]),
                text[..cut].chars().count()
            );
        }
        assert_eq!(char_to_byte("aé€😀x", 3), 6);
        assert_eq!(char_to_byte("aé€😀x", 5), "aé€😀x".len());
        assert_eq!(char_to_byte("abc", 9), 3);
    }

    #[test]
    fn char_ends() {
        // "é" as two byte-level tokens (lead byte, continuation byte), then "ab".
        let table: [u8; 4] = [1, 0, 2, 0];
        assert_eq!(token_char_ends(&[0, 1, 2], &table, 0), Ok(vec![1, 1, 3]));
        assert_eq!(token_char_ends(&[2, 2], &table, 10), Ok(vec![12, 14]));
        assert_eq!(token_char_ends::<u8>(&[], &table, 5), Ok(vec![]));
        assert_eq!(
            token_char_ends(&[2, 9], &table, 0),
            Err(CharEndsError::UnknownId { index: 1, id: 9 })
        );
        let wide: [u32; 1] = [u32::MAX];
        assert_eq!(token_char_ends(&[0], &wide, 0), Ok(vec![u32::MAX]));
        assert_eq!(
            token_char_ends(&[0, 0], &wide, 0),
            Err(CharEndsError::Overflow { index: 1 })
        );
    }

    #[test]
    fn json() {
        let ids = [0, 9, 10, 99, 100, 12345, 4_294_967_295, 1_000_000];
        let s = String::from_utf8(ids_json(&ids)).unwrap();
        assert_eq!(s, "[0,9,10,99,100,12345,4294967295,1000000]");
        assert_eq!(ids_json(&[]), b"[]");
        assert_eq!(ids_json(&[5]), b"[5]");
        let csv = ids_csv(&[1, 22, 333, 4]);
        assert_eq!(&csv[..], b"1,22,333,4,");
        assert_eq!(after_nth_comma(&csv, 0), 0);
        assert_eq!(after_nth_comma(&csv, 2), 5);
        assert_eq!(after_nth_comma(&csv, 4), csv.len());
        let long = ids_csv(&(0..1000).collect::<Vec<u32>>());
        assert_eq!(
            &long[..after_nth_comma(&long, 777)],
            &ids_csv(&(0..777).collect::<Vec<u32>>())[..]
        );
        let parts: [&[u8]; 3] = [b"1,2,", b"", b"30,"];
        let mut out = vec![0; json_len(parts)];
        write_json(parts, &mut out);
        assert_eq!(out, b"[1,2,30]");
    }
}
