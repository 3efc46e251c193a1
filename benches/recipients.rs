//! The gateway's `valid_recipients` table at a million entries (one core).
//! `cargo bench --bench recipients`.
//!
//! `recipients/parse` and `recipients/load` build the whole table (a 31 MB text, lines
//! like `user{i}@domain{i % 100}.example OK`); the lookups run against it. The table's
//! memory is printed once, as the growth of the resident set while it is built (Linux).
//! `baseline/*`: the same keys in a std `HashSet<String>` (one allocation a key), built
//! and asked in the same run, so the figures can be read as ratios on a noisy machine.

use std::hint::black_box;

use batv::core::recipients::{LocalCase, Recipients};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ENTRIES: usize = 1_000_000;

/// The resident set in bytes, where /proc says.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn bench(c: &mut Criterion) {
    let text: String = (0..ENTRIES).map(|i| format!("user{i}@domain{}.example OK\n", i % 100)).collect();
    let before = rss();
    let table = Recipients::parse(&text, LocalCase::Exact).unwrap();
    if let (Some(before), Some(after)) = (before, rss()) {
        println!(
            "recipients: {} entries from {:.1} MB of text: table {:.1} MB resident",
            table.len(),
            text.len() as f64 / 1e6,
            after.saturating_sub(before) as f64 / 1e6
        );
    }
    assert_eq!(table.len(), ENTRIES);
    let insensitive = Recipients::parse(&text, LocalCase::Insensitive).unwrap();

    let mut g = c.benchmark_group("recipients");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ENTRIES as u64));
    g.bench_function("parse/1M", |b| {
        b.iter(|| Recipients::parse(black_box(&text), LocalCase::Exact).unwrap())
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recipients");
    std::fs::write(&path, &text).unwrap();
    g.bench_function("load/1M", |b| {
        b.iter(|| Recipients::load(black_box(&path), LocalCase::Exact).unwrap())
    });
    g.bench_function("baseline/hashset-build/1M", |b| {
        b.iter(|| {
            black_box(&text)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect::<std::collections::HashSet<String>>()
        })
    });
    g.finish();

    let set: std::collections::HashSet<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let mut g = c.benchmark_group("recipients");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline/hashset-hit", |b| {
        b.iter(|| assert!(set.contains(black_box("user5@domain5.example"))))
    });
    g.bench_function("baseline/hashset-miss", |b| {
        b.iter(|| assert!(!set.contains(black_box("nobody@domain5.example"))))
    });
    g.bench_function("knows/hit", |b| {
        b.iter(|| assert!(table.knows(black_box("user5"), black_box("domain5.example"), "+")))
    });
    g.bench_function("knows/miss", |b| {
        b.iter(|| assert!(!table.knows(black_box("nobody"), black_box("domain5.example"), "+")))
    });
    g.bench_function("knows/extension", |b| {
        b.iter(|| assert!(table.knows(black_box("user5+tag"), black_box("domain5.example"), "+")))
    });
    g.bench_function("knows/upper-case-domain", |b| {
        b.iter(|| assert!(table.knows(black_box("user5"), black_box("Domain5.EXAMPLE"), "+")))
    });
    g.bench_function("knows/insensitive", |b| {
        b.iter(|| assert!(insensitive.knows(black_box("User5"), black_box("Domain5.EXAMPLE"), "+")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
