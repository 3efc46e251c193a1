//! `batv check` in process: inspection and verdict over the shared bounce corpus
//! (../shared/data/bounces: 200 public bounces from 77 sources and 24 made by Exim and
//! Postfix), one core. `cargo bench --bench check`.
//!
//! `check/mime-parse` is the baseline in the same run: mail-parser's parse of every
//! message, the work inspection builds on.

use std::hint::black_box;
use std::path::Path;

use batv::bounce;
use batv::core::address::DomainSet;
use batv::core::keys::{KeyStore, Secret};
use batv::core::tag;
use batv::core::verdict::Rules;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// 2026-11-23, the day the generated corpus's tags were made for.
const TODAY: i64 = 20_780;

/// The corpus: each message, with its envelope recipient where the corpus records one
/// (the generated messages' `.env` files: the recipient the MTA had, as `batv check
/// --recipient` gets it; a tag vouches only for its own address).
fn corpus() -> Vec<(Vec<u8>, Option<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/bounces");
    let mut files = Vec::new();
    for sub in ["public", "generated"] {
        let mut names: Vec<_> = std::fs::read_dir(root.join(sub))
            .expect("the shared corpus beside the repository")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        files.extend(names.iter().map(|p| {
            let rcpt = std::fs::read_to_string(p.with_extension("env")).ok().and_then(|env| {
                env.lines()
                    .find_map(|l| l.strip_prefix("RCPT TO:<"))
                    .and_then(|r| r.split('>').next())
                    .map(str::to_string)
            });
            (std::fs::read(p).unwrap(), rcpt)
        }));
    }
    files
}

fn bench(c: &mut Criterion) {
    let files = corpus();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let store = KeyStore::new(dir.path().join("keys"), None).unwrap();
    // The generated corpus's tags are Exim prvs tags with the secret `s3cret`, key 0. A store
    // takes 16 bytes at least; HMAC pads a shorter key with zeros, so this is the same key.
    store
        .import(0, Secret::new(b"s3cret\0\0\0\0\0\0\0\0\0\0".to_vec()).unwrap(), TODAY * 86_400)
        .unwrap();
    let keys = store.load().unwrap().into();
    let rules = Rules {
        protected: DomainSet::new(["example.org"]).unwrap(),
        schemes: tag::Schemes::ALL,
        sign_scheme: tag::Scheme::Prvs,
        delimiters: "+".into(),
    };
    let judge_all = || {
        files
            .iter()
            .map(|(f, rcpt)| {
                let r = bounce::inspect(black_box(f), 1 << 20, false);
                let rcpt = rcpt.as_deref().or(r.envelope_recipient.as_deref());
                bounce::judge(&r, rcpt, &rules, &keys, TODAY).reason()
            })
            .filter(|&v| v == "valid")
            .count()
    };
    // The generated corpus's genuine bounces (the untagged and bad-key ones are not).
    assert!(judge_all() >= 15, "the corpus's genuine bounces must verify");
    let mut g = c.benchmark_group("check");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function("mime-parse", |b| {
        b.iter(|| {
            files
                .iter()
                .filter_map(|(f, _)| mail_parser::MessageParser::default().parse(black_box(f.as_slice())))
                .count()
        })
    });
    g.bench_function("inspect", |b| {
        b.iter(|| {
            files
                .iter()
                .filter(|(f, _)| bounce::inspect(black_box(f), 1 << 20, false).kind.is_bounce())
                .count()
        })
    });
    g.bench_function("inspect+judge", |b| b.iter(judge_all));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
