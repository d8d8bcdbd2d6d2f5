//! Planning an upgrade: live tree vs. its generated upgrade jail, both scanned and the needed
//! pairs hashed once in setup, so only the merge-join and its decisions are timed.
//! Size with JAILSYNC_BENCH_FILES (default 10000).

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jailsync_benches::{gen_base, mutate, BaseOpts, MutateKind};
use jailsync_engine::entry::Entries;
use jailsync_engine::hash::hash_fd;
use jailsync_engine::plan::{hash_needs, plan, PlanOpts};
use jailsync_engine::scan::{scan_tree, Excludes, ScanOpts};

fn scanned(root: &Path, pool: &rayon::ThreadPool) -> Entries {
    let ex = Excludes::default();
    let opts = ScanOpts {
        excludes: &ex,
        xattrs: false,
        defer_xattrs: false,
        ours: &[],
    };
    scan_tree(root, pool, &opts).unwrap().entries
}

fn fill_hashes(root: &Path, entries: &mut Entries, idx: &[u32]) {
    for i in idx.iter().map(|&i| i as usize) {
        let p = root.join(String::from_utf8_lossy(entries.path(i)).as_ref());
        let f = File::open(p).unwrap();
        let h = hash_fd(f.as_fd(), entries[i].size).unwrap().0;
        entries.set_hash(i, Some(h));
    }
}

fn bench_plan(c: &mut Criterion) {
    let n = std::env::var("JAILSYNC_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let (live, jail) = (dir.path().join("live"), dir.path().join("jail"));
    let o = BaseOpts {
        files: n,
        seed: 1,
        size_scale: 0.05,
    };
    gen_base(&live, &o).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    let mut g = c.benchmark_group("plan");
    g.sample_size(20).throughput(Throughput::Elements(n as u64));
    for kind in [MutateKind::Upgrade, MutateKind::Security, MutateKind::Noop] {
        let _ = std::fs::remove_dir_all(&jail);
        mutate(&live, &jail, kind, 2).unwrap();
        let (sroot, droot) = (jail.join("usr/pkg"), live.join("usr/pkg"));
        let mut src = scanned(&sroot, &pool);
        let mut dst = scanned(&droot, &pool);
        let (si, di) = hash_needs(&src, &dst);
        fill_hashes(&sroot, &mut src, &si);
        fill_hashes(&droot, &mut dst, &di);
        let po = PlanOpts {
            owner: true,
            xattrs: false,
        };
        g.bench_function(format!("{n}-files/{kind:?}"), |b| {
            b.iter(|| black_box(plan(&src, &dst, po).actions.len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
