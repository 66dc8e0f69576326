//! Compares JSON, postcard and MessagePack for the lead values the cache stores in Redis.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

// `criterion::black_box` is deprecated in criterion 0.8 in favour of the std one, and
// the deprecation warning would fail clippy under `-D warnings`.
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tiercache_benches::{Lead, sample_lead};

fn encode_json(lead: &Lead) -> Vec<u8> {
    serde_json::to_vec(lead).unwrap()
}

fn encode_postcard(lead: &Lead) -> Vec<u8> {
    postcard::to_allocvec(lead).unwrap()
}

// `to_vec` writes structs as positional arrays, not maps keyed by field name
// (`to_vec_named`): the compact form, comparable to postcard, and the one we would
// store, since reader and writer always share the same `Lead` definition.
fn encode_msgpack(lead: &Lead) -> Vec<u8> {
    rmp_serde::to_vec(lead).unwrap()
}

fn bench_encoding(c: &mut Criterion) {
    let lead = sample_lead();
    let json = encode_json(&lead);
    let postcard_bytes = encode_postcard(&lead);
    let msgpack = encode_msgpack(&lead);

    // Round-trip each format once, so a bench never times a decode that fails.
    assert_eq!(serde_json::from_slice::<Lead>(&json).unwrap(), lead);
    assert_eq!(postcard::from_bytes::<Lead>(&postcard_bytes).unwrap(), lead);
    assert_eq!(rmp_serde::from_slice::<Lead>(&msgpack).unwrap(), lead);

    // Size matters as much as speed here: it is Redis memory and bytes on the wire per hit.
    eprintln!(
        "encoded lead size: json {} B, postcard {} B, msgpack {} B",
        json.len(),
        postcard_bytes.len(),
        msgpack.len()
    );

    let mut encode = c.benchmark_group("encode");
    encode.bench_function("json", |b| b.iter(|| encode_json(black_box(&lead))));
    encode.bench_function("postcard", |b| {
        b.iter(|| encode_postcard(black_box(&lead)));
    });
    encode.bench_function("msgpack", |b| b.iter(|| encode_msgpack(black_box(&lead))));
    encode.finish();

    let mut decode = c.benchmark_group("decode");
    decode.bench_function("json", |b| {
        b.iter(|| serde_json::from_slice::<Lead>(black_box(&json)).unwrap());
    });
    decode.bench_function("postcard", |b| {
        b.iter(|| postcard::from_bytes::<Lead>(black_box(&postcard_bytes)).unwrap());
    });
    decode.bench_function("msgpack", |b| {
        b.iter(|| rmp_serde::from_slice::<Lead>(black_box(&msgpack)).unwrap());
    });
    decode.finish();
}

criterion_group!(benches, bench_encoding);
criterion_main!(benches);
