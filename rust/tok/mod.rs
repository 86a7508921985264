//! Byte-level BPE (GPT-2 / Qwen / Llama-3 style) with the ids of Hugging Face `tokenizers`.
//!
//! [`Bpe::encode`] runs the whole pipeline those tokenizers apply to a text: split at added
//! tokens (leftmost match, the longest one where several start at the same place), check
//! each segment against the normalizer (see [`Normalizer`]), split it with the pre-tokenizer
//! regex (a hand-written scanner, see [`split`]), and run BPE on the UTF-8 bytes of each
//! piece (lowest-rank merge first, leftmost on ties, as tokenizers does), with a bounded cache
//! of piece -> ids. Where the normalizer would change a segment, `encode` gives `None`: the
//! caller uses tokenizers for that text.
//!
//! [`Bpe::decode_into`] is the other direction for any ids: the bytes tokenizers'
//! `ByteLevel` decoder produces (before its lossy UTF-8 conversion), which
//! [`Bpe::spells`] compares with a text.

mod classes;
pub mod split;

use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::{Mutex, OnceLock};

use unicode_normalization::IsNormalized;

/// Pieces up to this many bytes are cached (as tokenizers' own cache; a run of CJK text
/// without punctuation is one piece, often longer than 64 bytes).
const MAX_CACHED_PIECE: usize = 256;
/// The cache is cleared when it reaches this many pieces, or this many bytes of pieces
/// and ids.
const MAX_CACHED_PIECES: usize = 1 << 16;
const MAX_CACHED_BYTES: usize = 4 << 20;

const fn printable(b: usize) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Byte -> code point of its character (see [`byte_char`]).
static BYTE_CHAR: [u16; 256] = {
    let mut t = [0u16; 256];
    let (mut b, mut n) = (0, 0);
    while b < 256 {
        t[b] = if printable(b) {
            b as u16
        } else {
            n += 1;
            0xFF + n
        };
        b += 1;
    }
    t
};

/// Code point -> byte + 1 (0: not in the alphabet), for code points below 0x144.
static CHAR_BYTE: [u16; 0x144] = {
    let mut t = [0u16; 0x144];
    let mut b = 0;
    while b < 256 {
        t[BYTE_CHAR[b] as usize] = b as u16 + 1;
        b += 1;
    }
    t
};

/// GPT-2's `bytes_to_unicode`: the character byte-level BPE writes for each byte value.
/// Printable Latin-1 bytes stand for themselves, the others (controls, space, 0x7F-0xA0,
/// 0xAD) for U+0100 onwards, in byte order.
pub fn byte_char(b: u8) -> char {
    char::from_u32(u32::from(BYTE_CHAR[b as usize])).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte a character of the byte-level alphabet stands for.
pub fn char_byte(c: char) -> Option<u8> {
    match CHAR_BYTE.get(c as usize) {
        Some(&v) if v != 0 => Some((v - 1) as u8),
        _ => None,
    }
}

/// Why a tokenizer cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// A byte's character (as `bytes_to_unicode` writes it) is not in the vocabulary.
    MissingByte(u8),
    /// A merge names a token that is not in the vocabulary (or merges into one that is not).
    MergeOutOfVocab { index: usize, token: String },
    /// An added token with empty content.
    EmptyAddedToken(u32),
    /// `max_digits` must be at least 1.
    ZeroDigits,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::MissingByte(b) => write!(
                f,
                "the vocabulary has no token for byte 0x{b:02x} ({:?})",
                byte_char(*b)
            ),
            BuildError::MergeOutOfVocab { index, token } => {
                write!(f, "merges[{index}]: {token:?} is not in the vocabulary")
            }
            BuildError::EmptyAddedToken(id) => write!(f, "added token {id} has empty content"),
            BuildError::ZeroDigits => write!(f, "max_digits must be at least 1"),
        }
    }
}

impl std::error::Error for BuildError {}

