use std::collections::HashMap;
use std::sync::Arc;

use super::*;

/// A toy tokenizer: interns token strings as ids so a match can be decoded back to text.
#[derive(Default)]
struct Vocab {
    ids: HashMap<String, u32>,
    texts: Vec<String>,
}

impl Vocab {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        self.texts.push(s.to_owned());
        let i = (self.texts.len() - 1) as u32;
        self.ids.insert(s.to_owned(), i);
        i
    }

    /// Split before every space (" world" is one token); ends are character offsets.
    fn words(&mut self, text: &str) -> (Vec<u32>, Vec<u32>) {
        self.cut(text, |prev, c| prev.is_some() && c == ' ')
    }

    /// One token per character.
    fn chars(&mut self, text: &str) -> (Vec<u32>, Vec<u32>) {
        self.cut(text, |prev, _| prev.is_some())
    }

    fn cut(
        &mut self,
        text: &str,
        boundary: impl Fn(Option<char>, char) -> bool,
    ) -> (Vec<u32>, Vec<u32>) {
        let chars: Vec<char> = text.chars().collect();
        let mut ids = Vec::new();
        let mut ends = Vec::new();
        let mut start = 0;
        for i in 0..chars.len() {
            let prev = if i > start { Some(chars[i - 1]) } else { None };
            if boundary(prev, chars[i]) {
                ids.push(self.id(&chars[start..i].iter().collect::<String>()));
                ends.push(i as u32);
                start = i;
            }
        }
        if start < chars.len() {
            ids.push(self.id(&chars[start..].iter().collect::<String>()));
            ends.push(chars.len() as u32);
        }
        (ids, ends)
    }

    fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.texts[i as usize].as_str())
            .collect()
    }
}

