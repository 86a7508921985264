//! The radix-tree prefix cache: text -> token ids, logprobs, loss mask, worker affinity.
//!
//! A compressed radix tree keyed by text (UTF-8 edges split at character boundaries;
//! positions are counted in characters, i.e. Python `str` indices). Each insert brings the
//! token ids of its text and every token's end offset; a lookup returns the longest cached
//! prefix, cut at the last whole token inside it.
//!
//! Rules:
//! - **Tokenization conflicts: the existing tokens win.** Token data already on a path is
//!   never rewritten. An insert adds its tokens only past the tokens already on its path, and
//!   only if its tokens for the shared part are exactly those on the path (same ids at the
//!   same ends); otherwise its text is stored (and its worker recorded) without new tokens.
//!   New tokens go to the node created for the unmatched rest of the text, or extend the node
//!   where the text ends if that node is a leaf. Re-inserting a text refreshes its LRU clock.
//! - **Budget:** every node costs its token count, or one unit per 4 characters when it holds
//!   no tokens (text-only entries). An insert that takes the total past `max_tokens` evicts
//!   least-recently-used unpinned leaves until the total fits (or only pinned paths remain).
//! - **Pins** protect the path to the deepest node a text reaches, until released (a release
//!   that leaves the cache over budget evicts at once).
//! - **Workers:** an insert with a worker records it on every node of the path; a lookup
//!   reports, per worker, the matched length up to its deepest node on the path.
//!
//! `PrefixCache` is thread-safe: lookups share a read lock (the LRU clock is atomic),
//! inserts, pins and evictions take the write lock.

mod text;
mod tree;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use text::{
    after_nth_comma, char_to_byte, count_chars, ids_csv, ids_json, json_len, token_char_ends,
    write_json, CharEndsError,
};
use tree::Tree;

/// Token data of one insert; `ends` are character offsets into the text.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens<'a> {
    pub ids: &'a [u32],
    pub ends: &'a [u32],
    pub logprobs: Option<&'a [f32]>,
    pub loss_mask: Option<&'a [u8]>,
}

