//! Bad input is refused at `kubectl apply` with a message a person understands: every
//! fixture in tests/fixtures/invalid is applied to the real API server and must fail with
//! the message its first line names; every fixture in tests/fixtures/valid must pass.

use std::{fs, path::PathBuf};

use testkit::{TestEnv, fixture_expectation, install_crds, output_text, repo_root};

fn fixtures(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files: Vec<_> = fs::read_dir(repo_root().join("tests/fixtures").join(dir))
        .unwrap_or_else(|e| panic!("reading tests/fixtures/{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), fs::read_to_string(&p).unwrap())).collect()
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn invalid_specs_are_refused_with_their_message() {
    let env = TestEnv::start("admission-invalid").await;
    install_crds();
    let cases = fixtures("invalid");
    assert!(cases.len() >= 15, "at least 15 invalid specs are covered, found {}", cases.len());
    let mut failures = Vec::new();
    for (path, text) in &cases {
        let expect =
            fixture_expectation(text).unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()));
        let out = env.kubectl(&["apply", "-f", "-"], Some(text));
        let shown = output_text(&out);
        if out.status.success() {
            failures.push(format!("{}: accepted, expected refusal with {expect:?}", path.display()));
        } else if !shown.contains(expect) {
            failures.push(format!("{}: refused, but the message lacks {expect:?}:\n{shown}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid specs misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn valid_specs_are_accepted() {
    let env = TestEnv::start("admission-valid").await;
    install_crds();
    for (path, text) in fixtures("valid") {
        let out = env.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&text));
        assert!(out.status.success(), "{} was refused: {}", path.display(), output_text(&out));
    }
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn updates_that_break_a_rule_are_refused() {
    let env = TestEnv::start("admission-update").await;
    install_crds();
    for (path, text) in fixtures("invalid-update") {
        let expect = fixture_expectation(&text).expect("an expect line");
        let (first, second) = text.split_once("\n---\n").expect("two documents");
        let out = env.kubectl(&["apply", "-f", "-"], Some(first));
        assert!(
            out.status.success(),
            "{}: the first document was refused: {}",
            path.display(),
            output_text(&out)
        );
        let out = env.kubectl(&["apply", "-f", "-"], Some(second));
        assert!(!out.status.success(), "{}: the update was accepted", path.display());
        assert!(output_text(&out).contains(expect), "{}: {}", path.display(), output_text(&out));
    }
}