fn prefix(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

fn toks<'a>(ids: &'a [u32], ends: &'a [u32]) -> Tokens<'a> {
    Tokens {
        ids,
        ends,
        logprobs: None,
        loss_mask: None,
    }
}

fn insert_words(c: &PrefixCache, v: &mut Vocab, text: &str, worker: Option<&str>) {
    let (ids, ends) = v.words(text);
    c.insert(text, toks(&ids, &ends), worker).unwrap();
    c.check();
}

#[test]
fn exact_and_prefix_match() {
    let c = PrefixCache::new(1_000);
    let mut v = Vocab::default();
    insert_words(&c, &mut v, "hello big world", None);
    let m = c.lookup("hello big world");
    assert_eq!((m.length, m.matched_chars), (15, 15));
    assert_eq!(v.decode(&m.ids()), "hello big world");
    // Longer query: everything cached matches.
    let m = c.lookup("hello big world, again");
    assert_eq!((m.length, m.matched_chars, m.ids().len()), (15, 15, 3));
    // Divergence inside a token: only whole tokens come back.
    let m = c.lookup("hello big wonder");
    assert_eq!((m.length, m.matched_chars), (9, 12));
    assert_eq!(v.decode(&m.ids()), "hello big");
    let m = c.lookup("nothing");
    assert_eq!((m.length, m.matched_chars, m.ids().len()), (0, 0, 0));
    assert_eq!(c.lookup("").ids().len(), 0);
}

#[test]
fn split_keeps_tokens_whole() {
    let c = PrefixCache::new(1_000);
    let mut v = Vocab::default();
    insert_words(&c, &mut v, "the cat sat on the mat", None);
    insert_words(&c, &mut v, "the cat sang", None);
    insert_words(&c, &mut v, "the dog", None);
    assert_eq!(c.stats().nodes, 5);
    for q in [
        "the cat sat on the mat",
        "the cat sang",
        "the dog",
        "the cat",
        "the cats",
        "the cat s",
    ] {
        let m = c.lookup(q);
        let got = v.decode(&m.ids());
        assert_eq!(got, prefix(q, m.length), "{q}");
        assert!(m.length <= m.matched_chars);
    }
    assert_eq!(
        v.decode(&c.lookup("the cat sang a song").ids()),
        "the cat sang"
    );
    assert_eq!(v.decode(&c.lookup("the cat sa").ids()), "the cat");
    assert_eq!(c.lookup("the cat sa").matched_chars, 10);
}

#[test]
fn multibyte_divergence_inside_a_character_family() {
    // é (C3 A9) and è (C3 A8) share their first UTF-8 byte.
    let c = PrefixCache::new(1_000);
    let mut v = Vocab::default();
    let a = "café é😀 crème";
    let b = "café è😀 brûlée";
    let (ia, ea) = v.chars(a);
    let (ib, eb) = v.chars(b);
    c.insert(a, toks(&ia, &ea), Some("w1")).unwrap();
    c.insert(b, toks(&ib, &eb), Some("w2")).unwrap();
    c.check();
    let m = c.lookup(a);
    assert_eq!(m.length, a.chars().count());
    assert_eq!(v.decode(&m.ids()), a);
    let m = c.lookup(b);
    assert_eq!(v.decode(&m.ids()), b);
    let m = c.lookup("café ê");
    assert_eq!((m.length, m.matched_chars), (5, 5));
    let mut w = m.workers().collect::<Vec<_>>();
    w.sort();
    assert_eq!(w, vec![("w1", 5), ("w2", 5)]);
    let m = c.lookup("café é😀 x");
    assert_eq!(m.matched_chars, 8);
    let mut w = m.workers().collect::<Vec<_>>();
    w.sort();
    assert_eq!(w, vec![("w1", 8), ("w2", 5)]);
}

#[test]
fn tokens_shared_by_one_end_and_empty_tokens() {
    // Byte-level BPE: several tokens can end at the same character (one emoji = 2 tokens).
    let c = PrefixCache::new(1_000);
    let text = "a😀b";
    c.insert(text, toks(&[1, 2, 3, 4, 5], &[0, 1, 2, 2, 3]), None)
        .unwrap();
    c.check();
    assert_eq!(c.lookup(text).ids(), vec![1, 2, 3, 4, 5]);
    assert_eq!(c.lookup("a😀c").ids(), vec![1, 2, 3, 4]);
    assert_eq!(c.lookup("a😁").ids(), vec![1, 2]);
    assert_eq!(c.lookup("a😁").length, 1);
}

#[test]
fn existing_tokenization_wins() {
    let c = PrefixCache::new(1_000);
    c.insert("hello world", toks(&[1, 2], &[5, 11]), None)
        .unwrap();
    // Same text, different ids: kept as is.
    c.insert("hello world", toks(&[7, 8, 9], &[3, 5, 11]), None)
        .unwrap();
    c.check();
    assert_eq!(c.lookup("hello world").ids(), vec![1, 2]);
    // Extension that agrees on the shared part: its new tokens are added.
    c.insert("hello world again", toks(&[1, 2, 3], &[5, 11, 17]), None)
        .unwrap();
    assert_eq!(c.lookup("hello world again").ids(), vec![1, 2, 3]);
    // Extension that disagrees: the text is stored, its tokens are not.
    c.insert(
        "hello world peace",
        toks(&[7, 8, 9, 4], &[3, 5, 11, 17]),
        Some("w"),
    )
    .unwrap();
    c.check();
    let m = c.lookup("hello world peace");
    assert_eq!((m.ids(), m.length, m.matched_chars), (vec![1, 2], 11, 17));
    assert_eq!(m.workers().collect::<Vec<_>>(), vec![("w", 17)]);
    // A later agreeing insert below the token-less node still attaches its tokens.
    c.insert(
        "hello world peace now",
        toks(&[1, 2, 4, 5], &[5, 11, 17, 21]),
        None,
    )
    .unwrap();
    c.check();
    assert_eq!(c.lookup("hello world peace now").ids(), vec![1, 2, 4, 5]);
    assert_eq!(c.lookup("hello world peace").ids(), vec![1, 2]);
}

#[test]
fn text_mode_then_tokens() {
    let c = PrefixCache::new(1_000);
    c.insert("system prompt", Tokens::default(), Some("w1"))
        .unwrap();
    assert_eq!(c.stats().tokens, 0);
    assert_eq!(c.stats().charged, 4);
    let m = c.lookup("system prompt");
    assert_eq!((m.length, m.matched_chars), (0, 13));
    assert_eq!(m.workers().collect::<Vec<_>>(), vec![("w1", 13)]);
    // Tokens for the same text fill the token-less leaf.
    c.insert("system prompt", toks(&[10, 11], &[6, 13]), None)
        .unwrap();
    c.check();
    assert_eq!(c.lookup("system prompt").ids(), vec![10, 11]);
    // An extension through a token-less node keeps all its tokens in the new leaf.
    c.insert("user asks", Tokens::default(), None).unwrap();
    c.insert("user asks more", toks(&[20, 21, 22], &[4, 9, 14]), None)
        .unwrap();
    c.check();
    assert_eq!(c.lookup("user asks more").ids(), vec![20, 21, 22]);
    assert_eq!(c.lookup("user asks").ids(), Vec::<u32>::new());
}

#[test]
fn logprobs_and_mask() {
    let c = PrefixCache::new(1_000);
    c.insert("prompt", toks(&[1, 2], &[3, 6]), None).unwrap();
    let lp = [-0.5f32, -1.5];
    let mask = [1u8, 1];
    let t = Tokens {
        ids: &[1, 2, 3, 4],
        ends: &[3, 6, 9, 12],
        logprobs: Some(&[0.0, 0.0, -0.5, -1.5]),
        loss_mask: Some(&[0, 0, 1, 1]),
    };
    c.insert("prompt answer", t, None).unwrap();
    let m = c.lookup("prompt answer");
    assert_eq!(m.ids(), vec![1, 2, 3, 4]);
    assert_eq!(m.logprobs().as_deref(), Some(&[0.0, 0.0, lp[0], lp[1]][..]));
    assert_eq!(
        m.loss_mask().as_deref(),
        Some(&[0, 0, mask[0], mask[1]][..])
    );
    let m = c.lookup("prompt");
    assert_eq!((m.logprobs(), m.loss_mask()), (None, None));
    // Append to a leaf without data: earlier tokens read as 0.
    c.insert("x", toks(&[9], &[1]), None).unwrap();
    c.insert(
        "xy",
        Tokens {
            ids: &[9, 8],
            ends: &[1, 2],
            logprobs: Some(&[-9.0, -2.0]),
            loss_mask: None,
        },
        None,
    )
    .unwrap();
    let m = c.lookup("xy");
    assert_eq!(m.ids(), vec![9, 8]);
    assert_eq!(m.logprobs().as_deref(), Some(&[0.0, -2.0][..]));
    c.check();
}

#[test]
fn validation() {
    let c = PrefixCache::new(1_000);
    let e = |ids: &[u32], ends: &[u32]| c.insert("abc", toks(ids, ends), None).unwrap_err();
    assert!(matches!(e(&[1, 2], &[3]), Error::LengthMismatch { .. }));
    assert!(matches!(
        e(&[1, 2], &[2, 1]),
        Error::EndsDecrease { index: 1 }
    ));
    assert!(matches!(
        e(&[1], &[4]),
        Error::EndOutOfRange {
            index: 0,
            end: 4,
            len: 3
        }
    ));
    let bad_lp = Tokens {
        ids: &[1],
        ends: &[3],
        logprobs: Some(&[]),
        loss_mask: None,
    };
    assert!(matches!(
        c.insert("abc", bad_lp, None),
        Err(Error::LengthMismatch {
            field: "logprobs",
            ..
        })
    ));
    let bad_mask = Tokens {
        ids: &[1],
        ends: &[3],
        logprobs: None,
        loss_mask: Some(&[2]),
    };
    assert_eq!(
        c.insert("abc", bad_mask, None),
        Err(Error::BadMask { index: 0 })
    );
    assert_eq!(c.stats().nodes, 0);
    // Ends before the text's end are fine: the rest is text without tokens.
    c.insert("abc", toks(&[1], &[2]), None).unwrap();
    assert_eq!(c.lookup("abc").length, 2);
}

#[test]
fn lru_eviction_holds_the_budget_and_spares_pins() {
    let c = PrefixCache::new(10);
    let mut v = Vocab::default();
    insert_words(&c, &mut v, "a b c d", None); // 4 tokens
    insert_words(&c, &mut v, "x y z", None); // 3 tokens
    let (pin, _) = c.pin("a b c d");
    assert!(pin.is_some());
    c.lookup("x y z"); // x.. is now more recent than a..
    insert_words(&c, &mut v, "p q r s", None); // 11 > 10: evict the LRU unpinned leaf
    let s = c.stats();
    assert!(s.charged <= 10, "{s:?}");
    assert_eq!(s.evictions, 1);
    assert_eq!(c.lookup("a b c d").ids().len(), 4, "pinned path survives");
    assert_eq!(c.lookup("x y z").ids().len(), 0, "LRU leaf evicted");
    assert!(c.unpin(pin.unwrap()));
    assert!(!c.unpin(pin.unwrap()));
    insert_words(&c, &mut v, "k l m", None); // evicts "p q r s" (older than the lookup of a..d)
    assert!(c.stats().charged <= 10);
    assert_eq!(c.lookup("p q r s").ids().len(), 0);
    insert_words(&c, &mut v, "u v w x", None); // now a..d is the least recent and unpinned
    assert!(c.stats().charged <= 10);
    assert_eq!(c.lookup("a b c d").ids().len(), 0);
    assert_eq!(c.lookup("k l m").ids().len(), 3);
    assert_eq!(c.stats().evictions, 3);
    c.check();
}

#[test]
fn eviction_of_inner_nodes_after_their_children() {
    let c = PrefixCache::new(1_000);
    let mut v = Vocab::default();
    for t in ["one two three", "one two four", "one five"] {
        insert_words(&c, &mut v, t, None);
    }
    assert_eq!(c.stats().nodes, 5);
    assert_eq!(c.stats().tokens, 5);
    // Leaves go first; an inner node goes once its children are gone.
    let c3 = PrefixCache::new(3);
    insert_words(&c3, &mut v, "one two three", None);
    insert_words(&c3, &mut v, "one two four", None);
    assert_eq!(v.decode(&c3.lookup("one two four").ids()), "one two four");
    assert_eq!(c3.lookup("one two three").ids().len(), 2);
    insert_words(&c3, &mut v, "zz yy xx", None);
    assert_eq!(c3.stats().nodes, 1);
    c3.check();
    let c2 = PrefixCache::new(0);
    insert_words(&c2, &mut v, "one two three", None);
    assert_eq!(c2.stats().nodes, 0);
    assert_eq!(c2.stats().charged, 0);
    // Text-only entries are charged too (1 unit per 4 characters).
    c2.insert("abc", Tokens::default(), None).unwrap();
    assert_eq!(c2.stats().nodes, 0);
}

#[test]
fn workers_and_remove_worker() {
    let c = PrefixCache::new(1_000);
    c.insert("shared prefix A", Tokens::default(), Some("w1"))
        .unwrap();
    c.insert("shared prefix B", Tokens::default(), Some("w2"))
        .unwrap();
    c.insert("shared prefix A and more", Tokens::default(), Some("w2"))
        .unwrap();
    let m = c.lookup("shared prefix A and more!");
    let mut w = m.workers().collect::<Vec<_>>();
    w.sort();
    assert_eq!(w, vec![("w1", 15), ("w2", 24)]);
    assert!(c.remove_worker("w2"));
    assert!(!c.remove_worker("w2"));
    assert_eq!(
        c.lookup("shared prefix A and more")
            .workers()
            .collect::<Vec<_>>(),
        vec![("w1", 15)]
    );
    assert_eq!(
        c.lookup("shared prefix B").workers().collect::<Vec<_>>(),
        vec![("w1", 14)]
    );
    assert_eq!(c.stats().workers, 1);
    c.check();
}

#[test]
fn stats_and_clear() {
    let c = PrefixCache::new(1_000);
    c.insert("abcdefgh", toks(&[1, 2], &[4, 8]), None).unwrap();
    c.lookup("abcdefgh"); // 2 of 2
    c.lookup("abcdXXXX"); // 1 matched (4 chars/token) + 1 estimated
    let s = c.stats();
    assert_eq!((s.lookups, s.matched_tokens, s.looked_up_tokens), (2, 3, 4));
    assert_eq!((s.matched_chars, s.looked_up_chars), (12, 16));
    assert!((s.hit_rate() - 0.75).abs() < 1e-9);
    assert!(s.bytes > 0);
    let (pin, _) = c.pin("abcdefgh");
    c.clear();
    let s = c.stats();
    assert_eq!((s.nodes, s.tokens, s.charged, s.pins), (0, 0, 0, 0));
    assert!(!c.unpin(pin.unwrap()));
    assert_eq!(c.lookup("abcdefgh").ids().len(), 0);
}

/// xorshift64*: a tiny deterministic generator for the randomized tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_text(r: &mut Rng, alphabet: &[char], max: usize) -> String {
    let n = r.below(max) + 1;
    (0..n).map(|_| alphabet[r.below(alphabet.len())]).collect()
}