/// Invalid insert arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    LengthMismatch {
        field: &'static str,
        len: usize,
        expected: usize,
    },
    EndsDecrease {
        index: usize,
    },
    EndOutOfRange {
        index: usize,
        end: u32,
        len: usize,
    },
    BadMask {
        index: usize,
    },
    TextTooLong,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::LengthMismatch {
                field,
                len,
                expected,
            } => {
                write!(f, "{field} has {len} items but token_ids has {expected}")
            }
            Error::EndsDecrease { index } => {
                write!(f, "token_ends must be non-decreasing (index {index} is smaller than the one before)")
            }
            Error::EndOutOfRange { index, end, len } => {
                write!(
                    f,
                    "token_ends[{index}] = {end} is past the end of the text (length {len})"
                )
            }
            Error::BadMask { index } => write!(f, "loss_mask[{index}] must be 0 or 1"),
            Error::TextTooLong => write!(
                f,
                "text is too long for the prefix cache (2**32 - 1 characters at most)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The longest cached prefix of a text: a snapshot that shares the token data of the
/// matched nodes (no copy; later evictions do not change it).
#[derive(Clone, Debug, Default)]
pub struct Match {
    /// Matched length in characters at the end of the last whole matched token (0 if none).
    pub length: usize,
    /// Raw matched characters (may be beyond `length`).
    pub matched_chars: usize,
    holds: Vec<Hold>,
    segments: Vec<Segment>,
    token_count: usize,
}

/// A worker's hold on the matched path.
#[derive(Clone, Debug)]
pub(crate) struct Hold {
    pub(crate) worker: u32,
    pub(crate) name: Arc<str>,
    /// Matched characters up to the worker's deepest node on the path.
    pub(crate) chars: usize,
    /// Cache operations since the worker's last insert through that node (the tree stores
    /// the clock of that insert here while walking).
    pub(crate) tick: u64,
}

/// The tokens of one node, immutable once built: ids, absolute end offsets (characters),
/// optional logprobs and loss mask, and the ids' decimal text made on first use (so a
/// match's JSON form is a copy of cached text, not a formatting loop).
#[derive(Debug, Default)]
pub(crate) struct TokenData {
    pub(crate) ids: Box<[u32]>,
    pub(crate) ends: Box<[u32]>,
    pub(crate) logprobs: Option<Box<[f32]>>,
    pub(crate) loss_mask: Option<Box<[u8]>>,
    csv: OnceLock<Box<[u8]>>,
}

impl TokenData {
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// "1,22,333," (see `text::ids_csv`).
    fn csv(&self) -> &[u8] {
        self.csv.get_or_init(|| ids_csv(&self.ids))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.ids.len() * 4
            + self.ends.len() * 4
            + self.logprobs.as_ref().map_or(0, |v| v.len() * 4)
            + self.loss_mask.as_ref().map_or(0, |v| v.len())
            + self.csv.get().map_or(0, |c| c.len())
    }

    /// Tokens `r` (their decimal text is made again when needed).
    pub(crate) fn slice(&self, r: std::ops::Range<usize>) -> TokenData {
        TokenData {
            ids: self.ids[r.clone()].into(),
            ends: self.ends[r.clone()].into(),
            logprobs: self.logprobs.as_ref().map(|v| v[r.clone()].into()),
            loss_mask: self.loss_mask.as_ref().map(|v| v[r].into()),
            csv: OnceLock::new(),
        }
    }

    /// These tokens followed by the insert's tokens `k..` (missing logprobs / masks are zeros).
    pub(crate) fn extended(&self, t: &Tokens<'_>, k: usize) -> TokenData {
        /// Old values then new ones, zeros standing in for a side that has none.
        fn join<T: Copy + Default>(
            old: Option<&[T]>,
            old_len: usize,
            new: Option<&[T]>,
            new_len: usize,
        ) -> Option<Box<[T]>> {
            if old.is_none() && new.is_none() {
                return None;
            }
            let mut v = Vec::with_capacity(old_len + new_len);
            match old {
                Some(o) => v.extend_from_slice(o),
                None => v.resize(old_len, T::default()),
            }
            match new {
                Some(n) => v.extend_from_slice(n),
                None => v.resize(old_len + new_len, T::default()),
            }
            Some(v.into())
        }
        let (old, added) = (self.len(), t.ids.len() - k);
        TokenData {
            ids: [&self.ids[..], &t.ids[k..]].concat().into(),
            ends: [&self.ends[..], &t.ends[k..]].concat().into(),
            logprobs: join(
                self.logprobs.as_deref(),
                old,
                t.logprobs.map(|v| &v[k..]),
                added,
            ),
            loss_mask: join(
                self.loss_mask.as_deref(),
                old,
                t.loss_mask.map(|v| &v[k..]),
                added,
            ),
            csv: OnceLock::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct Segment {
    toks: Arc<TokenData>,
    /// Tokens of `toks` inside the match (a prefix of them).
    n: usize,
}

impl Match {
    pub fn token_count(&self) -> usize {
        self.token_count
    }

    /// (worker, matched characters up to the worker's deepest node on the path).
    pub fn workers(&self) -> impl ExactSizeIterator<Item = (&str, usize)> + '_ {
        self.holds.iter().map(|h| (&*h.name, h.chars))
    }

    /// (worker, cache operations since that worker's last insert through its deepest node on
    /// the path; 0: the lookup itself came right after it).
    pub fn worker_ages(&self) -> impl ExactSizeIterator<Item = (&str, u64)> + '_ {
        self.holds.iter().map(|h| (&*h.name, h.tick))
    }

    /// The matched ids in consecutive parts (one per node).
    pub fn id_parts(&self) -> impl Iterator<Item = &[u32]> + Clone + '_ {
        self.segments.iter().map(|s| &s.toks.ids[..s.n])
    }

    /// The matched tokens' end offsets (characters) in consecutive parts (one per node).
    pub fn end_parts(&self) -> impl Iterator<Item = &[u32]> + Clone + '_ {
        self.segments.iter().map(|s| &s.toks.ends[..s.n])
    }

    /// The matched ids as comma-terminated decimal parts; join them with `write_json`.
    pub fn json_parts(&self) -> impl Iterator<Item = &[u8]> + Clone + '_ {
        self.segments.iter().map(|s| {
            let csv = s.toks.csv();
            if s.n == s.toks.len() {
                csv
            } else {
                &csv[..after_nth_comma(csv, s.n)]
            }
        })
    }

    /// The matched ids as a JSON array (`b"[1,2,3]"`).
    pub fn ids_json(&self) -> Vec<u8> {
        let mut out = vec![0; json_len(self.json_parts())];
        write_json(self.json_parts(), &mut out);
        out
    }

    pub fn ids(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.token_count);
        self.id_parts().for_each(|p| v.extend_from_slice(p));
        v
    }

    pub fn ends(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.token_count);
        self.end_parts().for_each(|p| v.extend_from_slice(p));
        v
    }

    /// The logprob of the matched token `i`, 0.0 where none was recorded.
    pub fn logprob(&self, i: usize) -> Option<f32> {
        let (s, j) = self.locate(i)?;
        Some(s.toks.logprobs.as_ref().map_or(0.0, |v| v[j]))
    }

    /// The loss mask of the matched token `i`, 0 where none was recorded.
    pub fn mask(&self, i: usize) -> Option<u8> {
        let (s, j) = self.locate(i)?;
        Some(s.toks.loss_mask.as_ref().map_or(0, |v| v[j]))
    }

    fn locate(&self, mut i: usize) -> Option<(&Segment, usize)> {
        for s in &self.segments {
            if i < s.n {
                return Some((s, i));
            }
            i -= s.n;
        }
        None
    }

    /// `None` when no matched token carries a logprob (read them as zeros).
    pub fn logprobs(&self) -> Option<Vec<f32>> {
        self.gather(|t| t.logprobs.as_deref(), 0.0)
    }

    /// `None` when no matched token carries a mask (read them as zeros).
    pub fn loss_mask(&self) -> Option<Vec<u8>> {
        self.gather(|t| t.loss_mask.as_deref(), 0)
    }

    fn gather<T: Copy>(&self, get: impl Fn(&TokenData) -> Option<&[T]>, zero: T) -> Option<Vec<T>> {
        self.segments
            .iter()
            .any(|s| get(&s.toks).is_some())
            .then(|| {
                let mut v = Vec::with_capacity(self.token_count);
                for s in &self.segments {
                    match get(&s.toks) {
                        Some(x) => v.extend_from_slice(&x[..s.n]),
                        None => v.resize(v.len() + s.n, zero),
                    }
                }
                v
            })
    }
}

