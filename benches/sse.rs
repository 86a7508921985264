//! Criterion benchmarks of the SSE codec core (no Python): decoding an OpenAI-style chat
//! stream read 4 KiB at a time, and encoding one chunk payload.
//!
//! Run: cargo bench --bench sse

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use radixrouter::sse::{Decoder, Frame};
use std::hint::black_box;

fn chat_stream(events: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..events {
        let content = ["hello", " world", " the", " quick brown", " fox é", " 😀"][i % 6];
        let payload = format!(
            "{{\"id\":\"chatcmpl-8f1a2b3c4d5e6f7a8b9c0d1e\",\"object\":\"chat.completion.chunk\",\"created\":1763700000,\"model\":\"Qwen/Qwen3-8B\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}"
        );
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn bench_decode(c: &mut Criterion) {
    let stream = chat_stream(40_000);
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
