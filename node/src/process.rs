//! Starting and stopping host processes. Every container runs in a session of its own
//! (so the whole process tree can be signalled through its process group), dies with
//! the agent (`PR_SET_PDEATHSIG`), and carries a marker variable so that a restarted
//! agent can find and kill anything a crashed one left behind.

use std::{
    io,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use tokio::{process::Child, sync::oneshot};

/// The environment variable that marks a process as started by an agent; its value is
/// the agent's state directory.
pub const MARKER_VAR: &str = "MLOPS_LOCAL_NODE_AGENT";

type Job = (tokio::process::Command, oneshot::Sender<io::Result<Child>>);

/// Spawns processes from one long-lived thread: `PR_SET_PDEATHSIG` fires when the thread
/// that forked the child exits, so it must not be a pool thread that may go idle and end.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Job>,
}

impl Spawner {
    pub fn new(handle: tokio::runtime::Handle) -> Spawner {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                let _guard = handle.enter();
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the spawner thread");
        Spawner { tx }
    }

    /// Spawns `cmd` in a new session that receives SIGKILL when the agent dies.
    pub async fn spawn(&self, mut cmd: tokio::process::Command) -> io::Result<Child> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The agent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send((cmd, reply)).map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

/// Sends `signal` to every process of the group led by `pgid`.
pub fn signal_group(pgid: u32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
        unsafe {
            libc::kill(-(pgid as libc::pid_t), signal);
        }
    }
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pgid > 1 && unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0
}

/// SIGTERM to the group, up to `grace` for it to go, then SIGKILL.
pub async fn terminate_group(pgid: u32, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pgid, libc::SIGKILL);
}

/// Kills every process that carries this agent's marker (leftovers of a crashed agent,
/// and grandchildren that left their process group). Returns how many were signalled.
pub fn kill_marked(marker: &str) -> usize {
    let needle = format!("{MARKER_VAR}={marker}");
    let me = std::process::id();
    let mut killed = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            // SAFETY: kill(2) on a pid read from /proc.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// Resolves a program name through `PATH` (as `execvp` would), for the entrypoint rules.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = Path::new(name);
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Exit code and signal of a finished process, the way container runtimes report them
/// (128 + signal when killed by one).
pub fn exit_code(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (255, None),
    }
}
