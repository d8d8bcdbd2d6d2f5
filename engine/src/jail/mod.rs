//! Jail management: `mountpoints` file, mount table, bind mounts, chroot/enter.
