//! The radix tree itself (single-threaded; `PrefixCache` in `mod.rs` adds the locking).
//!
//! Layout: nodes live in one arena (`Vec<Node>`, freed slots reused), addressed by `u32`.
//! Each node holds one edge of UTF-8 text that starts at a character boundary, its absolute
//! start position in characters, and the tokens stored at that node (one shared `TokenData`):
//! ids, absolute end offsets (characters), optional logprobs and loss mask.
//!
//! Token invariant: the tokens of the nodes on a root-to-node path, concatenated, are one
//! contiguous tokenization of a prefix of the path text (token `i` spans
//! `[end[i-1], end[i])`), and every token of a node ends at or before the node's end.
//! A token may end before its node's start (it was attached to the deepest node of the
//! insert that brought it); that only makes a lookup return fewer tokens, never wrong ones.
//! A lookup therefore returns all tokens of the fully matched nodes plus the tokens of the
//! last, partially matched node that end at or before the divergence point.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::text::{common_prefix, count_chars};
use super::{Hold, Match, Segment, TokenData, Tokens};

const ROOT: u32 = 0;

#[derive(Default)]
struct Node {
    /// The edge label (empty for the root and for free slots).
    text: Box<str>,
    /// Absolute position (characters) of the edge's first character.
    start: u32,
    /// Length of the edge in characters.
    nchars: u32,
    parent: u32,
    ascii: bool,
    alive: bool,
    /// Number of live pins on this node.
    pins: u32,
    /// Last access (the cache's operation clock); atomic so lookups can run under a read lock.
    tick: AtomicU64,
    /// (first character of the child's edge, child), sorted by character.
    children: Vec<(char, u32)>,
    /// The node's tokens: immutable once built and shared with `Match` snapshots.
    toks: Arc<TokenData>,
    /// (worker index, clock of the worker's last insert through this node).
    workers: Vec<(u32, u64)>,
}

impl Node {
    /// Budget units: the token count, or for a node without tokens one unit per 4 characters.
    fn weight(&self) -> u64 {
        if self.toks.is_empty() {
            u64::from(self.nchars).div_ceil(4)
        } else {
            self.toks.len() as u64
        }
    }

    fn end(&self) -> u32 {
        self.start + self.nchars
    }

    /// Raise the node's clock to `tick`. A plain load and store, not an atomic max: two
    /// concurrent lookups may leave the smaller of their two ticks, which only makes the LRU
    /// order approximate between them; the value never drops below what a writer last saw,
    /// which is what the eviction heap relies on.
    fn touch(&self, tick: u64) {
        if self.tick.load(Relaxed) < tick {
            self.tick.store(tick, Relaxed);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.text.len()
            + self.toks.heap_bytes()
            + self.children.capacity() * std::mem::size_of::<(char, u32)>()
            + self.workers.capacity() * std::mem::size_of::<(u32, u64)>()
    }
}

/// Hint the CPU to start loading the cache line at `p` (a no-op where unsupported).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where a walk stopped.
struct Walk {
    /// The deepest node reached (ROOT if none).
    last: u32,
    matched_chars: u32,
    matched_bytes: usize,
}

pub(super) struct Tree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Lazy LRU heap of (tick, node): every live unpinned leaf has an entry with a tick at most
    /// its current one; stale entries are re-pushed or dropped when popped.
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    pub max_tokens: u64,
    pub charged: u64,
    pub tokens: u64,
    pub live: usize,
    pub evictions: u64,
    /// Heap bytes freed by evictions since the last `take_freed`.
    freed: usize,
    worker_names: Vec<Option<Arc<str>>>,
    worker_index: HashMap<Arc<str>, u32>,
    free_workers: Vec<u32>,
    pins: HashMap<u64, u32>,
    pub next_pin: u64,
}

impl Tree {
    pub fn new(max_tokens: u64) -> Self {
        let root = Node {
            alive: true,
            ..Node::default()
        };
        Tree {
            nodes: vec![root],
            free: Vec::new(),
            heap: BinaryHeap::new(),
            max_tokens,
            charged: 0,
            tokens: 0,
            live: 0,
            evictions: 0,
            freed: 0,
            worker_names: Vec::new(),
            worker_index: HashMap::new(),
            free_workers: Vec::new(),
            pins: HashMap::new(),
            next_pin: 1,
        }
    }

    #[inline]
    fn node(&self, id: u32) -> &Node {
        &self.nodes[id as usize]
    }