/// The tokenizer's normalizer, as far as [`Bpe::encode`] is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalizer {
    /// None: every text is encoded.
    None,
    /// Unicode NFC (Qwen2/3): a segment (text between added tokens) that is in NFC is encoded
    /// as it is; `encode` gives None for text with a segment that is not (see [`Bpe::encode`]).
    Nfc,
    /// Another normalization that leaves ASCII unchanged (NFD, NFKC, NFKD): `encode` gives
    /// None for text that is not all ASCII.
    AsciiOnly,
}

/// What a byte-level BPE tokenizer is made of (the strings as in tokenizer.json, i.e. in
/// the byte-level alphabet for vocabulary and merges, plain text for added tokens).
pub struct Spec {
    /// Token -> id.
    pub vocab: Vec<(String, u32)>,
    /// Merges in rank order.
    pub merges: Vec<(String, String)>,
    /// Added tokens: content -> id (they override the vocabulary's token for their id).
    pub added: Vec<(String, u32)>,
    /// `N` of the pre-tokenizer's `\p{N}{1,N}` (1 for Qwen2/3, 3 for Llama-3).
    pub max_digits: usize,
    /// tokenizers' `ignore_merges`: a piece that is a whole vocabulary token is that token.
    pub ignore_merges: bool,
    /// The tokenizer's normalizer.
    pub normalizer: Normalizer,
}

/// Byte-level BPE, and decoding of any ids (see the module docs).
pub struct Bpe {
    /// Id of each byte's token.
    byte_ids: [u32; 256],
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// With `ignore_merges`: vocabulary tokens by their bytes.
    whole: Option<HashMap<Box<[u8]>, u32>>,
    /// Added tokens.
    added: AddedTrie,
    /// Which bytes start an added token: a table, and the list.
    added_first: [bool; 256],
    added_starts: Vec<u8>,
    max_digits: usize,
    normalizer: Normalizer,
    /// Decoding: each id's bytes are `bytes[spans[id].0..][..spans[id].1]`; absent ids
    /// have length `u32::MAX`.
    spans: Vec<(u32, u32)>,
    bytes: Vec<u8>,
    cache: Mutex<PieceCache>,
}

/// Piece bytes -> ids, and the bytes they take.
#[derive(Default)]
struct PieceCache {
    map: HashMap<Box<[u8]>, Box<[u32]>>,
    bytes: usize,
}

const ABSENT: (u32, u32) = (0, u32::MAX);

/// Added tokens as a byte trie, so that the longest one at a position is found in one walk
/// over the text (Llama-3 has 256 added tokens, all starting with `<|`).
struct AddedTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    /// (byte, child node), sorted by byte.
    next: Vec<(u8, u32)>,
    /// The token that ends here.
    id: Option<u32>,
}

impl TrieNode {
    fn child(&self, b: u8) -> Result<usize, usize> {
        self.next.binary_search_by_key(&b, |&(c, _)| c)
    }
}

impl AddedTrie {
    /// Where several tokens have the same content, the first one given wins.
    fn new(tokens: &[(String, u32)]) -> AddedTrie {
        let mut nodes = vec![TrieNode::default()];
        for (content, id) in tokens {
            let mut at = 0;
            for &b in content.as_bytes() {
                at = match nodes[at].child(b) {
                    Ok(k) => nodes[at].next[k].1 as usize,
                    Err(k) => {
                        let new = nodes.len();
                        nodes[at].next.insert(k, (b, new as u32));
                        nodes.push(TrieNode::default());
                        new
                    }
                };
            }
            nodes[at].id.get_or_insert(*id);
        }
        AddedTrie { nodes }
    }