/// Counters and sizes; see `PrefixCache::stats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub nodes: usize,
    pub tokens: u64,
    pub charged: u64,
    pub max_tokens: u64,
    pub bytes: usize,
    pub evictions: u64,
    pub pins: usize,
    pub workers: usize,
    pub lookups: u64,
    pub looked_up_tokens: u64,
    pub matched_tokens: u64,
    pub looked_up_chars: u64,
    pub matched_chars: u64,
}

impl Stats {
    /// Matched tokens / looked-up tokens (0 before any lookup).
    pub fn hit_rate(&self) -> f64 {
        ratio(self.matched_tokens, self.looked_up_tokens)
    }

    /// Matched characters (at whole-token ends) / looked-up characters.
    pub fn char_hit_rate(&self) -> f64 {
        ratio(self.matched_chars, self.looked_up_chars)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Validate token data against a text of `nchars` characters.
pub fn validate(nchars: usize, t: &Tokens<'_>) -> Result<(), Error> {
    if nchars > u32::MAX as usize {
        return Err(Error::TextTooLong);
    }
    let n = t.ids.len();
    if t.ends.len() != n {
        return Err(Error::LengthMismatch {
            field: "token_ends",
            len: t.ends.len(),
            expected: n,
        });
    }
    if let Some(lp) = t.logprobs {
        if lp.len() != n {
            return Err(Error::LengthMismatch {
                field: "logprobs",
                len: lp.len(),
                expected: n,
            });
        }
    }
    if let Some(m) = t.loss_mask {
        if m.len() != n {
            return Err(Error::LengthMismatch {
                field: "loss_mask",
                len: m.len(),
                expected: n,
            });
        }
        if let Some(index) = m.iter().position(|&b| b > 1) {
            return Err(Error::BadMask { index });
        }
    }
    // Branch-free scan first (vectorizes); find the index only on error.
    if t.ends.windows(2).fold(false, |bad, w| bad | (w[1] < w[0])) {
        let index = t.ends.windows(2).position(|w| w[1] < w[0]).unwrap_or(0) + 1;
        return Err(Error::EndsDecrease { index });
    }
    if let Some(&last) = t.ends.last() {
        if last as usize > nchars {
            let index = t
                .ends
                .iter()
                .position(|&e| e as usize > nchars)
                .unwrap_or(n - 1);
            return Err(Error::EndOutOfRange {
                index,
                end: t.ends[index],
                len: nchars,
            });
        }
    }
    Ok(())
}

/// A thread-safe radix-tree prefix cache with a global token budget.
pub struct PrefixCache {
    tree: RwLock<Tree>,
    clock: AtomicU64,
    lookups: AtomicU64,
    looked_up_tokens: AtomicU64,
    matched_tokens: AtomicU64,
    looked_up_chars: AtomicU64,
    matched_chars: AtomicU64,
}

/// Evictions free memory to the allocator at once; when one round frees this much, the
/// allocator is also asked to return free pages to the system (glibc keeps them otherwise).
const TRIM_AFTER_BYTES: usize = 64 << 20;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

impl PrefixCache {
    pub fn new(max_tokens: u64) -> Self {
        PrefixCache {
            tree: RwLock::new(Tree::new(max_tokens)),
            clock: AtomicU64::new(1),
            lookups: AtomicU64::new(0),
            looked_up_tokens: AtomicU64::new(0),
            matched_tokens: AtomicU64::new(0),
            looked_up_chars: AtomicU64::new(0),
            matched_chars: AtomicU64::new(0),
        }
    }

    // A panic cannot happen while a lock is held by design; if one did, the tree's
    // invariants are still those of the last completed step, so a poisoned lock is reused.
    fn read(&self) -> RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Relaxed)
    }

