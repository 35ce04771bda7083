//! The local images against their one definition. `hack/build-images.sh` builds each image
//! without a container engine by applying the final stage of its Containerfile itself; these
//! tests read the Containerfiles again, with a reader of their own, and compare:
//!
//! - the Containerfiles' version defaults are the repository's pins (the crate version,
//!   `hack/versions.env`), so a plain `podman build` makes the same image (no tools needed);
//! - each archive in the images index has exactly the config (user, entrypoint, command,
//!   environment, exposed ports, labels, working directory) that its Containerfile gives on
//!   top of its base, and its own layer holds the binaries the Containerfile copies in.
//!
//! Editing a Containerfile without rebuilding, or the builder without the Containerfile
//! (or the other way round), fails the second test. `make test` builds the images first.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Map, Value, json};
use testkit::{output_text, repo_root};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a Containerfile's final stage says about the image.
#[derive(Debug)]
struct Stage {
    from: String,
    config: Map<String, Value>,
    /// Destinations of `COPY --from=<stage>` (binaries built outside the final stage).
    copies: Vec<String>,
    /// ARG defaults of the final stage.
    arg_defaults: BTreeMap<String, String>,
}

/// Joins continued lines and drops comments: (line number, instruction, arguments).
fn instructions(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut buf: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.starts_with('#') || (t.is_empty() && buf.is_none()) {
            continue;
        }
        let (start, mut acc) = buf.take().unwrap_or((i + 1, String::new()));
        if let Some(head) = raw.trim_end().strip_suffix('\\') {
            acc.push_str(head);
            buf = Some((start, acc));
        } else {
            acc.push_str(raw);
            let acc = acc.trim().to_string();
            if !acc.is_empty() {
                let (op, rest) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
                out.push((start, op.to_ascii_uppercase(), rest.trim().to_string()));
            }
        }
    }
    assert!(buf.is_none(), "the Containerfile ends inside a continued line");
    out
}

/// `$NAME`, `${NAME}` and `${NAME:-default}` from `vars`.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').expect("closed ${");
            let (name, default) = match body[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&body[..end], None),
            };
            let value = vars.get(name).filter(|v| !v.is_empty()).cloned();
            out.push_str(&value.or(default.map(str::to_string)).unwrap_or_default());
            rest = &body[end + 1..];
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(vars.get(&after[..len]).map(String::as_str).unwrap_or(""));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

/// `KEY=VALUE KEY2="VALUE 2"` (ENV, LABEL), values substituted.
fn pairs(s: &str, vars: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let (mut cur, mut quoted, mut chars) = (String::new(), false, s.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if chars.peek().is_some() => cur.push(chars.next().unwrap()),
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
        .into_iter()
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("expected KEY=VALUE in {s:?}"));
            (k.to_string(), substitute(v, vars))
        })
        .collect()
}

/// Exec form (a JSON array) or shell form (`/bin/sh -c`).
fn command(s: &str) -> Value {
    match serde_json::from_str::<Vec<String>>(s) {
        Ok(argv) => json!(argv),
        Err(_) => json!(["/bin/sh", "-c", s]),
    }
}

/// The final stage of `file` with `args`, on its base (`built`: the configs expected of the
/// images built before, for a base that is one of them).
fn read_stage(
    file: &str,
    args: &BTreeMap<String, String>,
    built: &BTreeMap<String, Map<String, Value>>,
) -> Stage {
    let text = fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let all = instructions(&text);
    let mut globals = BTreeMap::new();
    let mut last_from = None;
    for (i, (_, op, rest)) in all.iter().enumerate() {
        match op.as_str() {
            "FROM" => last_from = Some(i),
            "ARG" if last_from.is_none() => {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                globals.insert(k.to_string(), args.get(k).cloned().unwrap_or_else(|| v.to_string()));
            }
            _ => {}
        }
    }
    let first = last_from.unwrap_or_else(|| panic!("{file}: no FROM"));
    let from = substitute(all[first].2.split_whitespace().next().unwrap(), &globals);
    let mut config = base_config(&from, built);
    let mut env: Vec<String> = config
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    let mut vars: BTreeMap<String, String> =
        env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
    let (mut copies, mut arg_defaults, mut cmd_set) = (Vec::new(), BTreeMap::new(), false);
    for (line, op, rest) in &all[first + 1..] {
        match op.as_str() {
            "ARG" => {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                arg_defaults.insert(k.to_string(), v.to_string());
                let value = args.get(k).cloned().or_else(|| globals.get(k).filter(|_| v.is_empty()).cloned());
                vars.entry(k.to_string()).or_insert(value.unwrap_or_else(|| v.to_string()));
            }
            "ENV" => {
                for (k, v) in pairs(rest, &vars) {
                    match env.iter_mut().find(|e| e.split_once('=').map(|p| p.0) == Some(&k)) {
                        Some(e) => *e = format!("{k}={v}"),
                        None => env.push(format!("{k}={v}")),
                    }
                    vars.insert(k, v);
                }
            }
            "LABEL" => {
                let labels = config.entry("Labels").or_insert_with(|| json!({}));
                for (k, v) in pairs(rest, &vars) {
                    labels[k] = json!(v);
                }
            }
            "USER" => {
                config.insert("User".into(), json!(substitute(rest, &vars)));
            }
            "WORKDIR" => {
                let dir = substitute(rest, &vars);
                assert!(dir.starts_with('/'), "{file}:{line}: a relative WORKDIR is not checked here");
                config.insert("WorkingDir".into(), json!(dir));
            }
            "EXPOSE" => {
                let ports = config.entry("ExposedPorts").or_insert_with(|| json!({}));
                for p in substitute(rest, &vars).split_whitespace() {
                    let key = if p.contains('/') { p.to_string() } else { format!("{p}/tcp") };
                    ports[key] = json!({});
                }
            }
            "ENTRYPOINT" => {
                config.insert("Entrypoint".into(), command(rest));
                if !cmd_set {
                    config.remove("Cmd");
                }
            }
            "CMD" => {
                config.insert("Cmd".into(), command(rest));
                cmd_set = true;
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                assert!(
                    words.first().is_some_and(|w| w.starts_with("--from=")),
                    "{file}:{line}: the local build only copies binaries from an earlier stage"
                );
                copies.push(substitute(words.last().unwrap(), &vars));
            }
            "RUN" => {}
            other => panic!("{file}:{line}: {other} in the final stage: the local build does not apply it"),
        }
    }
    if !env.is_empty() {
        config.insert("Env".into(), json!(env));
    }
    Stage { from, config, copies, arg_defaults }
}