    /// The longest token `s` starts with, as (its length, its id).
    fn longest(&self, s: &[u8]) -> Option<(usize, u32)> {
        let (mut at, mut found) = (0, None);
        for (k, &b) in s.iter().enumerate() {
            let node = &self.nodes[at];
            match node.child(b) {
                Ok(i) => at = node.next[i].1 as usize,
                Err(_) => break,
            }
            if let Some(id) = self.nodes[at].id {
                found = Some((k + 1, id));
            }
        }
        found
    }
}

/// Whether a character leaves any text around it in NFC: canonical combining class 0 and
/// NFC quick check "yes" (it never composes with what precedes it nor needs reordering).
fn nfc_inert(c: char) -> bool {
    unicode_normalization::char::canonical_combining_class(c) == 0
        && unicode_normalization::is_nfc_quick(std::iter::once(c)) == IsNormalized::Yes
}

/// [`nfc_inert`] for the Basic Multilingual Plane, one bit per code point.
fn nfc_inert_bmp() -> &'static [u64; 1024] {
    static TABLE: OnceLock<Box<[u64; 1024]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0u64; 1024]);
        for c in (0..0x10000).filter_map(char::from_u32) {
            if nfc_inert(c) {
                t[c as usize >> 6] |= 1 << (c as u32 & 63);
            }
        }
        t
    })
}

/// Whether `text` is in NFC: a table look-up per character for text of inert characters
/// (all but a few scripts' combining marks), the full check (quick check, then normalizing
/// if that says "maybe") otherwise.
fn is_nfc(text: &str) -> bool {
    if text.is_ascii() {
        return true;
    }
    let bmp = nfc_inert_bmp();
    let inert = |c: char| {
        let cp = c as u32;
        if cp < 0x10000 {
            cp < 0x300 || bmp[cp as usize >> 6] >> (cp & 63) & 1 != 0
        } else {
            nfc_inert(c)
        }
    };
    text.chars().all(inert) || unicode_normalization::is_nfc(text)
}

/// A token's characters mapped back to bytes, or None if one of them is outside the
/// byte-level alphabet.
fn alphabet_bytes(token: &str) -> Option<Vec<u8>> {
    token.chars().map(char_byte).collect()
}