    pub fn max_tokens(&self) -> u64 {
        self.read().max_tokens
    }

    /// Insert `text` with its tokens (may be empty: affinity only) and evict to the budget.
    pub fn insert(
        &self,
        text: &str,
        tokens: Tokens<'_>,
        worker: Option<&str>,
    ) -> Result<(), Error> {
        self.insert_sized(text, count_chars(text.as_bytes()), tokens, worker)
    }

    /// `insert` for a caller that already knows `text`'s length in characters (Python's
    /// `len(str)`), which saves counting them. A wrong `nchars` is a bug of the caller: it
    /// would let token ends past the text in.
    pub fn insert_sized(
        &self,
        text: &str,
        nchars: usize,
        tokens: Tokens<'_>,
        worker: Option<&str>,
    ) -> Result<(), Error> {
        debug_assert_eq!(nchars, count_chars(text.as_bytes()));
        validate(nchars, &tokens)?;
        let mut tree = self.write();
        let tick = self.tick();
        let wk = worker.map(|w| tree.worker_id(w));
        tree.insert(text, &tokens, wk, tick);
        if tree.charged > tree.max_tokens {
            tree.evict();
            self.note_freed(tree);
        }
        Ok(())
    }

    /// After one large round of evictions, hand free heap pages back to the system (outside
    /// the lock). Steady churn at the budget is left alone: the next inserts reuse that memory.
    fn note_freed(&self, mut tree: RwLockWriteGuard<'_, Tree>) {
        let freed = tree.take_freed();
        drop(tree);
        if freed >= TRIM_AFTER_BYTES {
            release_free_memory();
        }
    }