/// Random tokenization: cut at random character positions (so inserts of the same text disagree).
fn random_tokens(r: &mut Rng, v: &mut Vocab, text: &str) -> (Vec<u32>, Vec<u32>) {
    let chars: Vec<char> = text.chars().collect();
    let mut ids = Vec::new();
    let mut ends = Vec::new();
    let mut start = 0;
    for i in 1..=chars.len() {
        if i == chars.len() || r.below(3) == 0 {
            ids.push(v.id(&chars[start..i].iter().collect::<String>()));
            ends.push(i as u32);
            start = i;
        }
    }
    (ids, ends)
}

#[test]
fn randomized_matches_decode_to_the_text() {
    let alphabet = ['a', 'b', ' ', 'é', 'è', '€', '😀'];
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut v = Vocab::default();
    let c = PrefixCache::new(300);
    let mut texts: Vec<String> = Vec::new();
    for step in 0..3_000 {
        let text = if !texts.is_empty() && r.below(2) == 0 {
            // Extend or cut a known text so that prefixes are shared.
            let base = &texts[r.below(texts.len())];
            let keep = r.below(base.chars().count() + 1);
            prefix(base, keep) + &random_text(&mut r, &alphabet, 12)
        } else {
            random_text(&mut r, &alphabet, 20)
        };
        match r.below(10) {
            0..=4 => {
                let (ids, ends) = random_tokens(&mut r, &mut v, &text);
                let worker = ["w1", "w2", "w3"][r.below(3)];
                c.insert(&text, toks(&ids, &ends), Some(worker)).unwrap();
                texts.push(text);
            }
            5 => {
                c.insert(&text, Tokens::default(), None).unwrap();
            }
            6 => {
                if let (Some(p), _) = c.pin(&text) {
                    if r.below(2) == 0 {
                        c.unpin(p);
                    }
                }
            }
            7 => {
                c.remove_worker(["w1", "w2", "w3"][r.below(3)]);
            }
            _ => {
                let m = c.lookup(&text);
                assert_eq!(v.decode(&m.ids()), prefix(&text, m.length), "step {step}");
                assert_eq!(m.ids_json(), ids_json(&m.ids()));
                assert!(m.length <= m.matched_chars);
                assert!(m.workers().all(|(_, n)| n <= m.matched_chars));
            }
        }
        if step % 100 == 0 {
            c.check();
        }
    }
    c.check();
    let s = c.stats();
    assert!(s.evictions > 0);
}

