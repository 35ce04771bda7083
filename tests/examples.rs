//! Every manifest in examples/ is accepted by the real API server (created for real in a
//! test namespace, not only dry-run), so none of them rots.

use testkit::{TestEnv, install_crds, output_text, repo_root};

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn every_example_is_accepted() {
    let env = TestEnv::start("examples").await;
    install_crds();
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "a minimal and an annotated example per kind: {files:?}");
    for kind in ["trainingjob", "modelversion", "inferenceservice"] {
        for flavour in ["minimal", "annotated"] {
            assert!(dir.join(format!("{kind}-{flavour}.yaml")).exists(), "examples/{kind}-{flavour}.yaml");
        }
    }
    // The demo's manifests carry placeholders that hack/demo.sh fills in.
    let demo = dir.join("demo");
    for f in std::fs::read_dir(&demo).unwrap().map(|e| e.unwrap().path()) {
        let text = std::fs::read_to_string(&f).unwrap();
        let filled = text
            .replace("__DATASET__", "file:///tmp/iris.csv")
            .replace("__OUTPUT__", "file:///tmp/models")
            .replace("__ARTIFACT__", "file:///tmp/models/iris-r1/model.json")
            .replace("__DIGEST__", &format!("sha256:{}", "a".repeat(64)));
        let out = env.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&filled));
        assert!(out.status.success(), "{}: {}", f.display(), output_text(&out));
    }
    for f in files {
        let path = f.to_string_lossy().to_string();
        let out = env.kubectl(&["apply", "--server-side", "-f", &path], None);
        assert!(out.status.success(), "{path}: {}", output_text(&out));
    }
    let out = env.kubectl(&["get", "mlops", "-o", "name"], None);
    let listed = output_text(&out);
    for name in [
        "trainingjob.mlops.dev/iris",
        "modelversion.mlops.dev/iris-annotated",
        "inferenceservice.mlops.dev/iris",
    ] {
        assert!(listed.contains(name), "`kubectl get mlops` lists {name}: {listed}");
    }
}
