//! Starting and stopping host processes. Every container runs in a session of its own
//! (so the whole process tree can be signalled through its process group), dies with
//! the agent (`PR_SET_PDEATHSIG`), and carries a marker variable. The marker is how the
//! rest is found: the watchdog kills every marked process once the agent is gone, however
//! it ended (descendants of a container do not get the parent-death signal), and a restarted
//! agent kills anything still left.

use std::{
    io::{self, Read},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Stdio,
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

/// The processes (other than this one) that carry `marker` in their environment.
fn marked(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER_VAR}={marker}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// Kills every process that carries this agent's marker (leftovers of a crashed agent,
/// and grandchildren that left their process group). Returns how many were signalled.
pub fn kill_marked(marker: &str) -> usize {
    let pids = marked(marker);
    for pid in &pids {
        // SAFETY: kill(2) on a pid read from /proc.
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL);
        }
    }
    pids.len()
}

/// `kill_marked` until a pass finds nothing (a process forked during one pass is caught by
/// the next). Returns how many were signalled in all.
pub fn sweep_marked(marker: &str) -> usize {
    let mut total = 0;
    for _ in 0..50 {
        let killed = kill_marked(marker);
        if killed == 0 {
            break;
        }
        total += killed;
        std::thread::sleep(Duration::from_millis(20));
    }
    total
}

/// Starts the watchdog: this program again (`--watchdog <marker>`), in a session of its own
/// so that signals to the agent's process group leave it alone. It holds the read end of a
/// pipe whose write end only this agent holds; the kernel closes that when the agent exits,
/// even by SIGKILL, and the watchdog then kills every marked process. Keep the returned
/// handle open for the agent's whole life.
pub fn start_watchdog(marker: &str) -> io::Result<std::process::ChildStdin> {
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("mlops-node-watchdog").arg("--watchdog").arg(marker).stdin(Stdio::piped()).stdout(Stdio::null());
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(io::Error::last_os_error()) } else { Ok(()) });
    }
    cmd.spawn()?.stdin.take().ok_or_else(|| io::Error::other("watchdog without stdin"))
}

/// The watchdog's work: waits until `agent` (the pipe from the agent) closes, then kills
/// every process carrying `marker`. Returns how many it killed.
pub fn watchdog(mut agent: impl Read, marker: &str) -> usize {
    let mut buf = [0u8; 64];
    loop {
        match agent.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sweep_marked(marker)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_kills_the_whole_marked_tree_once_the_agent_is_gone() {
        let marker = format!("/tmp/mlops-node-watchdog-test-{}", std::process::id());
        // A container whose children outlive it in another session, out of reach of the
        // group kill and without the parent-death signal.
        let mut container = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 60 & sleep 60 & wait"])
            .env(MARKER_VAR, &marker)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while marked(&marker).len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(marked(&marker).len(), 3, "sh and two sleeps");
        let (reader, writer) = std::io::pipe().unwrap();
        let marker_ = marker.clone();
        let watching = std::thread::spawn(move || watchdog(reader, &marker_));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!watching.is_finished(), "the watchdog waits while the agent lives");
        drop(writer);
        assert_eq!(watching.join().unwrap(), 3);
        let _ = container.wait();
        assert!(marked(&marker).is_empty());
    }
}