#[test]
fn concurrent_insert_lookup_evict() {
    let c = Arc::new(PrefixCache::new(2_000));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let mut r = Rng(0x1234_5678 + t);
                let mut v = Vocab::default();
                for i in 0..2_000 {
                    let text = format!(
                        "system prompt {} user {} turn {}",
                        r.below(5),
                        r.below(50),
                        i % 7
                    );
                    if r.below(2) == 0 {
                        let (ids, ends) = v.words(&text);
                        c.insert(&text, toks(&ids, &ends), Some(&format!("w{t}")))
                            .unwrap();
                    } else {
                        let m = c.lookup(&text);
                        assert!(m.length <= m.matched_chars);
                        if let (Some(p), _) = c.pin(&text) {
                            c.unpin(p);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    c.check();
    assert!(c.stats().charged <= 2_000);
}

#[test]
fn sized_variants_equal_the_counting_ones() {
    let (a, b) = (PrefixCache::new(1_000), PrefixCache::new(1_000));
    let mut v = Vocab::default();
    for text in ["héllo wörld 😀 x", "héllo there", "other"] {
        let (ids, ends) = v.words(text);
        let n = text.chars().count();
        a.insert(text, toks(&ids, &ends), Some("w")).unwrap();
        b.insert_sized(text, n, toks(&ids, &ends), Some("w"))
            .unwrap();
    }
    for q in ["héllo wörld 😀 xyz", "héllo th", "nothing", ""] {
        let (ma, mb) = (a.lookup(q), b.lookup_sized(q, q.chars().count()));
        assert_eq!(
            (ma.ids(), ma.length, ma.matched_chars),
            (mb.ids(), mb.length, mb.matched_chars)
        );
    }
    assert_eq!(a.stats(), b.stats());
}
