//! One container of a pod as a host process: resolve the image, environment and
//! entrypoint, start it, probe it, record how it ended, and restart it as the pod's restart
//! policy says.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::{Api, api::ListParams};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    env::{self, EnvContext, Lookup, Sources},
    pods::{PodCtx, Stop, now, record, sleep_or_stop, wait_stop},
    probe,
    process::{self, MARKER_VAR},
    runlog,
    status::{State, Terminated},
};

mod termination_message;

use termination_message::{custom_message_path, modified, termination_message};

pub(crate) enum Outcome {
    /// Ran to an end the restart policy accepts, with this exit code.
    Finished(i32),
    Stopped,
}

enum ProbeEvent {
    Ready(bool),
    Started,
    LivenessFailed(String),
}

/// Runs one container until it finishes for good or the pod stops, restarting it as the
/// restart policy says.
pub(crate) async fn run_container(
    ctx: Arc<PodCtx>,
    c: Container,
    idx: usize,
    init: bool,
    policy: String,
    mut stop_rx: watch::Receiver<Option<Stop>>,
) -> Outcome {
    let shared = ctx.shared.clone();
    let image = c.image.clone().unwrap_or_default();
    let log_path = ctx.dir.join("logs").join(format!("{}.log", c.name));
    let msg_path = ctx.dir.join(format!("{}.termination-log", c.name));
    let mut streak = 0u32;
    let mut pull_failures = 0u32;
    let mut first_start = true;
    let mut last_failure: Option<String> = None;
    // Which bytes of the (appended) log file are which run; kept across agent restarts.
    let mut runs = runlog::read(&log_path);
    let set_waiting = |reason: &str, message: Option<String>| {
        let reason = reason.to_owned();
        shared.update(init, idx, move |r| {
            r.state = State::Waiting { reason, message };
            r.ready = false;
        });
    };
    loop {
        if stop_rx.borrow().is_some() {
            return Outcome::Stopped;
        }
        // The image decides the program.
        let Some(exe) = ctx.agent.images.resolve(&image).map(str::to_owned) else {
            let reason = if pull_failures == 0 { "ErrImagePull" } else { "ImagePullBackOff" };
            if pull_failures == 0 {
                record(
                    &ctx,
                    true,
                    "Failed",
                    format!("Failed to pull image \"{image}\": no local executable in the node's image map"),
                );
            }
            set_waiting(
                reason,
                Some(format!(
                    "image \"{image}\" has no local executable in the node's image map (mlops-node --images)"
                )),
            );
            pull_failures += 1;
            let wait = Duration::from_secs(2u64.saturating_pow(pull_failures.min(5)));
            if sleep_or_stop(wait, &mut stop_rx).await.is_some() {
                return Outcome::Stopped;
            }
            continue;
        };
        let mounts = match claim_mounts(&ctx, &c).await {
            Ok(m) => m,
            Err(Waiting { reason, message }) => {
                set_waiting(&reason, Some(message));
                if sleep_or_stop(Duration::from_millis(500), &mut stop_rx).await.is_some() {
                    return Outcome::Stopped;
                }
                continue;
            }
        };
        let prepared = container_env(&ctx, &c).await.and_then(|env| Ok((env, working_dir(&c, &ctx.dir)?)));
        let (env, cwd) = match prepared {
            Ok(prepared) => prepared,
            Err(Waiting { reason, message }) => {
                if last_failure.as_deref() != Some(message.as_str()) && reason != "ContainerCreating" {
                    record(&ctx, true, "Failed", format!("Error: {message}"));
                }
                last_failure = Some(message.clone());
                set_waiting(&reason, Some(message));
                if sleep_or_stop(Duration::from_millis(500), &mut stop_rx).await.is_some() {
                    return Outcome::Stopped;
                }
                continue;
            }
        };
        // Claims' mount paths in the environment and arguments become their host folders.
        let env: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k, crate::volumes::rewrite_paths(&v, &mounts))).collect();
        let (program, args) = match entrypoint(&c, &exe, &env, &ctx).await {
            Ok((program, args)) => {
                (program, args.iter().map(|a| crate::volumes::rewrite_paths(a, &mounts)).collect::<Vec<_>>())
            }
            Err(Waiting { reason, message }) => {
                set_waiting(&reason, Some(message));
                if sleep_or_stop(Duration::from_millis(500), &mut stop_rx).await.is_some() {
                    return Outcome::Stopped;
                }
                continue;
            }
        };
        let _ = std::fs::write(&msg_path, b"");
        let exited_marker = log_path.with_extension("exited");
        let _ = std::fs::remove_file(&exited_marker);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path);
        let log_offset = log.as_ref().ok().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
        runs.current = log_offset;
        if let Err(e) = runlog::write(&log_path, &runs) {
            warn!("recording the run in {}: {e}", log_path.display());
        }
        let hostname =
            ctx.pod.spec.as_ref().and_then(|s| s.hostname.clone()).unwrap_or_else(|| ctx.name.clone());
        let env = process_env(
            &ctx.ip,
            &hostname,
            env,
            [
                ("MLOPS_TERMINATION_MESSAGE_PATH", &msg_path),
                ("MLOPS_POD_DIR", &ctx.dir),
                (MARKER_VAR, &ctx.agent.state_dir),
            ],
        );
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .current_dir(&cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            Err(e) => warn!("opening {}: {e}", log_path.display()),
        }
        if !first_start {
            shared.update(init, idx, |r| r.restart_count += 1);
        }
        first_start = false;
        let started = Instant::now();
        let custom_before = custom_message_path(&c).and_then(modified);
        let started_at = now();
        let spawned = ctx.agent.spawner.spawn(cmd).await;
        let terminated = match spawned {
            Err(e) => Terminated {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(format!("failed to start {program}: {e}")),
                started_at: None,
                finished_at: now(),
                container_id: String::new(),
            },
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                let container_id = format!("mlops-node://{}/{pid}", ctx.agent.node);
                info!(pod = %format!("{}/{}", ctx.ns, ctx.name), container = %c.name, pid, program = %program, "started");
                record(
                    &ctx,
                    false,
                    "Started",
                    format!("Started container {} (pid {pid}, {program})", c.name),
                );
                let has_readiness = c.readiness_probe.is_some() && !init;
                let has_startup = c.startup_probe.is_some() && !init;
                let state_started_at = started_at.clone();
                let cid = container_id.clone();
                shared.update(init, idx, move |r| {
                    r.state = State::Running { started_at: state_started_at };
                    r.container_id = Some(cid);
                    r.image_id = format!("file://{}", exe.split_whitespace().next().unwrap_or_default());
                    r.started = !has_startup;
                    r.ready = !has_readiness && !has_startup;
                });
                let (probe_tx, mut probe_rx) = mpsc::channel(8);
                let probes = (!init).then(|| {
                    let target = probe::Target {
                        pod_ip: ctx.ip.clone(),
                        container: c.clone(),
                        env: env.clone(),
                        cwd: cwd.clone(),
                    };
                    tokio::spawn(run_probes(c.clone(), target, probe_tx))
                });
                let mut killed_reason: Option<String> = None;
                let mut stop_req: Option<Stop> = None;
                let status = loop {
                    tokio::select! {
                        st = child.wait() => break st,
                        ev = probe_rx.recv(), if killed_reason.is_none() && stop_req.is_none() => match ev {
                            Some(ProbeEvent::Ready(ready)) => shared.update(init, idx, |r| r.ready = ready),
                            Some(ProbeEvent::Started) => shared.update(init, idx, |r| r.started = true),
                            Some(ProbeEvent::LivenessFailed(msg)) => {
                                info!(pod = %ctx.name, container = %c.name, "liveness probe failed, restarting: {msg}");
                                record(&ctx, true, "Unhealthy", msg.clone());
                                record(&ctx, false, "Killing", format!("Container {} failed liveness probe, will be restarted", c.name));
                                killed_reason = Some(msg);
                                shared.update(init, idx, |r| r.ready = false);
                                let grace = termination_grace(&ctx.pod);
                                tokio::spawn(process::terminate_group(pid, grace));
                            }
                            None => {}
                        },
                        s = wait_stop(&mut stop_rx), if stop_req.is_none() => {
                            let s = s.unwrap_or(Stop { grace: Duration::from_secs(1), remove_object: false });
                            stop_req = Some(s);
                            record(&ctx, false, "Killing", format!("Stopping container {}", c.name));
                            shared.update(init, idx, |r| r.ready = false);
                            tokio::spawn(process::terminate_group(pid, s.grace));
                        }
                    }
                };
                if let Some(p) = probes {
                    p.abort();
                }
                // Whatever the container left behind in its group goes with it.
                process::signal_group(pid, libc::SIGKILL);
                let _ = std::fs::write(&exited_marker, b"");
                let (exit_code, signal) = match status {
                    Ok(st) => process::exit_code(st),
                    Err(_) => (255, None),
                };
                info!(pod = %format!("{}/{}", ctx.ns, ctx.name), container = %c.name, exit_code, "exited");
                let message =
                    termination_message(&c, &msg_path, &log_path, log_offset, exit_code, custom_before);
                let t = Terminated {
                    exit_code,
                    signal,
                    reason: if exit_code == 0 { "Completed".into() } else { "Error".into() },
                    message,
                    started_at: Some(started_at),
                    finished_at: now(),
                    container_id,
                };
                if stop_req.is_some() {
                    shared.update(init, idx, |r| {
                        r.state = State::Terminated(t);
                        r.ready = false;
                        r.done = true;
                    });
                    return Outcome::Stopped;
                }
                t
            }
        };
        let exit_code = terminated.exit_code;
        let restart = if init {
            exit_code != 0 && policy.as_str() != "Never"
        } else {
            match policy.as_str() {
                "Never" => false,
                "OnFailure" => exit_code != 0,
                _ => true,
            }
        };
        if !restart {
            shared.update(init, idx, |r| {
                r.state = State::Terminated(terminated);
                r.ready = false;
                r.done = true;
            });
            return Outcome::Finished(exit_code);
        }
        // This run becomes lastState: `kubectl logs --previous` shows it from now on.
        let log_end = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(log_offset);
        runs.previous = Some((log_offset, log_end.max(log_offset)));
        if let Err(e) = runlog::write(&log_path, &runs) {
            warn!("recording the run in {}: {e}", log_path.display());
        }
        let delay = ctx.agent.backoff.next_delay(&mut streak, started.elapsed());
        let pod_ref = format!("{}_{}({})", ctx.name, ctx.ns, ctx.uid);
        let cname = c.name.clone();
        if !delay.is_zero() {
            record(
                &ctx,
                true,
                "BackOff",
                format!("Back-off restarting failed container {cname} in pod {pod_ref}"),
            );
        }
        shared.update(init, idx, |r| {
            r.last_state = Some(terminated.clone());
            r.ready = false;
            r.state = if delay.is_zero() {
                State::Terminated(terminated)
            } else {
                State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={cname} pod={pod_ref}",
                        delay.as_secs()
                    )),
                }
            };
        });
        if sleep_or_stop(delay, &mut stop_rx).await.is_some() {
            return Outcome::Stopped;
        }
    }
}

