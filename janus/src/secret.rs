//! Secrets janus hands to the nodes it starts: admin tokens and seeds from the operating system's
//! random source (an error when it has none, never a weaker fallback), and the files that hold them
//! (mode 0600, written atomically, never through a symlink, in directories only their owner reads).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Fills `buf` from the OS's random source (`getrandom(2)`, or `/dev/urandom` on kernels without it).
pub fn random_bytes(buf: &mut [u8]) -> anyhow::Result<()> {
    entropy_or_error(getrandom::fill(buf))
}

fn entropy_or_error(result: Result<(), getrandom::Error>) -> anyhow::Result<()> {
    result.map_err(|e| {
        anyhow::anyhow!(
            "the operating system gave no random bytes ({e}); janus makes admin tokens and seeds \
             only from the OS's random source, so it stops here"
        )
    })
}

/// `n` random bytes as `2n` lowercase hex characters.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    random_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new admin token: 128 random bits as 32 hex characters.
pub fn random_token() -> anyhow::Result<String> {
    random_hex(16)
}

/// Writes `bytes` to `path` readable by its owner only (0600): into a new temporary file next to it
/// (`O_EXCL`, so never through a planted symlink), then renamed over `path`, so a reader sees the old
/// file or the whole new one.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `dir` (mode 0700) if needed and checks that it is a real directory of this user that
/// nobody else can read or write, as a directory holding secrets must be.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory (a symlink?): refusing to keep secrets there",
            dir.display()
        );
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        bail!(
            "{} belongs to uid {}, not to this user: refusing to keep secrets there",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Where secrets of nodes started outside a cluster (`janus run`, tests) go: `$XDG_RUNTIME_DIR/janus`,
/// else `janus-<uid>` in the temporary directory. Created 0700 and checked by [`private_dir`].
pub fn default_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
    {
        Some(runtime) => runtime.join("janus"),
        None => std::env::temp_dir().join(format!("janus-{}", nix::unistd::geteuid())),
    };
    private_dir(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = random_token().expect("entropy");
        let b = random_token().expect("entropy");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn no_entropy_is_an_error_that_says_so() {
        let e = entropy_or_error(Err(getrandom::Error::UNSUPPORTED)).expect_err("no fallback");
        assert!(e.to_string().contains("no random bytes"), "{e}");
    }

    #[test]
    fn private_files_and_dirs() {
        let base = std::env::temp_dir().join(format!("janus-secret-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("mkdir");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&base).expect("a directory of ours is made private");
        let mode = std::fs::metadata(&base).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        // An existing world-readable file is replaced by a private one.
        let file = base.join("token");
        std::fs::write(&file, "old").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&file, b"new").expect("write_private");
        assert_eq!(std::fs::read(&file).expect("read"), b"new");
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A symlink planted at the path is replaced, its target left alone.
        let target = base.join("elsewhere");
        std::fs::write(&target, "keep").expect("write");
        let link = base.join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_private(&link, b"secret").expect("write_private");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        assert!(!std::fs::symlink_metadata(&link).expect("meta").is_symlink());

        // A symlink is not accepted as a secrets directory.
        let dir_link = base.join("dirlink");
        std::os::unix::fs::symlink(&base, &dir_link).expect("symlink");
        assert!(private_dir(&dir_link).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
