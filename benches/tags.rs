//! Tag signing and verification throughput (one core). `cargo bench --bench tags`.
//!
//! `tag/baseline/*` is the floor the targets were set against: a bare HMAC of the
//! same short message with the `hmac` crate, from a pre-keyed state cloned per call. Read
//! the other figures as ratios to it, from the same run (this machine is noisy).

use std::hint::black_box;

use batv::core::address;
use batv::core::tag::{self, Scheme, Syntax, TagKey};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hmac::{KeyInit, Mac};

const TODAY: i64 = 20_780;

fn bench(c: &mut Criterion) {
    let keys: Vec<TagKey> = (0..10).map(|i| TagKey::new(format!("{i:064x}").as_bytes())).collect();
    let lookup = |k: u8| keys.get(k as usize);
    let addr = address::parse("jane.doe+news@example.org").unwrap();
    let ddd = tag::day_stamp(TODAY, 7);
    let mut g = c.benchmark_group("tag");
    g.throughput(Throughput::Elements(1));
    let msg = b"3123jane.doe+news@example.org";
    let secret = format!("{:064x}", 3);
    let k256 = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    g.bench_function("baseline/hmac-sha256", |b| {
        b.iter(|| {
            let mut m = k256.clone();
            m.update(black_box(msg));
            m.finalize().into_bytes()
        })
    });
    let k1 = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    g.bench_function("baseline/hmac-sha1", |b| {
        b.iter(|| {
            let mut m = k1.clone();
            m.update(black_box(msg));
            m.finalize().into_bytes()
        })
    });
    for scheme in [Scheme::Native, Scheme::Prvs] {
        let signed = tag::sign(&keys[3], 3, scheme, Syntax::Prefix, &addr, ddd).unwrap();
        g.bench_function(format!("sign/{scheme}"), |b| {
            b.iter(|| tag::sign(&keys[3], 3, scheme, Syntax::Prefix, black_box(&addr), ddd).unwrap())
        });
        g.bench_function(format!("sign+parse/{scheme}"), |b| {
            b.iter(|| {
                let a = address::parse(black_box("jane.doe+news@example.org")).unwrap();
                tag::sign(&keys[3], 3, scheme, Syntax::Prefix, &a, ddd).unwrap()
            })
        });
        g.bench_function(format!("parse/{scheme}"), |b| b.iter(|| tag::parse(black_box(&signed)).unwrap()));
        g.bench_function(format!("verify/{scheme}"), |b| {
            b.iter(|| {
                let v = tag::verify(black_box(&signed), TODAY, tag::Schemes::ALL, lookup).unwrap();
                assert!(v.is_valid());
                v
            })
        });
        // The sub-address syntax (batv-tools') takes the parser's path, not the fast one.
        let sub = tag::sign(&keys[3], 3, scheme, Syntax::Subaddress('+'), &addr, ddd).unwrap();
        g.bench_function(format!("verify-subaddress/{scheme}"), |b| {
            b.iter(|| {
                let v = tag::verify(black_box(&sub), TODAY, tag::Schemes::ALL, lookup).unwrap();
                assert!(v.is_valid());
                v
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