fn termination_grace(pod: &Pod) -> Duration {
    let secs = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// A reason to keep the container waiting, with the message users see.
struct Waiting {
    reason: String,
    message: String,
}

/// The container's mounts of PersistentVolumeClaims, as (mount path, host folder); the
/// container waits while a claim is unbound or not backed by a host folder.
async fn claim_mounts(ctx: &PodCtx, c: &Container) -> Result<Vec<(String, String)>, Waiting> {
    let names = crate::volumes::claim_names(&ctx.pod);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.agent.client.clone(), &ctx.ns);
    let pvs: Api<PersistentVolume> = Api::all(ctx.agent.client.clone());
    let api_err = |e: kube::Error| Waiting { reason: "ContainerCreating".into(), message: e.to_string() };
    let mut claims = crate::volumes::Claims::new();
    for name in names {
        let pvc = pvcs.get_opt(&name).await.map_err(api_err)?;
        let volume = pvc.as_ref().and_then(|p| p.spec.as_ref()?.volume_name.clone());
        let pv = match volume {
            Some(v) => pvs.get_opt(&v).await.map_err(api_err)?,
            None => None,
        };
        let folder = crate::volumes::host_folder(&name, pvc.as_ref(), pv.as_ref())
            .map_err(|message| Waiting { reason: "ContainerCreating".into(), message })?;
        claims.insert(name, folder);
    }
    Ok(crate::volumes::host_mounts(&ctx.pod, c, &claims))
}

