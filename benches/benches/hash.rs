//! blake3 over one open file at the sizes a package tree holds: a header, a doc page, a
//! shared library and a big static archive (warm page cache).

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::AsFd;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jailsync_benches::Rng;
use jailsync_engine::hash::hash_fd;

fn hash(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("hash_fd");
    for (label, size) in [
        ("4KiB", 4u64 << 10),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
        ("8MiB", 8 << 20),
        ("64MiB", 64 << 20),
    ] {
        let p = dir.path().join(label);
        let mut buf = vec![0u8; size as usize];
        Rng::new(size).fill(&mut buf);
        File::create(&p).unwrap().write_all(&buf).unwrap();
        let f = File::open(&p).unwrap();
        g.throughput(Throughput::Bytes(size));
        if size >= 8 << 20 {
            g.sample_size(10);
        }
        g.bench_with_input(BenchmarkId::from_parameter(label), &size, |b, &size| {
            b.iter(|| black_box(hash_fd(f.as_fd(), size).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, hash);
criterion_main!(benches);
