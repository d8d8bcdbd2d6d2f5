//! The parts of jailsync(1) an admin reads beyond the options clap describes: the
//! configuration file with every key and its default, the filter rules and where they differ
//! from rsync's, the restart report, the audit trail, the environment and the exit status.
//! Plain roff, appended to the page clap_mangen renders.

/// `.SH` sections, in the order a man page has them.
pub const SECTIONS: &str = r#".SH "HOW IT WORKS"
.SS "The switch"
Each destination DST has a \fIhome\fR, a directory private to root beside it,
\fIPARENT\fB/.jailsync\-\fINAME\fR. A run stages the next release whole in \fIHOME\fB/next\fR
(unchanged files hard-linked from the live tree, changed and new ones copied from the jail,
excluded live entries linked across), records a rollback generation, then exchanges
\fIHOME\fB/next\fR and DST with one \fBrenameat2(RENAME_EXCHANGE)\fR: a program starting at any
instant sees the old release or the new one, never a mix, and no path is ever missing or
partial. The old tree becomes \fIHOME\fB/gen\-\fIN\fR. Where something below DST must stay (a
mount point, an immutable entry the release leaves alone) or DST is a mount point or \fB/\fR,
the tree is switched by subtrees around it: one exchange per largest subtree, back to back.
A filesystem without the exchange is refused (\fBJAILSYNC_FSX=portable\fR renames instead).
.SS "Switch by symlink"
With \fB\-\-switch link\fR (or \fBswitch = "link"\fR) DST becomes a symlink to its release in
the home, \fIDST\fB \-> .jailsync\-\fINAME\fB/rel\-\fIN\fR, and each switch is one \fBrename\fR(2) of a new
symlink over it: a running program that resolved its real path (Node, \fB$ORIGIN\fR,
\fB/proc/self/exe\fR) keeps loading from the release it started in. A directory DST is
converted by one exchange (\fB\-\-switch exchange\fR converts back). The home is 0711 while it
holds releases; \fBprune\fR keeps a release processes still run from unless \fB\-\-force\fR.
Tools that do not follow a symlink argument (\fBfind /usr/pkg\fR, \fBtar\fR, backups) see the
link: use \fBfind /usr/pkg/\fR, \fBtar \-h\fR. A mount point or \fB/\fR keeps the exchange.
.SS "Rollback"
\fBjailsync rollback DST\fR switches the newest generation back the same way (\fB\-\-gen N\fR goes
further back; \fBrollback \-\-root ROOT\fR undoes the last \fBupgrade\fR of ROOT, every tree of it).
Protected configuration the admin changed since the sync is carried into the tree switched
back, by the three-way rule of an upgrade: the admin's file stays, and where the restored
release's version differs from what the admin started from, that version is written beside
it as \fINAME\fB.jailsync\-new\fR (\fBconf\-diff\fR shows it); a new file the protection covers
goes with it too. Any other live entry changed since
the sync makes it refuse, naming the entry, unless \fB\-\-force\fR, which keeps the tree it
replaces whole as \fIHOME\fB/kept\-\fIN\fR. Excluded entries
are the live system's: they are carried into the tree switched back. The newest \fB\-\-keep\fR
generations are kept (\fBprune\fR removes older ones); \fB\-\-no\-rollback\fR keeps none.
.SS "History"
\fBjailsync history DST\fR lists the generations of DST, newest first, and under each the
packages its run changed when DST is a package tree:
.PP
.RS 4
.nf
     7  2026\-05\-02T03:00:12Z       42 changes  ...  from /usr/pkg_jail/usr/pkg/pkgdb
        packages: webd\-2.2 \(-> webd\-2.3, +jq\-1.7, \(miless\-590
.fi
.RE
.PP
Generation N is the tree as it was before run N, so what run N changed is generation N against
the tree that replaced it: the next generation kept, or the live tree. \fB\-\-gen N\fR shows that
generation only; \fB\-i\fR adds one line per entry the run changed, in the format of \fBsync \-i\fR
(\fB>f+++++++++\fR created, \fB*deleting\fR removed, \fB.f...p.....\fR mode only), each generation's tree
read as it was live: the metadata a run set in place on a file both trees share, and the
setuid bits taken from a generation's old binaries, are put back from the generation's
records. What a run did not look at is not listed: its excluded paths, mount points below DST,
and entries it switched around. \fB\-\-json\fR gives each generation a \fBpackages\fR object
(database, format, summary, and each package's \fBname\fR with its \fBold\fR and \fBnew\fR version,
null when added or removed) and with \fB\-i\fR a \fBchange\fR object per entry.
\fBrollback \-n \-i DST\fR prints what a rollback would change in the same lines, and the packages
it would take back; \fBrollback \-i\fR prints them before it switches. With several trees, or
\fB\-\-root ROOT\fR, each line names its tree.
.PP
A tree is a package tree when it holds a package database, looked for on both sides, first
found first: a pkgsrc database as the tree itself (its subdirectories hold \fB+CONTENTS\fR, as
\fBupgrade\fR switches \fIusr/pkg/pkgdb\fR or \fIvar/db/pkg\fR), or at \fIpkgdb/\fR, \fIusr/pkg/pkgdb/\fR or
\fIvar/db/pkg/\fR inside it; dpkg's \fIvar/lib/dpkg/status\fR, or \fIstatus\fR when the tree is dpkg's
directory (it holds \fIinfo/\fR). A pkgsrc package is named by the \fB@name\fR line of its \fB+CONTENTS\fR
(its directory's name without one), its architecture by \fBMACHINE_ARCH\fR in \fB+BUILD_INFO\fR, and
shown as \fINAME\fB\-\fIVERSION\fR; a dpkg package is a stanza whose \fBStatus\fR ends in \fBinstalled\fR,
shown as apt spells it, \fINAME\fB=\fIVERSION\fR (\fINAME\fB:\fIARCH\fR where a name is installed for
several architectures). A database a run excluded is not its tree's: after \fBupgrade\fR, whose
prefix run excludes the package database switched on its own, the packages are named by the
history of the database (\fBhistory /usr/pkg/pkgdb\fR), not of \fI/usr/pkg\fR. Nothing below a
tree is read through a symlink.
.SS "Configuration files"
\fBupgrade\fR protects every tree's \fIetc/\fR (and \fB\-\-protect\fR globs, \fBprotect\fR lines of the
jail's \fIjailsync.conf\fR), merging three-way with the jail's version it installed last time,
as dpkg does with conffiles:
.PP
.RS 4
.nf
live file since the last upgrade   jail's version   result
unchanged                          any              the jail's
edited                             unchanged        live kept
edited                             changed          live kept; the jail's as NAME.jailsync\-new
edited                             dropped          live kept
unchanged                          dropped          deleted
.fi
.RE
.PP
Each kept file is named on stderr (one with a \fB.jailsync\-new\fR beside it even under \fB\-q\fR: a
merge is due); \fBjailsync conf\-diff ROOT\fR shows the pending ones as unified diffs. Merge, then
delete the \fB.jailsync\-new\fR file.
.SH "FILTER RULES"
\fB\-\-exclude\fR, \fB\-\-include\fR, \fB\-\-exclude\-from\fR and \fB\-\-filter\fR (of \fBsync\fR, \fBupgrade\fR and \fBverify\fR) take
rsync's rules, for the part of rsync's syntax that makes sense for a tree sync. An excluded path is neither copied nor
deleted: the live system keeps it as it is, in every generation a switch makes.
.TP
\fB\- \fIPATTERN\fR, \fBexclude \fIPATTERN\fR
exclude what matches.
.TP
\fB+ \fIPATTERN\fR, \fBinclude \fIPATTERN\fR
do not exclude what matches. The first rule that matches a path decides, in the order given
on the command line, then the configuration file's \fBfilter\fR and \fBexclude\fR keys, then the
jail's \fBexclude\fR lines.
.TP
\fB\-! \fIPATTERN\fR
the rule applies where the pattern does \fInot\fR match.
.TP
\fB!\fR
clears the rules before it.
.TP
\fBmerge \fIFILE\fR, \fB. \fIFILE\fR
the rules of FILE, one a line (blank lines and lines starting with \fB#\fR or \fB;\fR are
comments). A relative FILE is found from the working directory, as rsync does.
.PP
Patterns are matched as rsync's: \fB*\fR and \fB?\fR never match a \fB/\fR, \fB**\fR does,
\fB[...]\fR classes, \fB\e\fR escapes; a leading \fB/\fR anchors a pattern at the top of the tree;
otherwise one holding a \fB/\fR or \fB**\fR matches the end of the path at any depth and one without
matches the name alone; a trailing \fB/\fR matches directories only; \fIdir\fB/***\fR is the
directory and everything below it. A directory excluded is not looked into: a rule including
something below it has no effect (as in rsync).
.PP
Where jailsync differs from rsync:
.IP \(bu 2
\fB\-\-exclude \fIPATTERN\fR with a \fB/\fR in it (not at the end) is anchored at the top of the tree,
as it always was in jailsync; rsync matches it at any depth. Write \fB\-\-filter '\- \fIPATTERN\fB'\fR
or \fB**/\fIPATTERN\fR for rsync's meaning. \fB\-\-exclude\-from\fR files and \fB\-\-filter\fR rules have rsync's.
.IP \(bu 2
Per-directory merge files (\fB:\fR, \fBdir\-merge\fR), \fBhide\fR, \fBshow\fR, \fBprotect\fR, \fBrisk\fR and
modifiers other than \fB!\fR are refused by name: a sync has no sender and receiver sides.
.IP \(bu 2
There is no \fB\-\-delete\-excluded\fR: an excluded path is always the live system's.
.IP \(bu 2
With \fB\-\-exclude\fR alone the patterns are matched as one set (any match excludes); order
matters only once an include, a filter or a rules file is given.
.SH "RESTART REPORT"
After every run that changes a tree, and on demand with \fBjailsync procs\fR [\fIROOT\fR], jailsync
lists each process that maps a file of any kept generation of a synced tree, or a deleted
file below one (\fB(deleted)\fR in \fI/proc/PID/maps\fR, as needrestart and checkrestart look), with
its systemd service from \fI/proc/PID/cgroup\fR where it runs in one:
.PP
.RS 4
jailsync: pid 812 (webd, webd.service) still uses /usr/.jailsync\-pkg/gen\-4/bin/webd of an
old release: systemctl restart webd.service
.RE
.PP
These lines ask for action, so \fB\-q\fR does not hide them; \fB\-\-json\fR gives a \fBprocess\fR object each.
\fBprocs\fR exits 1 when a process needs a restart. Linux only.
.SH "AUDIT TRAIL"
Each run of \fBsync\fR, \fBupgrade\fR, \fBrollback\fR, \fBprune\fR and \fBpush\fR (not a dry run) sends one line to
the local syslog socket \fI/dev/log\fR (facility daemon; info, warning when some entries
failed, err when the run failed): the command, the uid, the trees, the generation each old
tree became, the counts, the bytes written, the exit status and the result. With no syslog
daemon or journald listening there is no line, and the run goes on as ever.
.PP
.RS 4
jailsync[4711]: command=upgrade uid=0 trees=/usr/pkg,/usr/pkg/pkgdb generations=7,7
created=12 updated=40 type_changed=0 metadata=3 deleted=5 bytes=18234112 exit=0 result=ok
.RE
.SH FILES
.TP
\fI/etc/jailsync.conf\fR
The configuration file (TOML), read when there; \fB\-\-config\fR \fIFILE\fR or \fBJAILSYNC_CONFIG\fR names
another (which must then exist). An unknown key is an error naming its line. A flag or its
environment variable overrides a key; \fBexclude\fR, \fBfilter\fR and \fBprotect\fR add to what the
command line gives. \fBjailsync config\fR prints every setting in force and where it came from.
The keys, with their defaults:
.RS 4
.TP
\fBstate\-dir\fR = "/var/lib/jailsync"
as \fB\-\-state\-dir\fR; the default is /var/lib/jailsync on Linux, /var/db/jailsync on the BSDs, and
/var/db/jailsync (the default of earlier versions) wherever only that one exists.
.TP
\fBkeep\fR = 3
as \fB\-\-keep\fR: rollback generations kept per destination.
.TP
\fBmax\-delete\fR (not set)
as \fB\-\-max\-delete\fR; not set, a run deleting more than half of a destination is refused.
.TP
\fBexclude\fR = []
patterns, as \fB\-\-exclude\fR, for \fBsync\fR, \fBupgrade\fR and \fBpush\fR.
.TP
\fBfilter\fR = []
rules, as \fB\-\-filter\fR (see FILTER RULES), for \fBsync\fR and \fBupgrade\fR.
.TP
\fBprotect\fR = []
configuration globs, as \fBupgrade \-\-protect\fR.
.TP
\fBtrees\fR = []
the trees of \fBupgrade\fR and \fBpush\fR when \fB\-\-tree\fR is not given (before the jail's \fBtree\fR lines
and the detected layout).
.TP
\fBhosts\fR = []
the hosts \fBpush\fR goes to, as \fIHOST\fR:\fIROOT\fR or a bare \fIROOT\fR, when its command line
names none (nor \fB\-\-hosts\-from\fR).
.TP
\fBssh\fR = "ssh"
as \fBpush \-\-ssh\fR.
.TP
\fBswitch\fR (not set)
\fB"link"\fR or \fB"exchange"\fR, as \fB\-\-switch\fR for \fBsync\fR and \fBupgrade\fR; not set, each
destination is switched as it is now (a directory by an exchange, a switch link by a rename).
.RE
.TP
\fIJAIL\fB/jailsync.conf\fR
In a jail: \fBtree \fIREL\fR, \fBprotect \fIGLOB\fR, \fBexclude \fIGLOB\fR and \fBhost \fR[\fIHOST\fB:\fR]\fIROOT\fR
lines (\fB#\fR comments); \fBhost\fR lines are \fBpush\fR's targets when it names none.
.TP
\fISTATE\-DIR\fB/trees/\fR
Per destination: its lock, stat cache, configuration base and rollback records.
.SH ENVIRONMENT
.TP
\fBJAILSYNC_CONFIG\fR
the configuration file, as \fB\-\-config\fR.
.TP
\fBJAILSYNC_STATE_DIR\fR
the state directory, as \fB\-\-state\-dir\fR.
.TP
\fBJAILSYNC_SYSLOG_SOCKET\fR
the socket the audit line goes to instead of \fI/dev/log\fR.
.TP
\fBJAIL\fR
the jail of \fBmkjail\fR, \fBumkjail\fR and \fBsync_pkg\fR (jailsync invoked under those names; default
/usr/pkg_jail).
.SH "EXIT STATUS"
.TP
0
success; in sync (\fBverify\fR); nothing pending (\fBconf\-diff\fR, \fBprocs\fR).
.TP
1
some entries failed, the rest is done; differences (\fBverify\fR); pending merges (\fBconf\-diff\fR);
processes to restart (\fBprocs\fR).
.TP
2
usage error or fatal error: nothing was changed. With \fB\-\-json\fR the last line on stdout is an
\fBerror\fR object.
.TP
128+N
stopped by signal N (SIGINT, SIGTERM, SIGHUP) at a safe point, the live trees whole.
.SH EXAMPLES
A configuration for nightly upgrades, \fI/etc/jailsync.conf\fR:
.PP
.RS 4
.nf
keep = 5
max\-delete = 2000
exclude = ["*.pid", "/var/run/"]
filter = ["+ /etc/ssl/certs/***", "\- /etc/ssl/*"]
.fi
.RE
.PP
Upgrade the live system from the jail, waiting for a run still going, with rsync's statistics:
.PP
.RS 4
jailsync upgrade /usr/pkg_jail \-\-wait \-\-stats
.RE
.PP
What would change, and which daemons still run old code:
.PP
.RS 4
.nf
jailsync upgrade /usr/pkg_jail \-n \-i
jailsync procs
.fi
.RE
.SH "SEE ALSO"
rsync(1), needrestart(1), dpkg(1), pkg_add(1), systemctl(1), syslog(3)
"#;
