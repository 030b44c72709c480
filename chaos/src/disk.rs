//! A full disk for a node: its data dir lives on a small tmpfs (mounted by the harness, which
//! needs root), and the fault fills it with a filler file until the kernel answers ENOSPC.

use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of a node's tmpfs when a scenario fills disks.
pub const TMPFS_MB: u64 = 256;
const FILLER: &str = "chaos-disk-filler";

/// Whether this process may mount filesystems.
pub fn can_mount() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

/// Mounts a `TMPFS_MB` tmpfs on `dir` (created if missing).
pub fn mount_small(dir: &Path) -> anyhow::Result<()> {
    if !can_mount() {
        bail!(
            "a full-disk fault needs a small filesystem for the node's data dir: run as root \
             (to mount a tmpfs), or choose a scenario without disk-full"
        );
    }
    std::fs::create_dir_all(dir)?;
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_MB}m"), "tmpfs"])
        .arg(dir)
        .status()
        .context("running mount")?;
    if !st.success() {
        bail!("mount -t tmpfs on {} failed: {st}", dir.display());
    }
    Ok(())
}

pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// Writes a filler file into `dir` until the filesystem is full; returns its path.
pub fn fill(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(FILLER);
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0xA5u8; 1 << 20];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e).context("filling the disk"),
        }
    }
    // a partial block may still fit: fill to the last byte
    let small = [0u8; 4096];
    while f.write(&small).unwrap_or(0) > 0 {}
    let _ = f.sync_all();
    Ok(path)
}