/// The container's variables: ConfigMaps and Secrets fetched, then resolved.
async fn container_env(ctx: &PodCtx, c: &Container) -> Result<Vec<(String, String)>, Waiting> {
    let (cm_names, secret_names) = env::referenced_sources(c);
    let mut sources = Sources::default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.agent.client.clone(), &ctx.ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.agent.client.clone(), &ctx.ns);
    let api_err =
        |e: kube::Error| Waiting { reason: "CreateContainerConfigError".into(), message: e.to_string() };
    for n in cm_names {
        if let Some(cm) = cms.get_opt(&n).await.map_err(api_err)? {
            sources.config_maps.insert(n, cm.data.unwrap_or_default());
        }
    }
    for n in secret_names {
        if let Some(s) = secrets.get_opt(&n).await.map_err(api_err)? {
            let mut data: BTreeMap<String, String> = s.string_data.unwrap_or_default();
            for (k, v) in s.data.unwrap_or_default() {
                data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            sources.secrets.insert(n, data);
        }
    }
    let ectx = EnvContext {
        pod_ip: ctx.ip.clone(),
        host_ip: ctx.agent.host_ip.clone(),
        node_name: ctx.agent.node.clone(),
    };
    let vars = env::resolve_env(&ctx.pod, c, &ectx, &sources)
        .map_err(|e| Waiting { reason: "CreateContainerConfigError".into(), message: e.to_string() })?;
    let headless = headless_services(ctx).await?;
    let mut out = Vec::with_capacity(vars.len());
    for (k, v) in vars {
        let v = rewrite(ctx, &headless, &v)?;
        out.push((k, v));
    }
    Ok(out)
}

