//! What a push session reports in DONE, summed over its phases, and configuration
//! protection's end on each tree once it is switched (as after a local upgrade).

use crate::fsx;
use crate::protect::{Decisions, Rules, Verdict};
use crate::sync::{self, Tree};

use super::Result;

/// Configuration protection of a push: the rules, each tree's decisions, each tree's name.
pub(super) type Protecting<'a> = (&'a Rules, &'a [Decisions], &'a [Vec<u8>]);

/// What DONE reports, over every phase.
#[derive(Default)]
pub(super) struct Sum {
    pub(super) window: std::time::Duration,
    pub(super) changes: u64,
    pub(super) bytes: u64,
    pub(super) procs: u32,
    pub(super) n_err: u32,
    pub(super) errors: String,
    pub(super) tally: [u32; 3],
}

impl Sum {
    /// One phase switched: its figures and errors, and configuration protection's end as
    /// after a local upgrade (the jail's versions of kept files written beside them, the new
    /// base recorded).
    pub(super) fn add(
        &mut self,
        trees: &[Tree],
        report: &sync::Report,
        changes: u64,
        state: &crate::journal::StateDir,
        protect: Option<Protecting<'_>>,
    ) -> Result<()> {
        self.window += report.switch_window;
        self.changes += changes;
        self.bytes += report.bytes_written();
        self.procs += report.procs.len() as u32;
        for (t, o) in trees.iter().zip(&report.outcomes) {
            for e in &o.errors {
                self.n_err += 1;
                if self.errors.len() < 8192 {
                    self.errors.push_str(&format!(
                        "{}: {} (while {})\n",
                        t.dst_path.join(fsx::os(&e.path)).display(),
                        e.error,
                        e.phase.name()
                    ));
                }
            }
            for (p, e) in &t.scan_errors {
                self.n_err += 1;
                if self.errors.len() < 8192 {
                    self.errors
                        .push_str(&format!("{}: {e} (while scan)\n", p.display()));
                }
            }
        }
        // Configuration protection's end, as after a local upgrade: the jail's versions of
        // kept files written beside them, the new base recorded.
        if let Some((rules, decisions, rels)) = protect {
            let owner = fsx::geteuid_is_root();
            for (((t, d), rel), o) in trees.iter().zip(decisions).zip(rels).zip(&report.outcomes) {
                for x in &d.list {
                    self.tally[x.verdict as usize] += 1;
                }
                let unapplied = crate::protect::unapplied(&t.plan, &t.src, &t.dst, o);
                let done = crate::protect::finish(
                    state,
                    rules,
                    rel,
                    &t.src_path,
                    &t.dst_path,
                    &t.src,
                    d,
                    &unapplied,
                    owner,
                )?;
                for (p, e) in done.failed {
                    self.n_err += 1;
                    self.tally[Verdict::KeptNew as usize] -= 1;
                    if self.errors.len() < 8192 {
                        self.errors.push_str(&format!(
                            "{}: {e} (while writing the jail's version of a kept configuration file)\n",
                            t.dst_path.join(fsx::os(&p)).display()
                        ));
                    }
                }
                // Not an error, but the admin must hear of it: it rides with the errors.
                for (from, to) in done.set_aside {
                    if self.errors.len() < 8192 {
                        self.errors.push_str(&format!(
                            "{}: not written by jailsync: kept as {} (note)\n",
                            t.dst_path.join(fsx::os(&from)).display(),
                            t.dst_path.join(fsx::os(&to)).display()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