    #[inline]
    fn node_mut(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    fn child(&self, parent: u32, c: char) -> Option<u32> {
        let ch = &self.node(parent).children;
        ch.binary_search_by_key(&c, |e| e.0).ok().map(|i| ch[i].1)
    }

    fn alloc(&mut self, node: Node) -> u32 {
        self.live += 1;
        if let Some(id) = self.free.pop() {
            self.nodes[id as usize] = node;
            id
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    /// Walk `q` from the root; touch every visited node with `tick` and call
    /// `visit(node, tokens of the node inside the matched text, matched position at its end)`.
    #[inline]
    fn walk(&self, q: &str, tick: u64, mut visit: impl FnMut(&Node, usize, u32)) -> Walk {
        let qb = q.as_bytes();
        let mut cur = ROOT;
        let mut pos = 0;
        let mut reach = 0;
        while pos < qb.len() {
            let Some(c) = q[pos..].chars().next() else {
                break;
            };
            let Some(id) = self.child(cur, c) else { break };
            let node = self.node(id);
            // What the next steps read, fetched while the edge is compared.
            prefetch(node.children.as_ptr());
            prefetch(Arc::as_ptr(&node.toks));
            node.touch(tick);
            let edge = node.text.as_bytes();
            let rest = &qb[pos..];
            let mut l = common_prefix(edge, rest);
            if l == edge.len() {
                reach = node.end();
                visit(node, node.toks.len(), reach);
                pos += l;
                cur = id;
                continue;
            }
            // Back up to a character boundary of the query (the edge starts at one).
            while l < rest.len() && (rest[l] as i8) < -0x40 {
                l -= 1;
            }
            let c_in = if node.ascii {
                l
            } else {
                count_chars(&edge[..l])
            };
            reach = node.start + c_in as u32;
            visit(node, node.toks.ends.partition_point(|&e| e <= reach), reach);
            pos += l;
            cur = id;
            break;
        }
        Walk {
            last: cur,
            matched_chars: reach,
            matched_bytes: pos,
        }
    }

    /// Longest cached prefix of `q`. Returns the match and the matched length in bytes.
    pub fn lookup(&self, q: &str, tick: u64) -> (Match, usize) {
        let mut segments = Vec::new();
        let mut token_count = 0;
        let mut length = 0;
        // Each worker's deepest node on the path decides how much of the text it holds, and
        // how long ago (in cache operations) the worker last inserted through that node.
        let mut holds: Vec<Hold> = Vec::new();
        let w = self.walk(q, tick, |n, ntokens, reach| {
            if ntokens > 0 {
                if segments.capacity() == 0 {
                    segments.reserve(16);
                }
                segments.push(Segment {
                    toks: Arc::clone(&n.toks),
                    n: ntokens,
                });
                token_count += ntokens;
                length = n.toks.ends[ntokens - 1];
            }
            for &(wk, t) in &n.workers {
                match holds.iter_mut().find(|h| h.worker == wk) {
                    Some(h) => (h.chars, h.tick) = (reach as usize, t),
                    None => {
                        if let Some(Some(name)) = self.worker_names.get(wk as usize) {
                            holds.push(Hold {
                                worker: wk,
                                name: Arc::clone(name),
                                chars: reach as usize,
                                tick: t,
                            });
                        }
                    }
                }
            }
        });
        for h in &mut holds {
            h.tick = tick.saturating_sub(h.tick);
        }
        let m = Match {
            length: length as usize,
            matched_chars: w.matched_chars as usize,
            holds,
            segments,
            token_count,
        };
        (m, w.matched_bytes)
    }

    pub fn worker_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.worker_index.get(name) {
            return i;
        }
        let name: Arc<str> = Arc::from(name);
        let i = match self.free_workers.pop() {
            Some(i) => {
                self.worker_names[i as usize] = Some(Arc::clone(&name));
                i
            }
            None => {
                self.worker_names.push(Some(Arc::clone(&name)));
                (self.worker_names.len() - 1) as u32
            }
        };
        self.worker_index.insert(name, i);
        i
    }

    fn visit(&mut self, id: u32, worker: Option<u32>, tick: u64) {
        let n = self.node_mut(id);
        n.touch(tick);
        if let Some(wk) = worker {
            match n.workers.iter_mut().find(|e| e.0 == wk) {
                Some(e) => e.1 = tick,
                None => n.workers.push((wk, tick)),
            }
        }
    }

    /// Insert `q` with validated tokens. See `PrefixCache::insert` for the rules.
    pub fn insert(&mut self, q: &str, t: &Tokens<'_>, worker: Option<u32>, tick: u64) {
        let qb = q.as_bytes();
        let mut cur = ROOT;
        let mut pos = 0;
        // Tokens of the insert that agree with the path so far (same ids at the same ends).
        let mut k = 0;
        let mut agree = true;
        while pos < qb.len() {
            let rest = &q[pos..];
            let Some(c) = rest.chars().next() else { break };
            let Some(id) = self.child(cur, c) else {
                let start = if cur == ROOT { 0 } else { self.node(cur).end() };
                let leaf = self.new_leaf(cur, rest, start, tick);
                if agree && k < t.ids.len() {
                    self.add_tokens(leaf, t, k);
                }
                self.visit(leaf, worker, tick);
                return;
            };
            let edge_len = self.node(id).text.len();
            let mut l = common_prefix(self.node(id).text.as_bytes(), rest.as_bytes());
            let id = if l < edge_len {
                while !rest.is_char_boundary(l) {
                    l -= 1;
                }
                self.split(id, l)
            } else {
                id
            };
            if agree {
                let n = &self.node(id).toks;
                let m = n.len();
                if k + m <= t.ids.len()
                    && n.ids[..] == t.ids[k..k + m]
                    && n.ends[..] == t.ends[k..k + m]
                {
                    k += m;
                } else {
                    agree = false;
                }
            }
            self.visit(id, worker, tick);
            pos += l;
            cur = id;
        }
        // The text ends at an existing node: new tokens may only extend a leaf, since the
        // tokens of any child continue from this node's last token end.
        if cur != ROOT && agree && k < t.ids.len() && self.node(cur).children.is_empty() {
            self.add_tokens(cur, t, k);
        }
    }

    fn new_leaf(&mut self, parent: u32, text: &str, start: u32, tick: u64) -> u32 {
        let nchars = count_chars(text.as_bytes()) as u32;
        let first = text.chars().next().unwrap_or('\0');
        let node = Node {
            text: text.into(),
            start,
            nchars,
            parent,
            ascii: text.is_ascii(),
            alive: true,
            tick: AtomicU64::new(tick),
            ..Node::default()
        };
        self.charged += node.weight();
        let id = self.alloc(node);
        let ch = &mut self.node_mut(parent).children;
        let at = ch.partition_point(|e| e.0 < first);
        ch.insert(at, (first, id));
        self.heap.push(Reverse((tick, id)));
        id
    }

    /// Append the insert's tokens `k..` to node `id` (a leaf whose path tokens agree with them).
    fn add_tokens(&mut self, id: u32, t: &Tokens<'_>, k: usize) {
        let n = &mut self.nodes[id as usize];
        let w0 = n.weight();
        n.toks = Arc::new(n.toks.extended(t, k));
        let w1 = n.weight();
        self.charged = self.charged + w1 - w0;
        self.tokens += (t.ids.len() - k) as u64;
    }

    /// Split node `x` after `l` bytes of its edge (a character boundary, `0 < l < len`).
    /// A new node takes the upper part and `x`'s place; `x` keeps the lower part (so pins
    /// and children stay attached to it). Returns the upper node.
    fn split(&mut self, x: u32, l: usize) -> u32 {
        let xn = &mut self.nodes[x as usize];
        let w0 = xn.weight();
        let text = std::mem::take(&mut xn.text);
        let (hi, lo) = text.split_at(l);
        let c = if xn.ascii {
            l as u32
        } else {
            count_chars(hi.as_bytes()) as u32
        };
        let at = xn.start + c;
        let k = xn.toks.ends.partition_point(|&e| e <= at);
        let toks = std::mem::take(&mut xn.toks);
        let upper = Node {
            text: hi.into(),
            start: xn.start,
            nchars: c,
            parent: xn.parent,
            ascii: hi.is_ascii(),
            alive: true,
            pins: 0,
            tick: AtomicU64::new(xn.tick.load(Relaxed)),
            children: vec![(lo.chars().next().unwrap_or('\0'), x)],
            toks: Arc::new(toks.slice(0..k)),
            workers: xn.workers.clone(),
        };
        xn.text = lo.into();
        xn.start = at;
        xn.nchars -= c;
        xn.ascii = lo.is_ascii();
        xn.toks = Arc::new(toks.slice(k..toks.len()));
        let parent = xn.parent;
        let w1 = xn.weight() + upper.weight();
        let u = self.alloc(upper);
        self.node_mut(x).parent = u;
        for e in self.node_mut(parent).children.iter_mut() {
            if e.1 == x {
                e.1 = u;
                break;
            }
        }
        self.charged = self.charged + w1 - w0;
        u
    }

    fn remove_leaf(&mut self, x: u32) {
        let n = std::mem::take(&mut self.nodes[x as usize]);
        self.freed += n.heap_bytes();
        self.charged -= n.weight();
        self.tokens -= n.toks.len() as u64;
        self.free.push(x);
        self.live -= 1;
        self.evictions += 1;
        let parent = n.parent;
        let p = self.node_mut(parent);
        p.children.retain(|e| e.1 != x);
        if p.children.is_empty() {
            p.children = Vec::new();
            if parent != ROOT {
                let t = p.tick.load(Relaxed);
                self.heap.push(Reverse((t, parent)));
            }
        }
    }

    /// Evict least-recently-used unpinned leaves until the budget holds (or nothing is evictable).
    pub fn evict(&mut self) {
        if self.heap.len() > 2 * self.live + 64 {
            self.rebuild_heap();
        }
        let mut held = Vec::new();
        while self.charged > self.max_tokens {
            let Some(Reverse((t, id))) = self.heap.pop() else {
                break;
            };
            let n = self.node(id);
            if !n.alive || !n.children.is_empty() {
                continue;
            }
            let now = n.tick.load(Relaxed);
            if now != t {
                self.heap.push(Reverse((now, id)));
                continue;
            }
            if n.pins > 0 {
                held.push(Reverse((t, id)));
                continue;
            }
            self.remove_leaf(id);
        }
        self.heap.extend(held);
    }

    fn rebuild_heap(&mut self) {
        let entries: Vec<_> = (1..self.nodes.len() as u32)
            .filter(|&i| {
                let n = self.node(i);
                n.alive && n.children.is_empty()
            })
            .map(|i| Reverse((self.node(i).tick.load(Relaxed), i)))
            .collect();
        self.heap = BinaryHeap::from(entries);
    }

    /// Pin the deepest node `q` reaches (nothing if `q` matches nothing).
    /// Returns the pin id and the matched length in characters.
    pub fn pin(&mut self, q: &str, tick: u64) -> (Option<u64>, usize) {
        let w = self.walk(q, tick, |_, _, _| {});
        if w.last == ROOT {
            return (None, 0);
        }
        let node = w.last;
        self.node_mut(node).pins += 1;
        let pin = self.next_pin;
        self.next_pin += 1;
        self.pins.insert(pin, node);
        (Some(pin), w.matched_chars as usize)
    }

    pub fn unpin(&mut self, pin: u64) -> bool {
        match self.pins.remove(&pin) {
            Some(node) => {
                let n = self.node_mut(node);
                n.pins = n.pins.saturating_sub(1);
                true
            }
            None => false,
        }
    }

    /// Bytes freed by evictions since the last call.
    pub fn take_freed(&mut self) -> usize {
        std::mem::take(&mut self.freed)
    }

    pub fn pin_count(&self) -> usize {
        self.pins.len()
    }

    pub fn remove_worker(&mut self, name: &str) -> bool {
        let Some(i) = self.worker_index.remove(name) else {
            return false;
        };
        for n in self.nodes.iter_mut().filter(|n| n.alive) {
            n.workers.retain(|e| e.0 != i);
        }
        self.worker_names[i as usize] = None;
        self.free_workers.push(i);
        true
    }

    pub fn worker_count(&self) -> usize {
        self.worker_index.len()
    }

    /// Heap and arena bytes held by the tree (an estimate that ignores allocator overhead).
    pub fn bytes(&self) -> usize {
        let arena = self.nodes.capacity() * std::mem::size_of::<Node>();
        let nodes: usize = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(Node::heap_bytes)
            .sum();
        arena
            + nodes
            + self.free.capacity() * 4
            + self.heap.capacity() * std::mem::size_of::<Reverse<(u64, u32)>>()
    }

    /// Check the structural invariants (tests only).
    #[cfg(test)]
    pub fn check(&self) {
        let mut charged = 0;
        let mut tokens = 0;
        let mut live = 0;
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            if !n.alive {
                continue;
            }
            live += 1;
            charged += n.weight();
            tokens += n.toks.len() as u64;
            assert!(!n.text.is_empty());
            assert_eq!(n.nchars as usize, n.text.chars().count());
            let p = self.node(n.parent);
            assert!(p.alive);
            let first = n.text.chars().next().unwrap();
            assert!(p.children.contains(&(first, i as u32)));
            let pend = if n.parent == ROOT { 0 } else { p.end() };
            assert_eq!(n.start, pend);
            let t = &n.toks;
            assert_eq!(t.ids.len(), t.ends.len());
            assert!(t.ends.windows(2).all(|w| w[0] <= w[1]));
            assert!(t.ends.iter().all(|&e| e <= n.end()));
            if let Some(lp) = &t.logprobs {
                assert_eq!(lp.len(), t.ids.len());
            }
            if let Some(m) = &t.loss_mask {
                assert_eq!(m.len(), t.ids.len());
            }
            assert!(p.children.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert_eq!(charged, self.charged);
        assert_eq!(tokens, self.tokens);
        assert_eq!(live, self.live);
    }
}
