//! `berth backup bundle --to DIR`: copies the running berth binary together with the dynamic
//! loader and the shared libraries it has loaded into DIR, so that it runs inside any image with
//! `DIR/ld.so --library-path DIR DIR/berth ...`, whatever that image's own libraries are.
//!
//! This is how a Kubernetes backup Job runs berth inside the PostgreSQL image whose `pg_dump`
//! matches the server: an init container (berth's image) bundles into an emptyDir, the main
//! container (the PostgreSQL image) runs the bundle.

use std::path::{Path, PathBuf};

use super::BackupError;

/// The loader's name in a bundle, whatever the architecture calls it.
pub const LOADER: &str = "ld.so";
/// The binary's name in a bundle.
pub const BINARY: &str = "berth";

/// The shared objects a process has mapped, from the text of its `/proc/<pid>/maps`: the loader
/// first, then the libraries, each once, in order of appearance.
pub fn mapped_libraries(maps: &str) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut loader = None;
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode pathname
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let name = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.contains(".so") {
            continue;
        }
        let p = PathBuf::from(path);
        if name.starts_with("ld-linux") || name.starts_with("ld64.so") || name == "ld.so" {
            loader.get_or_insert(p);
        } else if !libs.contains(&p) {
            libs.push(p);
        }
    }
    (loader, libs)
}

fn io(doing: String) -> impl FnOnce(std::io::Error) -> BackupError {
    move |source| BackupError::Io { doing, source }
}

fn copy_executable(from: &Path, to: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    // A previous bundle may be there read-only: replace it.
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).map_err(io(format!(
        "copying {} to {}",
        from.display(),
        to.display()
    )))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("making {} executable", to.display())))
}

/// Writes the bundle into `dir` (created when missing) and returns the files written.
pub fn bundle(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(io(
        "reading /proc/self/maps (berth backup bundle needs Linux)".into(),
    ))?;
    let (loader, libs) = mapped_libraries(&maps);
    let Some(loader) = loader else {
        return Err(BackupError::Io {
            doing: "finding the dynamic loader: berth is statically linked, run it directly instead of bundling it".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    };
    let exe = std::env::current_exe().map_err(io("finding berth's own executable".into()))?;
    let mut written = Vec::new();
    let mut put = |from: &Path, name: &str| -> Result<(), BackupError> {
        let to = dir.join(name);
        copy_executable(from, &to)?;
        written.push(to);
        Ok(())
    };
    put(&exe, BINARY)?;
    put(&loader, LOADER)?;
    for lib in &libs {
        if let Some(name) = lib.file_name().and_then(|n| n.to_str()) {
            put(lib, name)?;
        }
    }
    Ok(written)
}

/// Bundles another berth executable (`exe`, dynamically linked like this process) with this
/// process's loader and libraries, which are the ones `exe` needs when both are the same build.
pub fn bundle_binary(exe: &Path, dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut written = bundle(dir)?;
    let to = dir.join(BINARY);
    copy_executable(exe, &to)?;
    if !written.contains(&to) {
        written.push(to);
    }
    Ok(written)
}

/// The command that runs a bundle at `dir` in another image: loader, library path, binary.
pub fn command(dir: &str) -> Vec<String> {
    vec![
        format!("{dir}/{LOADER}"),
        "--library-path".into(),
        dir.to_string(),
        format!("{dir}/{BINARY}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_loader_and_libraries_once() {
        let maps = "\
55d0 r--p 00000000 08:01 1 /usr/local/bin/berth
7f00 r--p 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f01 r-xp 00001000 08:01 2 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f02 r--p 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6
7f03 rw-p 00000000 00:00 0 
7f04 r--p 00000000 08:01 4 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f05 rw-p 00000000 00:00 0 [stack]
7f06 r--p 00000000 00:00 0 [vdso]
";
        let (loader, libs) = mapped_libraries(maps);
        assert_eq!(
            loader.as_deref(),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
        );
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ]
        );
    }

    #[test]
    fn bundle_runs_through_its_own_loader() {
        let dir = tempfile::tempdir().unwrap();
        let files = bundle(dir.path()).unwrap();
        assert!(files.iter().any(|f| f.ends_with(LOADER)), "{files:?}");
        // The test binary itself was bundled: run it through the bundled loader and libraries.
        let cmd = command(dir.path().to_str().unwrap());
        let out = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["--list"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}
