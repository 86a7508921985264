//! Criterion benchmarks of the prefix-cache core (no Python).
//!
//! Workload: 64 conversations of 4,000 tokens that share a 200-token system prompt, each
//! inserted turn by turn (8 turns of ~475 tokens), about 4.5 characters per token with some
//! non-ASCII words. Then:
//! - `match-4000-hot`: look up conversation 0 plus a new user turn (4,000 tokens match, 9 nodes);
//! - `match-4000-diverge-in-edge`: the same text cut inside its last edge (whole tokens only);
//! - `insert-extend-3500-to-4000`: insert a 4,000-token sequence whose first 3,500 tokens are cached;
//! - reference: `compare-query-20kb` (one `==` of the query's ~20 KB with a copy of it: the
//!   least any exact lookup of it costs).
//!
//! Run: cargo bench --bench cache (criterion), or RADIXROUTER_BENCH_MIN=1 cargo bench --bench
//! cache for the minimum over short batches (see `min_report`).

use criterion::{criterion_group, BatchSize, Criterion};
use radixrouter::cache::{PrefixCache, Tokens};
use std::hint::black_box;
use std::time::Instant;

struct Seq {
    text: String,
    ids: Vec<u32>,
    ends: Vec<u32>,
}

impl Seq {
    fn tokens(&self, n: usize) -> Tokens<'_> {
        Tokens {
            ids: &self.ids[..n],
            ends: &self.ends[..n],
            logprobs: None,
            loss_mask: None,
        }
    }

    fn text_to(&self, n: usize) -> &str {
        let chars = self.ends[n - 1] as usize;
        let byte = self
            .text
            .char_indices()
            .nth(chars)
            .map_or(self.text.len(), |(i, _)| i);
        &self.text[..byte]
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Append `n` synthetic tokens (" word", ids below 151,000) to `seq`.
fn extend(seq: &mut Seq, rng: &mut Rng, n: usize) {
    const LETTERS: &[char] = &[
        'a', 'e', 'i', 'o', 'n', 's', 't', 'r', 'l', 'é', 'ü', 'c', 'd', 'm',
    ];
    let mut chars = seq.ends.last().copied().unwrap_or(0);
    for _ in 0..n {
        let len = 1 + (rng.next() % 6) as usize;
        seq.text.push(' ');
        for _ in 0..len {
            seq.text
                .push(LETTERS[(rng.next() % LETTERS.len() as u64) as usize]);
        }
        chars += 1 + len as u32;
        seq.ids.push((rng.next() % 151_000) as u32);
        seq.ends.push(chars);
    }
}

fn conversation(system: &Seq, seed: u64) -> Seq {
    let mut rng = Rng(seed);
    let mut s = Seq {
        text: system.text.clone(),
        ids: system.ids.clone(),
        ends: system.ends.clone(),
    };
    extend(&mut s, &mut rng, 4_000 - system.ids.len());
    s
}

fn populated() -> (PrefixCache, Vec<Seq>) {
    let mut system = Seq {
        text: String::new(),
        ids: Vec::new(),
        ends: Vec::new(),
    };
    extend(&mut system, &mut Rng(42), 200);
    let convs: Vec<Seq> = (0..64).map(|i| conversation(&system, 1_000 + i)).collect();
    let cache = PrefixCache::new(16_000_000);
    for turn in 1..=8 {
        for s in &convs {
            let n = 200 + (4_000 - 200) * turn / 8;
            cache
                .insert(s.text_to(n), s.tokens(n), Some("worker-1"))
                .unwrap();
        }
    }
    (cache, convs)
}

/// The match workload's two queries: conversation 0 plus a new user turn (4,000 tokens match), and
/// conversation 0's text cut a few characters inside its last edge (whole tokens only).
fn queries(convs: &[Seq]) -> (String, String) {
    let query = format!("{}<|im_start|>user\nand now?", convs[0].text);
    let cut = convs[0]
        .text_to(4_000)
        .char_indices()
        .rev()
        .nth(3)
        .map_or(0, |(i, _)| i);
    (query, format!("{}#", &convs[0].text[..cut]))
}

fn bench_match(c: &mut Criterion) {
    let (cache, convs) = populated();
    let (query, partial) = queries(&convs);
    let m = cache.lookup(&query);
    assert_eq!(m.token_count(), 4_000);
    c.bench_function("match-4000-hot", |b| {
        b.iter(|| black_box(cache.lookup(black_box(&query))))
    });

    // What comparing the matched text costs by itself (a copy of the query, in one piece).
    let copy = query.clone();
    c.bench_function("compare-query-20kb", |b| {
        b.iter(|| black_box(black_box(query.as_bytes()) == black_box(copy.as_bytes())))
    });

    let m = cache.lookup(&partial);
    assert!(m.token_count() >= 3_998 && m.token_count() < 4_000);
    c.bench_function("match-4000-diverge-in-edge", |b| {
        b.iter(|| black_box(cache.lookup(black_box(&partial))))
    });
}

fn bench_insert(c: &mut Criterion) {
    let (_, convs) = populated();
    let s = &convs[0];
    let prefix = s.text_to(3_500);
    c.bench_function("insert-extend-3500-to-4000", |b| {
        b.iter_batched(
            || {
                let cache = PrefixCache::new(16_000_000);
                cache.insert(prefix, s.tokens(3_500), None).unwrap();
                cache
            },
            |cache| {
                cache
                    .insert(&s.text, s.tokens(4_000), Some("worker-1"))
                    .unwrap();
                cache
            },
            BatchSize::SmallInput,
        )
    });
    let (cache, _) = populated();
    let mut n = 0u64;
    c.bench_function("insert-refresh-4000-populated", |b| {
        b.iter(|| {
            n += 1;
            let s = &convs[(n % 64) as usize];
            cache
                .insert(&s.text, s.tokens(4_000), Some("worker-2"))
                .unwrap();
        })
    });
}

fn bench_json(c: &mut Criterion) {
    let (cache, convs) = populated();
    let m = cache.lookup(&convs[0].text);
    c.bench_function("match-ids-json-4000-cached-text", |b| {
        b.iter(|| black_box(m.ids_json()))
    });
}

/// `RADIXROUTER_BENCH_MIN=1 cargo bench --bench cache`: instead of criterion's means, the
/// minimum over many short batches (the least disturbed figure on a shared machine), for the
/// same cases. Uses only `PrefixCache::{new, insert, lookup}`, so it also runs on older cores.
fn min_report() {
    fn best(rounds: usize, mut batch: impl FnMut() -> f64) -> f64 {
        (0..rounds).map(|_| batch()).fold(f64::MAX, f64::min)
    }
    fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    }
    let (cache, convs) = populated();
    let (query, partial) = queries(&convs);
    let copy = query.clone();
    let rows = [
        (
            "match-4000-hot",
            best(300, || {
                per_call(200, || drop(black_box(cache.lookup(black_box(&query)))))
            }),
        ),
        (
            "compare-query-20kb",
            best(300, || {
                per_call(200, || {
                    black_box(black_box(query.as_bytes()) == black_box(copy.as_bytes()));
                })
            }),
        ),
        (
            "match-4000-diverge-in-edge",
            best(300, || {
                per_call(200, || drop(black_box(cache.lookup(black_box(&partial)))))
            }),
        ),
    ];
    let s = &convs[0];
    let insert = best(300, || {
        let fresh = PrefixCache::new(16_000_000);
        fresh
            .insert(s.text_to(3_500), s.tokens(3_500), None)
            .unwrap();
        let t = Instant::now();
        fresh
            .insert(&s.text, s.tokens(4_000), Some("worker-1"))
            .unwrap();
        let ns = t.elapsed().as_nanos() as f64;
        drop(black_box(fresh));
        ns
    });
    for (name, ns) in rows
        .iter()
        .chain([("insert-extend-3500-to-4000", insert)].iter())
    {
        println!("{name:30} min {ns:8.0} ns");
    }
}

criterion_group!(benches, bench_match, bench_insert, bench_json);

fn main() {
    if std::env::var_os("RADIXROUTER_BENCH_MIN").is_some() {
        min_report();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