    /// The longest cached prefix of `text` (refreshes the LRU clock of the matched path).
    pub fn lookup(&self, text: &str) -> Match {
        let tick = self.tick();
        let (m, matched_bytes) = self.read().lookup(text, tick);
        let rest = &text.as_bytes()[char_to_byte_at(text, matched_bytes)..];
        let nchars = m.matched_chars + count_chars(rest);
        self.count_lookup(&m, nchars);
        m
    }

    /// `lookup` for a caller that already knows `text`'s length in characters (Python's
    /// `len(str)`; only the hit-rate counters use it).
    pub fn lookup_sized(&self, text: &str, nchars: usize) -> Match {
        debug_assert_eq!(nchars, count_chars(text.as_bytes()));
        let tick = self.tick();
        let (m, _) = self.read().lookup(text, tick);
        self.count_lookup(&m, nchars.max(m.matched_chars));
        m
    }

    fn count_lookup(&self, m: &Match, nchars: usize) {
        // The hit rate counts tokens. The unmatched rest has no tokens yet: estimate it at the
        // matched part's characters per token (4 characters per token if nothing matched).
        let unmatched = nchars.saturating_sub(m.length) as u64;
        let matched = m.token_count() as u64;
        let est = if matched > 0 && m.length > 0 {
            (unmatched * matched).div_ceil(m.length as u64)
        } else {
            unmatched.div_ceil(4)
        };
        self.lookups.fetch_add(1, Relaxed);
        self.matched_tokens.fetch_add(matched, Relaxed);
        self.looked_up_tokens.fetch_add(matched + est, Relaxed);
        self.matched_chars.fetch_add(m.length as u64, Relaxed);
        self.looked_up_chars
            .fetch_add(m.length as u64 + unmatched, Relaxed);
    }

    /// Pin the path `text` reaches; returns the pin (None if nothing matched) and the matched characters.
    pub fn pin(&self, text: &str) -> (Option<u64>, usize) {
        let mut tree = self.write();
        let tick = self.tick();
        tree.pin(text, tick)
    }

    /// Release a pin; false if it was already released (or dropped by `clear`).
    /// Over budget because of pins, a release evicts at once.
    pub fn unpin(&self, pin: u64) -> bool {
        let mut tree = self.write();
        let released = tree.unpin(pin);
        if tree.charged > tree.max_tokens {
            tree.evict();
            self.note_freed(tree);
        }
        released
    }

    /// Forget `worker` on every node; false if it was unknown.
    pub fn remove_worker(&self, worker: &str) -> bool {
        self.write().remove_worker(worker)
    }

    /// Drop every entry, pin and worker (counters are kept).
    pub fn clear(&self) {
        let mut tree = self.write();
        let mut fresh = Tree::new(tree.max_tokens);
        // Pin ids stay unique across a clear, so a stale handle can never release a new pin.
        fresh.evictions = tree.evictions;
        fresh.next_pin = tree.next_pin;
        let old = std::mem::replace(&mut *tree, fresh);
        drop(tree);
        drop(old);
        release_free_memory();
    }

    pub fn stats(&self) -> Stats {
        let tree = self.read();
        Stats {
            nodes: tree.live,
            tokens: tree.tokens,
            charged: tree.charged,
            max_tokens: tree.max_tokens,
            bytes: tree.bytes(),
            evictions: tree.evictions,
            pins: tree.pin_count(),
            workers: tree.worker_count(),
            lookups: self.lookups.load(Relaxed),
            looked_up_tokens: self.looked_up_tokens.load(Relaxed),
            matched_tokens: self.matched_tokens.load(Relaxed),
            looked_up_chars: self.looked_up_chars.load(Relaxed),
            matched_chars: self.matched_chars.load(Relaxed),
        }
    }

    #[cfg(test)]
    fn check(&self) {
        self.read().check();
    }
}

/// `pos` is always a char boundary (the walk stops at one); keep the guard anyway.
fn char_to_byte_at(text: &str, pos: usize) -> usize {
    if text.is_char_boundary(pos) {
        pos
    } else {
        text.len()
    }
}

#[cfg(test)]
mod tests;
