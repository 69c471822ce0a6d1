//! One child process that can be killed, terminated and started again with the same command
//! line. A watchdog (a shell loop) kills it if the process that started it dies first, so no
//! node or redis-server outlives an interrupted bench, chaos run or test.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::HarnessError;

/// A command line, and its child process while it runs. Dropping it kills the child.
#[derive(Debug)]
pub struct Process {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    inherit_stderr: bool,
    /// Removed by the watchdog if the parent dies (the parent removes it otherwise).
    cleanup: Option<PathBuf>,
    child: Option<Child>,
}

impl Process {
    /// `program args…`, with `RUST_LOG=warn`, no stdin, stdout and stderr discarded, and none
    /// of the caller's `TIM_*` variables: the child takes only what it is told.
    pub fn new<A: Into<OsString>>(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = A>,
    ) -> Process {
        Process {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: vec![("RUST_LOG".into(), "warn".into())],
            inherit_stderr: false,
            cleanup: None,
            child: None,
        }
    }

    /// Sets an environment variable of the child.
    pub fn env(mut self, key: &str, value: &str) -> Process {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Lets the child write to this process's stderr.
    pub fn inherit_stderr(mut self) -> Process {
        self.inherit_stderr = true;
        self
    }

    /// A directory the watchdog removes if this process dies without cleaning up.
    pub(crate) fn cleanup_dir(mut self, dir: &Path) -> Process {
        self.cleanup = Some(dir.to_path_buf());
        self
    }

    /// The program's file name, for messages.
    pub fn name(&self) -> String {
        let name = self.program.file_name().unwrap_or(self.program.as_os_str());
        name.to_string_lossy().into_owned()
    }

    /// Starts the child (killing the previous one, if any) and its watchdog.
    pub fn start(&mut self) -> Result<(), HarnessError> {
        self.kill();
        let mut cmd = Command::new(&self.program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TIM_") {
                cmd.env_remove(&k);
            }
        }
        let stderr = if self.inherit_stderr { Stdio::inherit() } else { Stdio::null() };
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child =
            cmd.spawn().map_err(|source| HarnessError::Spawn { program: self.name(), source })?;
        watchdog(child.id(), self.cleanup.as_deref());
        self.child = Some(child);
        Ok(())
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether there is no running child (never started, stopped, or exited by itself).
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            None => true,
            Some(c) => !matches!(c.try_wait(), Ok(None)),
        }
    }

    /// SIGKILL: no drain, no cleanup. Waits for the child to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for the child to exit (killing it after that).
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, HarnessError> {
        let Some(mut c) = self.child.take() else {
            return Err(HarnessError::Exited(self.name()));
        };
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(HarnessError::Stuck { what: self.name(), within: grace });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills `child` once this process is gone (and removes `cleanup`), or ends with the child.
fn watchdog(child: u32, cleanup: Option<&Path>) {
    let me = std::process::id();
    let mut script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 0.5; done; \
         kill -9 {child} 2>/dev/null"
    );
    if let Some(dir) = cleanup {
        script += &format!("; kill -0 {me} 2>/dev/null || rm -rf '{}'", dir.display());
    }
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
