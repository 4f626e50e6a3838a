//! Criterion micro-benchmarks of the per-point hot paths: what the sender does to accept a point
//! (parse + validate, encode its SQS body, pack a stored chunk) and what the listener does to store
//! it (decode the body, build the multi-row insert). Run with `cargo bench -p accrual-benches`.

use std::hint::black_box;
use std::sync::Arc;

use accrual_benches::workload::Workload;
use accrual_core::message::PointRecord;
use accrual_core::wire::MAX_ITEMS_PER_REQUEST;
use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const POINTS: usize = 1_000;

fn records() -> Vec<PointRecord> {
    Workload::generate(POINTS, 300, POINTS)
        .records()
        .expect("generated points are valid")
}

fn sender(c: &mut Criterion) {
    let workload = Workload::generate(POINTS, 300, POINTS);
    let body = workload.bodies[0].clone();
    let records = records();
    let mut group = c.benchmark_group("sender");
    group.throughput(Throughput::Elements(POINTS as u64));
    group.bench_function("parse_and_validate_1000_items", |b| {
        b.iter(|| {
            let items = accrual_core::wire::parse_body(black_box(&body), MAX_ITEMS_PER_REQUEST)
                .expect("valid JSON");
            accrual_core::accrual::validate(items, Utc::now()).expect("valid items")
        })
    });
    group.bench_function("encode_1000_sqs_bodies", |b| {
        b.iter(|| {
            black_box(&records)
                .iter()
                .map(PointRecord::encode)
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("encode_a_chunk_of_1000_points", |b| {
        b.iter(|| accrual_core::chunk::encode(black_box(&records)))
    });
    let chunk = accrual_core::chunk::encode(&records);
    group.bench_function("decode_a_chunk_of_1000_points", |b| {
        b.iter(|| accrual_core::chunk::decode(black_box(&chunk)).expect("a valid chunk"))
    });
    let bodies: Vec<String> = records.iter().map(PointRecord::encode).collect();
    group.bench_function("pack_1000_points_100_a_message", |b| {
        b.iter_batched(
            || bodies.clone(),
            |bodies| accrual_core::message::pack(bodies, 100, 256 * 1024).expect("v1 bodies"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn listener(c: &mut Criterion) {
    let records = records();
    let bodies: Vec<String> = records.iter().map(PointRecord::encode).collect();
    let mut group = c.benchmark_group("listener");
    group.throughput(Throughput::Elements(POINTS as u64));
    group.bench_function("decode_1000_sqs_bodies", |b| {
        b.iter(|| {
            black_box(&bodies)
                .iter()
                .map(|body| PointRecord::decode(body).expect("a valid body"))
                .collect::<Vec<_>>()
        })
    });
    let packed = accrual_core::message::pack(bodies.clone(), 100, 256 * 1024).expect("v1 bodies");
    group.bench_function("decode_1000_points_packed_100_a_message", |b| {
        b.iter(|| {
            black_box(&packed)
                .iter()
                .map(|body| accrual_core::message::decode_message(body).expect("a valid body"))
                .collect::<Vec<_>>()
        })
    });
    let rows = 500;
    let sql: Arc<str> = accrual_listener::ledger::insert_sql("point_accruals", rows).into();
    let batch: Vec<&PointRecord> = records.iter().take(rows).collect();
    let clients: std::collections::HashMap<_, _> = batch
        .iter()
        .map(|r| (r.job_id, "client_a".to_owned()))
        .collect();
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("build_a_500_row_insert", |b| {
        b.iter_batched(
            || sql.clone(),
            |sql| accrual_listener::ledger::insert_query(sql, black_box(&batch), &clients),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, sender, listener);
criterion_main!(benches);