async fn headless_services(ctx: &PodCtx) -> Result<HashSet<String>, Waiting> {
    let api: Api<Service> = Api::namespaced(ctx.agent.client.clone(), &ctx.ns);
    let list = api.list(&ListParams::default()).await.map_err(|e| Waiting {
        reason: "CreateContainerConfigError".into(),
        message: format!("listing services: {e}"),
    })?;
    Ok(list
        .items
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref()) == Some("None"))
        .filter_map(|s| s.metadata.name)
        .collect())
}

fn rewrite(ctx: &PodCtx, headless: &HashSet<String>, value: &str) -> Result<String, Waiting> {
    let names = ctx.agent.hostnames.lock().expect("hostnames lock").clone();
    let lookup = |host: &str, sub: &str| {
        if !headless.contains(sub) {
            return Lookup::NotAName;
        }
        match names.get(&(ctx.ns.clone(), host.to_owned(), sub.to_owned())) {
            Some(ip) => Lookup::Ip(ip.clone()),
            None => Lookup::Pending,
        }
    };
    env::rewrite_hostnames(value, &ctx.ns, &lookup).map_err(|name| Waiting {
        reason: "ContainerCreating".into(),
        message: format!("waiting for a pod behind headless name {name}"),
    })
}

/// Program and arguments: the container's command if it has one (a command naming the
/// image's program by its file name runs the mapped executable), else the image's
/// executable; `$(VAR)` references expanded and headless names rewritten.
async fn entrypoint(
    c: &Container,
    exe: &str,
    env: &[(String, String)],
    ctx: &PodCtx,
) -> Result<(String, Vec<String>), Waiting> {
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut exe_parts = exe.split_whitespace().map(str::to_owned);
    let exe_prog = exe_parts.next().unwrap_or_default();
    let exe_args: Vec<String> = exe_parts.collect();
    let command = c.command.clone().unwrap_or_default();
    let args: Vec<String> = c.args.iter().flatten().map(|a| env::expand(a, &vars)).collect();
    let (program, mut argv) = match command.split_first() {
        Some((first, rest)) => {
            let first = env::expand(first, &vars);
            let same_program = Path::new(&first).file_name() == Path::new(&exe_prog).file_name();
            let program =
                if process::find_program(&first).is_none() && same_program { exe_prog } else { first };
            (program, rest.iter().map(|a| env::expand(a, &vars)).collect::<Vec<_>>())
        }
        None => (exe_prog, exe_args),
    };
    argv.extend(args);
    if argv.iter().any(|a| a.contains('.')) {
        let headless = headless_services(ctx).await?;
        argv = argv.iter().map(|a| rewrite(ctx, &headless, a)).collect::<Result<_, _>>()?;
    }
    Ok((program, argv))
}