/// Appends what tokenizers' `ByteLevel` decoder makes of a token: its bytes in the
/// byte-level alphabet, or its UTF-8 bytes as they are if it is not written in that alphabet.
fn push_token_bytes(token: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in token.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

impl Bpe {
    pub fn new(spec: Spec) -> Result<Bpe, BuildError> {
        if spec.max_digits == 0 {
            return Err(BuildError::ZeroDigits);
        }
        for (content, id) in &spec.added {
            if content.is_empty() {
                return Err(BuildError::EmptyAddedToken(*id));
            }
        }

        // Decoding table: vocabulary tokens, then added tokens over them.
        let n_ids = spec
            .vocab
            .iter()
            .chain(&spec.added)
            .map(|(_, id)| *id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut spans = vec![ABSENT; n_ids];
        let mut bytes = Vec::new();
        for (token, id) in spec.vocab.iter().chain(&spec.added) {
            let start = bytes.len();
            push_token_bytes(token, &mut bytes);
            spans[*id as usize] = (start as u32, (bytes.len() - start) as u32);
        }

        let whole = spec.ignore_merges.then(|| {
            spec.vocab
                .iter()
                .filter_map(|(s, id)| Some((alphabet_bytes(s)?.into_boxed_slice(), *id)))
                .collect()
        });

        let vocab: HashMap<String, u32> = spec.vocab.into_iter().collect();
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            let mut buf = [0u8; 4];
            let key: &str = byte_char(b).encode_utf8(&mut buf);
            byte_ids[b as usize] = *vocab.get(key).ok_or(BuildError::MissingByte(b))?;
        }

        // As tokenizers: a later duplicate of a merge replaces the earlier one.
        let mut merges = HashMap::with_capacity(spec.merges.len());
        let mut joined = String::new();
        for (index, (a, b)) in spec.merges.iter().enumerate() {
            let id = |t: &str| {
                vocab
                    .get(t)
                    .copied()
                    .ok_or_else(|| BuildError::MergeOutOfVocab {
                        index,
                        token: t.to_owned(),
                    })
            };
            let (left, right) = (id(a)?, id(b)?);
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let rank = u32::try_from(index).unwrap_or(u32::MAX);
            merges.insert((left, right), (rank, id(&joined)?));
        }

        let added = AddedTrie::new(&spec.added);
        let mut added_first = [false; 256];
        for (c, _) in &spec.added {
            added_first[c.as_bytes()[0] as usize] = true;
        }
        let added_starts = (0..=255u8).filter(|&b| added_first[b as usize]).collect();
        if spec.normalizer == Normalizer::Nfc {
            nfc_inert_bmp(); // built here (about 2 ms, once per process), not on the first request
        }

        Ok(Bpe {
            byte_ids,
            merges,
            whole,
            added,
            added_first,
            added_starts,
            max_digits: spec.max_digits,
            normalizer: spec.normalizer,
            spans,
            bytes,
            cache: Mutex::new(PieceCache::default()),
        })
    }

    /// The ids of `text`, or None where the normalizer would change it: with
    /// [`Normalizer::Nfc`], a segment between added tokens that is not in NFC (the segments
    /// are normalized separately, as tokenizers does); with [`Normalizer::AsciiOnly`], text
    /// that is not all ASCII.
    ///
    /// NFC needs no normalizing here, only the check: text in NFC by the tables of the
    /// `unicode-normalization` crate (Unicode 18) is left unchanged by tokenizers' older ones
    /// (Unicode 9: normalized text stays normalized in later versions, and a character an
    /// older version does not know is an inert starter to it). Normalizing would have to
    /// reproduce tokenizers' Unicode 9 tables instead.
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        let s = text.as_bytes();
        if self.normalizer == Normalizer::AsciiOnly && !s.is_ascii() {
            return None;
        }
        let mut ids = Vec::with_capacity(s.len() / 3 + 1);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Added tokens, leftmost first, the longest where several start at the same place.
        let (mut pos, mut i) = (0, 0);
        while let Some(j) = self.next_added_start(s, i) {
            match self.added.longest(&s[j..]) {
                Some((len, id)) => {
                    self.segment(&text[pos..j], &mut cache, &mut ids)?;
                    ids.push(id);
                    pos = j + len;
                    i = pos;
                }
                None => i = j + 1,
            }
        }
        self.segment(&text[pos..], &mut cache, &mut ids)?;
        Some(ids)
    }

    /// The first position from `from` on where an added token may start.
    fn next_added_start(&self, s: &[u8], from: usize) -> Option<usize> {
        let hay = s.get(from..)?;
        let k = match *self.added_starts.as_slice() {
            [] => None,
            [a] => memchr::memchr(a, hay),
            [a, b] => memchr::memchr2(a, b, hay),
            [a, b, c] => memchr::memchr3(a, b, c, hay),
            _ => hay
                .iter()
                .position(|&b| self.added_first.get(b as usize) == Some(&true)),
        };
        k.map(|k| from + k)
    }

    /// Number of pieces in the cache.
    pub fn cached_pieces(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// Appends the ids of the text between two added tokens, or gives None if the normalizer
    /// would change it.
    fn segment(&self, seg: &str, cache: &mut PieceCache, ids: &mut Vec<u32>) -> Option<()> {
        if self.normalizer == Normalizer::Nfc && !is_nfc(seg) {
            return None;
        }
        let bytes = seg.as_bytes();
        for (a, b) in split::pieces(seg, self.max_digits) {
            let piece = &bytes[a..b];
            if let [byte] = piece {
                // One byte is its own token.
                ids.push(self.byte_ids[*byte as usize]);
                continue;
            }
            if let Some(got) = cache.map.get(piece) {
                ids.extend_from_slice(got);
                continue;
            }
            let start = ids.len();
            self.bpe(piece, ids);
            if piece.len() <= MAX_CACHED_PIECE {
                let got = &ids[start..];
                if cache.map.len() >= MAX_CACHED_PIECES || cache.bytes >= MAX_CACHED_BYTES {
                    cache.map.clear();
                    cache.bytes = 0;
                }
                if let Entry::Vacant(e) = cache.map.entry(Box::from(piece)) {
                    cache.bytes += piece.len() + 4 * got.len();
                    e.insert(Box::from(got));
                }
            }
        }
        Some(())
    }

    /// BPE of one piece's bytes, appended to `out`.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(id) = self.whole.as_ref().and_then(|w| w.get(piece)) {
            out.push(*id);
            return;
        }
        let n = piece.len();
        // Symbols as a linked list over the piece's bytes; a merged-away symbol gets `gone`.
        const NONE: usize = usize::MAX;
        let mut id: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<usize> = (1..=n).map(|j| if j < n { j } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|j| j.wrapping_sub(1)).collect();
        let mut gone = vec![false; n];
        // Min-heap of (rank, position, merged id); stale entries are skipped when popped.
        let mut heap = BinaryHeap::with_capacity(n);
        let push = |heap: &mut BinaryHeap<_>, pos: usize, l: u32, r: u32| {
            if let Some(&(rank, new)) = self.merges.get(&(l, r)) {
                heap.push(std::cmp::Reverse((rank, pos, new)));
            }
        };
        for j in 0..n.saturating_sub(1) {
            push(&mut heap, j, id[j], id[j + 1]);
        }
        while let Some(std::cmp::Reverse((_, pos, new))) = heap.pop() {
            let r = next[pos];
            if gone[pos] || r == NONE {
                continue;
            }
            // Still the same pair? (Its merged id identifies it: see tokenizers' `merge_all`.)
            if self.merges.get(&(id[pos], id[r])).map(|m| m.1) != Some(new) {
                continue;
            }
            id[pos] = new;
            gone[r] = true;
            let rn = next[r];
            next[pos] = rn;
            if rn != NONE {
                prev[rn] = pos;
                push(&mut heap, pos, new, id[rn]);
            }
            let p = prev[pos];
            if p != NONE {
                push(&mut heap, p, id[p], new);
            }
        }
        let mut j = 0;
        while j != NONE {
            out.push(id[j]);
            j = next[j];
        }
    }

    /// The bytes of the ids as tokenizers' `ByteLevel` decoder gives them (before it turns
    /// them into a string), appended to `out`. As in `Tokenizer.decode`, ids that are
    /// neither in the vocabulary nor added tokens are skipped; the return value is false
    /// if there were any.
    pub fn decode_into(&self, ids: &[u32], out: &mut Vec<u8>) -> bool {
        let mut all_known = true;
        for &id in ids {
            match self.spans.get(id as usize) {
                Some(&(start, len)) if len != u32::MAX => {
                    let start = start as usize;
                    out.extend_from_slice(&self.bytes[start..start + len as usize]);
                }
                _ => all_known = false,
            }
        }
        all_known
    }

    /// The bytes of the ids, or None if one of them is unknown.
    pub fn decode_bytes(&self, ids: &[u32]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.decode_into(ids, &mut out).then_some(out)
    }

    /// Whether `tokenizers`' `decode(ids, skip_special_tokens=False)` with a `ByteLevel`
    /// decoder gives exactly `text` (unknown ids skipped, invalid UTF-8 replaced by U+FFFD
    /// as tokenizers does).
    pub fn spells(&self, ids: &[u32], text: &str) -> bool {
        let mut out = Vec::with_capacity(text.len());
        self.decode_into(ids, &mut out);
        out == text.as_bytes()
            || (std::str::from_utf8(&out).is_err() && String::from_utf8_lossy(&out) == text)
    }
}

#[cfg(test)]
mod tests;
