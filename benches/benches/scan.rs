//! The walker over a generated package tree (warm cache: this measures CPU and syscall cost,
//! not the disk). Size with JAILSYNC_BENCH_FILES (default 10000).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jailsync_benches::{gen_base, BaseOpts};
use jailsync_engine::scan::{scan_tree, Excludes, ScanOpts};

fn files() -> usize {
    std::env::var("JAILSYNC_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn scan(c: &mut Criterion) {
    let n = files();
    let dir = tempfile::tempdir().unwrap();
    // Content does not matter to a walk: tiny files keep setup fast on a slow disk.
    let o = BaseOpts {
        files: n,
        seed: 1,
        size_scale: 0.01,
    };
    gen_base(dir.path(), &o).unwrap();
    let root = dir.path().join("usr/pkg");
    let excludes = Excludes::default();
    let mut g = c.benchmark_group("scan");
    g.sample_size(10).throughput(Throughput::Elements(n as u64));
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for xattrs in [false, true] {
            let opts = ScanOpts {
                excludes: &excludes,
                xattrs,
                defer_xattrs: false,
                ours: &[],
            };
            let name = format!("{n}-files/{threads}-threads/xattrs-{xattrs}");
            g.bench_function(name, |b| {
                b.iter(|| black_box(scan_tree(&root, &pool, &opts).unwrap().entries.len()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
