//! Where the `tim` executable is, for the tools and tests that start `tim serve` children.
use std::path::{Path, PathBuf};

use super::HarnessError;

/// The environment variable that names the `tim` executable.
pub const TIM_BIN: &str = "TIM_BIN";

/// The `tim` executable: `named` (a `--tim` flag), else `$TIM_BIN`, else the `tim` beside the
/// running executable (for a test binary in `target/<profile>/deps/`, the one in
/// `target/<profile>/`).
pub fn tim_exe(named: Option<&Path>) -> Result<PathBuf, HarnessError> {
    if let Some(path) = named {
        return existing(path.to_path_buf(), "--tim");
    }
    if let Some(path) = std::env::var_os(TIM_BIN) {
        return existing(PathBuf::from(path), TIM_BIN);
    }
    let me = std::env::current_exe()?;
    let mut dir = me.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let beside = dir.join(format!("tim{}", std::env::consts::EXE_SUFFIX));
    existing(beside, "beside this executable")
}

fn existing(path: PathBuf, from: &str) -> Result<PathBuf, HarnessError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NoTim(format!("{} ({from}) is not a file", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_path_must_exist() {
        let err = tim_exe(Some(Path::new("/nonexistent/tim"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/tim (--tim)"), "{msg}");
        assert!(msg.contains("cargo build --release"), "{msg}");
        let me = std::env::current_exe().unwrap();
        assert_eq!(tim_exe(Some(&me)).unwrap(), me);
    }
}
