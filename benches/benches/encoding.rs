//! Compares JSON, postcard and MessagePack for the lead values the cache stores in Redis.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

// `criterion::black_box` is deprecated in criterion 0.8 in favour of the std one, and
// the deprecation warning would fail clippy under `-D warnings`.
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

/// A lead shaped like the ones the service caches: sizes follow typical production rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lead {
    id: i64,
    org_id: i64,
    phone: String,
    name: String,
    status: String,
    notes: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    tags: Vec<String>,
}

fn sample_lead() -> Lead {
    Lead {
        id: 48_213_377,
        org_id: 1_042,
        phone: "+16462000042".to_owned(),
        name: "Maria Gonzalez".to_owned(),
        status: "qualified".to_owned(),
        // About 120 characters, the median length of a free-text note.
        notes: Some(
            "Called back about the premium plan; wants a demo next Tuesday afternoon \
             and a quote for twelve seats before end of month."
                .to_owned(),
        ),
        created_at_ms: 1_735_689_600_000,
        updated_at_ms: 1_738_368_000_000,
        tags: vec!["inbound".to_owned(), "vip".to_owned()],
    }
}

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
