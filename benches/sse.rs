//! Criterion benchmarks of the SSE codec core (no Python): decoding an OpenAI-style chat
//! stream of about 10 MB read 4 KiB at a time, and encoding one chunk payload.
//!
//! Run: cargo bench --bench sse

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use radixrouter::sse::{Decoder, Frame};
use std::hint::black_box;

/// About 10 MB of chat chunks shaped like benches/bench_sse.py's "english" stream: the same
/// fields, 1-59 characters of content (1% with a non-ASCII word), `"usage":null` in 30% of
/// the chunks; payloads of 150-300 bytes, 243 on average.
fn chat_stream(target_bytes: usize) -> (Vec<u8>, usize) {
    const WORDS: &[&str] = &[
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "router",
        "streams", "tokens", "fast", "cache", "prefix", "radix", "tree",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut out = Vec::new();
    let mut events = 0;
    while out.len() < target_bytes {
        let words: Vec<&str> = (0..1 + next(3))
            .map(|_| WORDS[next(WORDS.len() as u64) as usize])
            .collect();
        let mut content: String = words
            .join(" ")
            .chars()
            .take(1 + next(59) as usize)
            .collect();
        if next(100) == 0 {
            content.push_str(" \u{e9}");
        }
        let usage = if next(10) < 3 { ",\"usage\":null" } else { "" };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(format!(
            "{{\"id\":\"chatcmpl-8f1a2b3c4d5e6f7a8b9c0d1e\",\"object\":\"chat.completion.chunk\",\"created\":1763700000,\"model\":\"Qwen/Qwen3-8B\",\"system_fingerprint\":null,\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"logprobs\":null,\"finish_reason\":null}}]{usage}}}"
        ).as_bytes());
        out.extend_from_slice(b"\n\n");
        events += 1;
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    (out, events + 1)
}

fn bench_decode(c: &mut Criterion) {
    let (stream, events) = chat_stream(10_000_000);
    eprintln!("stream: {} bytes, {events} events", stream.len());
    let mut group = c.benchmark_group("sse-decode");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.sample_size(20);
    // The core alone: borrowed events, the sink only counts their bytes.
    group.bench_function("feed_with", |b| {
        b.iter(|| {
            let mut dec = Decoder::default();
            let mut n = 0usize;
            for chunk in stream.chunks(4096) {
                dec.feed_with(chunk, |e| n += e.data.len()).unwrap();
            }
            black_box(n)
        })
    });
    // What `SseDecoder.feed_data` does before it copies each payload into a
    // Python bytes object: borrowed events, each payload checked to be UTF-8.
    group.bench_function("feed_with-data_utf8", |b| {
        b.iter(|| {
            let mut dec = Decoder::default();
            let mut n = 0usize;
            for chunk in stream.chunks(4096) {
                dec.feed_with(chunk, |e| n += e.data_utf8().len()).unwrap();
            }
            black_box(n)
        })
    });
    // Owned events (three Strings per event).
    group.bench_function("feed_into-owned-events", |b| {
        b.iter(|| {
            let mut dec = Decoder::default();
            let mut out = Vec::new();
            let mut n = 0usize;
            for chunk in stream.chunks(4096) {
                dec.feed_into(chunk, &mut out).unwrap();
                n += out.len();
                out.clear();
            }
            black_box(n)
        })
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let payload = br#"{"id":"chatcmpl-8f1a2b3c4d5e6f7a8b9c0d1e","object":"chat.completion.chunk","created":1763700000,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}]}"#;
    c.bench_function("sse-encode-one-payload", |b| {
        b.iter_batched(
            || (),
            |_| black_box(Frame::data(black_box(payload)).encode().unwrap()),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