/// The container's working directory, created when missing as container runtimes do: an
/// absolute `workingDir` is that host path, a relative one lies below the pod directory,
/// none is the pod directory.
fn working_dir(c: &Container, pod_dir: &Path) -> Result<PathBuf, Waiting> {
    let dir = match c.working_dir.as_deref() {
        None | Some("") => return Ok(pod_dir.to_path_buf()),
        // Joining an absolute path yields that path.
        Some(w) => pod_dir.join(w),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Waiting {
        reason: "CreateContainerError".into(),
        message: format!("cannot create working directory {}: {e}", dir.display()),
    })?;
    Ok(dir)
}

/// What a container's processes and its exec probes see on top of the host environment:
/// `POD_IP` and `HOSTNAME` (the container's own variables may override them), its variables,
/// then the agent's (`MLOPS_*`, which it may not).
fn process_env(
    pod_ip: &str,
    hostname: &str,
    container: Vec<(String, String)>,
    agent: [(&str, &Path); 3],
) -> Vec<(String, String)> {
    let mut env =
        vec![("POD_IP".to_owned(), pod_ip.to_owned()), ("HOSTNAME".to_owned(), hostname.to_owned())];
    env.retain(|(k, _)| !container.iter().any(|(n, _)| n == k));
    env.extend(container);
    for (k, v) in agent {
        env.retain(|(n, _)| n != k);
        env.push((k.to_owned(), v.display().to_string()));
    }
    env
}

/// Startup, then readiness and liveness, each on its own schedule.
async fn run_probes(c: Container, target: probe::Target, tx: mpsc::Sender<ProbeEvent>) {
    if let Some(p) = &c.startup_probe {
        let t = probe::timing(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut failures = 0;
        loop {
            match probe::run_once(p, &target).await {
                Ok(()) => break,
                Err(msg) => {
                    failures += 1;
                    if failures >= t.failure_threshold {
                        let _ =
                            tx.send(ProbeEvent::LivenessFailed(format!("Startup probe failed: {msg}"))).await;
                        return;
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
        let _ = tx.send(ProbeEvent::Started).await;
        if c.readiness_probe.is_none() {
            let _ = tx.send(ProbeEvent::Ready(true)).await;
        }
    }
    let readiness = c.readiness_probe.clone().map(|p| {
        let (tx, target) = (tx.clone(), target.clone());
        tokio::spawn(async move {
            let t = probe::timing(&p);
            tokio::time::sleep(t.initial_delay).await;
            let mut tracker = probe::Tracker::default();
            loop {
                let ok = probe::run_once(&p, &target).await.is_ok();
                if let Some(state) = tracker.record(ok, &t)
                    && tx.send(ProbeEvent::Ready(state)).await.is_err()
                {
                    return;
                }
                tokio::time::sleep(t.period).await;
            }
        })
    });
    struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            if let Some(h) = &self.0 {
                h.abort();
            }
        }
    }
    let _readiness = AbortOnDrop(readiness);
    if let Some(p) = &c.liveness_probe {
        let t = probe::timing(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut tracker = probe::Tracker::default();
        loop {
            let result = probe::run_once(p, &target).await;
            let msg = result.as_ref().err().cloned().unwrap_or_default();
            if tracker.record(result.is_ok(), &t) == Some(false) {
                let _ = tx.send(ProbeEvent::LivenessFailed(format!("Liveness probe failed: {msg}"))).await;
                return;
            }
            tokio::time::sleep(t.period).await;
        }
    }
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests;
