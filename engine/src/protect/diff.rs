//! The unified diff `conf-diff` shows between a kept entry and the jail's version.

/// A unified diff of `old` and `new` (lines), with `ctx` lines of context; empty when equal.
/// The edit script comes from imara-diff's histogram diff: linear in space (a table of every
/// pair of lines took gigabytes for a 30 000-line file) and near-linear in time on real input.
pub fn unified_diff(old_name: &str, new_name: &str, old: &str, new: &str, ctx: usize) -> String {
    use imara_diff::{Algorithm, Diff, InternedInput};
    let mut input: InternedInput<&str> = InternedInput::default();
    input.update_before(old.lines());
    input.update_after(new.lines());
    let mut diff = Diff::compute(Algorithm::Histogram, &input);
    diff.postprocess_lines(&input);
    let (a, b) = (&input.before, &input.after);
    let line = |t: imara_diff::Token| input.interner[t];
    // The edit script: (tag, line index in a, line index in b); removals before additions.
    let mut ops: Vec<(char, usize, usize)> = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && diff.is_removed(i as u32) {
            ops.push(('-', i, j));
            i += 1;
        } else if j < b.len() && diff.is_added(j as u32) {
            ops.push(('+', i, j));
            j += 1;
        } else {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        }
    }
    let changes: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    if changes.is_empty() {
        return String::new();
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    let mut c = 0;
    while c < changes.len() {
        // One hunk: changes closer than 2*ctx lines share their context.
        let mut last = c;
        while last + 1 < changes.len() && changes[last + 1] - changes[last] <= 2 * ctx + 1 {
            last += 1;
        }
        let start = changes[c].saturating_sub(ctx);
        let end = (changes[last] + ctx + 1).min(ops.len());
        let (a0, b0) = (ops[start].1, ops[start].2);
        let ac = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let bc = ops[start..end].iter().filter(|o| o.0 != '-').count();
        let at = |s: usize, c: usize| if c == 0 { s } else { s + 1 };
        out.push_str(&format!(
            "@@ -{},{ac} +{},{bc} @@\n",
            at(a0, ac),
            at(b0, bc)
        ));
        for &(t, i, j) in &ops[start..end] {
            out.push(t);
            out.push_str(line(if t == '+' { b[j] } else { a[i] }));
            out.push('\n');
        }
        c = last + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_of_one_changed_line() {
        let d = unified_diff(
            "a",
            "b",
            "1\n2\n3\n4\n5\n6\n7\n8\n",
            "1\n2\n3\n4\nfive\n6\n7\n8\n",
            2,
        );
        assert_eq!(
            d,
            "--- a\n+++ b\n@@ -3,5 +3,5 @@\n 3\n 4\n-5\n+five\n 6\n 7\n"
        );
        assert_eq!(unified_diff("a", "b", "x\n", "x\n", 3), "");
        let d = unified_diff("a", "b", "", "new\n", 3);
        assert_eq!(d, "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+new\n");
    }

    /// The peak resident size of this process so far, in KiB.
    fn peak_rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The LCS table of a 30 000-line file took 3.5 GB (and a 20 000-line one aborted under a
    /// 1 GiB limit): the diff must stay linear in space.
    #[test]
    fn conf_diff_of_a_30k_line_file_runs_in_bounded_memory() {
        let old: String = (0..30_000).map(|i| format!("option_{i} = {i}\n")).collect();
        let new: String = (0..30_000)
            .map(|i| match i % 1000 {
                0 => format!("option_{i} = changed\n"),
                _ => format!("option_{i} = {i}\n"),
            })
            .collect();
        let before = peak_rss_kib();
        let d = unified_diff("a", "b", &old, &new, 3);
        let grown_mib = (peak_rss_kib() - before) / 1024;
        assert!(
            grown_mib < 128,
            "the diff grew the peak RSS by {grown_mib} MiB"
        );
        assert_eq!(d.matches("\n@@ ").count(), 30, "one hunk per changed line");
        assert!(d.contains("-option_29000 = 29000\n+option_29000 = changed\n"));
        // Nothing in common at all: still quick and small.
        let other: String = (0..30_000).map(|i| format!("other {i}\n")).collect();
        let d = unified_diff("a", "b", &old, &other, 3);
        assert_eq!(d.lines().filter(|l| l.starts_with('-')).count(), 30_001);
    }
}
