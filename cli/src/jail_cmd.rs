//! `jailsync jail …`: the seed's mkjail/umkjail, done right.

use clap::Subcommand;

use crate::Global;

#[derive(Subcommand, Debug)]
pub enum JailCmd {
    /// Show the state of each mount point of a jail.
    Status { jail: std::path::PathBuf },
}

pub fn run(cmd: JailCmd, _global: &Global) -> anyhow::Result<u8> {
    match cmd {
        JailCmd::Status { jail } => {
            anyhow::bail!("{}: jail status is not implemented yet", jail.display())
        }
    }
}
