use super::termination_message::tail_text;
use super::*;

#[test]
fn log_tail_keeps_last_lines_within_limits() {
    let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
    let t = tail_text(&text);
    assert!(t.starts_with("line 120"));
    assert!(t.ends_with("line 199"));
    let long = "x".repeat(5000);
    assert_eq!(tail_text(&long).len(), 2048);
}

#[test]
fn termination_message_file_then_log_fallback() {
    let dir = std::env::temp_dir().join(format!("mlops-node-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let msg = dir.join("msg");
    let log = dir.join("log");
    std::fs::write(&log, "old run\nboom: bad data\n").unwrap();
    let mut c: Container = serde_json::from_value(serde_json::json!({"name": "c"})).unwrap();
    std::fs::write(&msg, "").unwrap();
    assert_eq!(termination_message(&c, &msg, &log, 8, 1, None), None);
    c.termination_message_policy = Some("FallbackToLogsOnError".into());
    assert_eq!(termination_message(&c, &msg, &log, 8, 1, None).as_deref(), Some("boom: bad data"));
    assert_eq!(termination_message(&c, &msg, &log, 8, 0, None), None);
    std::fs::write(&msg, "x".repeat(5000)).unwrap();
    assert_eq!(termination_message(&c, &msg, &log, 0, 0, None).unwrap().len(), 4096);
    // A custom path is read when this run wrote it, never a stale one.
    std::fs::write(&msg, "").unwrap();
    let custom = dir.join("custom-log");
    std::fs::write(&custom, "custom says hi").unwrap();
    c.termination_message_path = Some(custom.display().to_string());
    assert_eq!(termination_message(&c, &msg, &log, 0, 0, None).as_deref(), Some("custom says hi"));
    let unchanged = modified(&custom);
    assert_eq!(termination_message(&c, &msg, &log, 0, 0, unchanged), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn working_dir_is_created_or_the_container_fails() {
    let dir = std::env::temp_dir().join(format!("mlops-node-cwd-{}", std::process::id()));
    let pod_dir = dir.join("pod");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let with = |w: Option<String>| -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "workingDir": w})).unwrap()
    };
    assert_eq!(working_dir(&with(None), &pod_dir).ok(), Some(pod_dir.clone()));
    assert_eq!(working_dir(&with(Some("rel/sub".into())), &pod_dir).ok(), Some(pod_dir.join("rel/sub")));
    let absolute = dir.join("abs/work");
    assert_eq!(
        working_dir(&with(Some(absolute.display().to_string())), &pod_dir).ok(),
        Some(absolute.clone())
    );
    assert!(absolute.is_dir());
    // A folder that cannot be made (here: below a file) keeps the container waiting.
    std::fs::write(dir.join("file"), "").unwrap();
    let Err(w) = working_dir(&with(Some(dir.join("file/sub").display().to_string())), &pod_dir) else {
        panic!("a working directory below a file was accepted");
    };
    assert_eq!(w.reason, "CreateContainerError");
    assert!(w.message.contains("file/sub"), "{}", w.message);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn processes_and_probes_get_the_agent_variables() {
    let container =
        vec![("HOSTNAME".to_owned(), "mine".to_owned()), ("MLOPS_POD_DIR".to_owned(), "x".to_owned())];
    let env = process_env(
        "127.1.0.3",
        "pod",
        container,
        [
            ("MLOPS_TERMINATION_MESSAGE_PATH", Path::new("/p/c.termination-log")),
            ("MLOPS_POD_DIR", Path::new("/p")),
            (MARKER_VAR, Path::new("/state")),
        ],
    );
    let get = |k: &str| env.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("POD_IP"), ["127.1.0.3"]);
    assert_eq!(get("HOSTNAME"), ["mine"]);
    assert_eq!(get("MLOPS_POD_DIR"), ["/p"]);
    assert_eq!(get("MLOPS_TERMINATION_MESSAGE_PATH"), ["/p/c.termination-log"]);
    assert_eq!(get(MARKER_VAR), ["/state"]);
}
