//! Property test: for random old (destination) and new (source) trees over a small shared
//! namespace — so paths collide and change type, hard-link groups form, split and merge —
//! one `sync` makes the destination list exactly like the source, and a second plans nothing.

use crate::common::gen::{build, tree};
use crate::common::*;
use proptest::prelude::*;

proptest! {
    // Each case spawns the binary twice on real trees: keep the count modest.
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sync_makes_dst_equal_src(old in tree(), new in tree()) {
        let e = Env::new().with_dst();
        let old_log = build(&e.dst, &old);
        let new_log = build(&e.src, &new);
        let ctx = format!("old:\n  {}\nnew:\n  {}", old_log.join("\n  "), new_log.join("\n  "));
        let o = e.js([std::ffi::OsStr::new("sync"), e.src().as_os_str(), e.dst().as_os_str()]);
        prop_assert_eq!(o.status.code(), Some(0), "{}\nstderr: {}", ctx, stderr(&o));
        let (ls, ld) = (listing(e.src()), listing(e.dst()));
        prop_assert!(ls == ld, "{}\ndiff (- src, + dst):\n{}", ctx, ls.diff(&ld));
        let pending = e.pending();
        prop_assert!(pending.is_empty(), "{}\nsecond sync plans:\n{}", ctx, pending);
        if let Some(r) = rsync_dry(e.src(), e.dst()) {
            prop_assert!(r.is_empty(), "{}\nrsync sees:\n{}", ctx, r);
        }
    }
}