/// The config of each base image the Containerfiles start from, as the upstream images have
/// it (BuildKit gives `FROM scratch` images the default PATH and `/`).
fn base_config(from: &str, built: &BTreeMap<String, Map<String, Value>>) -> Map<String, Value> {
    let v = match from {
        "scratch" => json!({"Env": [DEFAULT_PATH], "WorkingDir": "/"}),
        "gcr.io/distroless/static-debian12:nonroot" | "gcr.io/distroless/cc-debian12:nonroot" => json!({
            "User": "65532", "WorkingDir": "/home/nonroot",
            "Env": [DEFAULT_PATH, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        }),
        "docker.io/library/debian:bookworm-slim" => json!({"Env": [DEFAULT_PATH], "Cmd": ["bash"]}),
        other => {
            return built
                .get(other)
                .cloned()
                .unwrap_or_else(|| panic!("no known config for the base {other}"));
        }
    };
    v.as_object().unwrap().clone()
}

fn versions_env() -> BTreeMap<String, String> {
    fs::read_to_string(repo_root().join("hack/versions.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn build_images(arg: &str) -> String {
    let out = Command::new(repo_root().join("hack/build-images.sh")).arg(arg).output().expect("bash runs");
    assert!(out.status.success(), "hack/build-images.sh {arg}: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every image the local build makes, in build order: name, Containerfile, build arguments.
fn images() -> Vec<(String, &'static str, BTreeMap<String, String>)> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let pins = versions_env();
    let args = |kv: &[(&str, &String)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    vec![
        (build_images("pause-name"), "images/pause/Containerfile", BTreeMap::new()),
        (
            format!("ghcr.io/mlops-dev/mlops-operator:{version}"),
            "Containerfile",
            args(&[("VERSION", &version)]),
        ),
        (format!("ghcr.io/mlops-dev/mlops-runtime:{version}"), "runtime/Containerfile", BTreeMap::new()),
        ("docker.io/library/python:3.11".into(), "images/python/Containerfile", BTreeMap::new()),
        (
            format!("ghcr.io/mlops-dev/mlserver:{}", pins["MLSERVER_VERSION"]),
            "images/mlserver/Containerfile",
            args(&[
                ("MLSERVER_VERSION", &pins["MLSERVER_VERSION"]),
                ("SCIKIT_LEARN_VERSION", &pins["SCIKIT_LEARN_VERSION"]),
            ]),
        ),
    ]
}

#[test]
fn containerfile_defaults_are_the_repository_pins() {
    // With no build arguments, as a plain `podman build` reads them.
    let mut built = BTreeMap::new();
    for (name, file, args) in images() {
        let stage = read_stage(file, &BTreeMap::new(), &built);
        for (k, pinned) in &args {
            assert_eq!(
                stage.arg_defaults.get(k),
                Some(pinned),
                "{file}: ARG {k} defaults to {:?}, the pin is {pinned:?} (Cargo.toml / hack/versions.env)",
                stage.arg_defaults.get(k)
            );
        }
        built.insert(name, stage.config);
    }
}

/// Members of an uncompressed tar file: name -> (offset of the data, size).
fn tar_members(path: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut members = BTreeMap::new();
    let mut header = [0u8; 512];
    let mut pos = 0u64;
    loop {
        f.seek(SeekFrom::Start(pos)).unwrap();
        if f.read_exact(&mut header).is_err() || header.iter().all(|&b| b == 0) {
            return members;
        }
        let field = |a: usize, b: usize| {
            String::from_utf8_lossy(&header[a..b]).trim_end_matches('\0').trim().to_string()
        };
        let (name, prefix) = (field(0, 100), field(345, 500));
        let size = u64::from_str_radix(&field(124, 136), 8).unwrap_or(0);
        let full = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        members.insert(full.trim_start_matches("./").to_string(), (pos + 512, size));
        pos += 512 + size.div_ceil(512) * 512;
    }
}

fn read_member(path: &Path, members: &BTreeMap<String, (u64, u64)>, name: &str) -> Vec<u8> {
    let &(offset, size) = members.get(name).unwrap_or_else(|| panic!("{}: no {name}", path.display()));
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; size as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn blob_name(digest: &Value) -> String {
    format!("blobs/{}", digest.as_str().unwrap().replace(':', "/"))
}

/// Files in a gzip-compressed layer (via tar, which is on every machine that builds images).
fn layer_files(archive: &Path, member: &str) -> Vec<String> {
    let script = r#"tar -xOf "$1" "$2" | tar -tvz"#;
    let out =
        Command::new("sh").args(["-c", script, "sh"]).arg(archive).arg(member).output().expect("sh runs");
    assert!(out.status.success(), "listing {member} of {}: {}", archive.display(), output_text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn local_images_have_the_config_their_containerfile_says() {
    let index_path = PathBuf::from(build_images("index"));
    let index = fs::read_to_string(&index_path).unwrap_or_else(|e| {
        panic!("{}: {e}: build the images with `hack/build-images.sh build`", index_path.display())
    });
    let archives: BTreeMap<&str, &str> = index.lines().filter_map(|l| l.split_once(' ')).collect();
    let mut built = BTreeMap::new();
    for (name, file, args) in images() {
        let archive = Path::new(archives.get(name.as_str()).unwrap_or_else(|| {
            panic!("{name} is not in {}: run `hack/build-images.sh build`", index_path.display())
        }));
        let stage = read_stage(file, &args, &built);

        let members = tar_members(archive);
        let oci_index: Value = serde_json::from_slice(&read_member(archive, &members, "index.json")).unwrap();
        let desc = &oci_index["manifests"][0];
        assert_eq!(oci_index["manifests"].as_array().map(Vec::len), Some(1), "{name}: one image per archive");
        assert_eq!(desc["annotations"]["io.containerd.image.name"], json!(name), "{name}: name annotation");
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            json!(name.rsplit_once(':').unwrap().1),
            "{name}: the tag (for ctr import --base-name)"
        );
        let manifest: Value =
            serde_json::from_slice(&read_member(archive, &members, &blob_name(&desc["digest"]))).unwrap();
        let config: Value = serde_json::from_slice(&read_member(
            archive,
            &members,
            &blob_name(&manifest["config"]["digest"]),
        ))
        .unwrap();
        assert_eq!(
            (config["os"].as_str(), config["architecture"].as_str()),
            (Some("linux"), Some("amd64")),
            "{name}"
        );

        let actual = config["config"].as_object().cloned().unwrap_or_default();
        let expected = stage.config.clone();
        for key in ["User", "Entrypoint", "Cmd", "Env", "ExposedPorts", "Labels", "WorkingDir"] {
            let norm = |v: Option<&Value>| match v {
                None | Some(Value::Null) => Value::Null,
                Some(Value::Object(m)) if m.is_empty() => Value::Null,
                Some(Value::Array(a)) if a.is_empty() => Value::Null,
                Some(Value::String(s)) if s.is_empty() => Value::Null,
                Some(v) => v.clone(),
            };
            assert_eq!(
                norm(actual.get(key)),
                norm(expected.get(key)),
                "{name}: config {key} of {} differs from what {file} says (on {})",
                archive.display(),
                stage.from
            );
        }
        assert_eq!(
            actual.len(),
            actual.keys().filter(|k| expected.contains_key(*k)).count(),
            "{name}: extra config {actual:?}"
        );

        // The binaries the Containerfile copies are in the image's own (last) layer, executable.
        if !stage.copies.is_empty() {
            let last = manifest["layers"].as_array().and_then(|l| l.last()).expect("a layer");
            let files = layer_files(archive, &blob_name(&last["digest"]));
            for dest in &stage.copies {
                let rel = dest.trim_start_matches('/');
                assert!(
                    files.iter().any(|l| l.starts_with("-rwx")
                        && (l.ends_with(&format!(" {rel}")) || l.ends_with(&format!(" ./{rel}")))),
                    "{name}: no executable {dest} in its last layer:\n{}",
                    files.join("\n")
                );
            }
        }
        built.insert(name, stage.config);
    }
}
