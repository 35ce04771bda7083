#!/usr/bin/env python3
"""The Containerfile half of hack/build-images.sh: reads the final stage of a Containerfile
and applies it to a root filesystem without a container engine.

    containerfile.py from FILE [--arg K=V]...           the final stage's base image
    containerfile.py stage FILE [--arg K=V]... [--base-config JSON]
                                                        the final stage's config (debugging)
    containerfile.py key FILE [--arg K=V]... [--artifact SRC=PATH]... [--input TEXT]...
                                                        content key of an image (sha256 hex)
    containerfile.py apply FILE --rootfs DIR --base-config JSON --out-config JSON
                     [--arg K=V]... [--artifact SRC=PATH]...
                                                        run the filesystem steps, write the config
    containerfile.py set-config LAYOUT FROM_TAG TO_TAG CONFIG_JSON
    containerfile.py export LAYOUT TAG NAME ARCHIVE     one image as an OCI archive (tar)
    containerfile.py smoke ROOTFS CONFIG_JSON            entrypoint --help as the image user

Only what the project's final stages use is understood: FROM, ARG, ENV, LABEL, COPY
--from=<stage> (a binary the script built locally, plus the libraries `ldd` lists for it that
the root filesystem lacks), RUN (executed in a chroot, in private mount and PID namespaces,
as the image user), USER, WORKDIR, EXPOSE, ENTRYPOINT, CMD. Anything else fails the build
with the file and line, so the local image can never silently differ from what the
Containerfile says. Earlier stages are the engine's way to build the binaries and are only
read for their names.
"""

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time

SUPPORTED = {"FROM", "ARG", "ENV", "LABEL", "COPY", "RUN", "USER", "WORKDIR", "EXPOSE",
             "ENTRYPOINT", "CMD"}
# Read in earlier stages only (they are the engine's business).
KNOWN = SUPPORTED | {"ADD", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD",
                     "MAINTAINER"}
# Passed to RUN like Docker's predefined build arguments: the build machine's way out, never
# stored in the image.
PASSTHROUGH = ["HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY",
               "http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy",
               "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST",
               "PIP_DEFAULT_TIMEOUT"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The build machine's CA bundle, mounted for RUN only (package downloads through a TLS proxy).
BUILD_CA_DIR = "/run/mlops-build"


class BuildError(Exception):
    pass


def fail(path, line, msg):
    raise BuildError(f"{path}:{line}: {msg}")


# ---------------------------------------------------------------------------- parsing

def logical_lines(path, text):
    """(line number, instruction text) with continuations joined and comments dropped."""
    lines = text.split("\n")
    out, buf, start = [], None, 0
    for no, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if no <= 5 and re.match(r"#\s*escape\s*=", stripped, re.I):
            fail(path, no, "the escape parser directive is not supported by the local builder")
        if stripped.startswith("#"):
            continue
        if buf is None:
            if not stripped:
                continue
            buf, start = "", no
        elif not stripped:
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1]
            continue
        buf += raw
        out.append((start, buf.strip()))
        buf = None
    if buf is not None:
        fail(path, start, "the file ends inside a continued line")
    return out


def expand(path, line, s, env):
    """Docker's variable substitution: $V, ${V}, ${V:-w}, ${V:+w}; \\$ is a literal $."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] == "$":
            out.append("$")
            i += 2
        elif c == "$" and i + 1 < len(s) and s[i + 1] == "{":
            end = s.find("}", i)
            if end < 0:
                fail(path, line, f"unterminated ${{ in {s!r}")
            body = s[i + 2:end]
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?::([-+])(.*))?", body)
            if not m:
                fail(path, line, f"unsupported substitution ${{{body}}}")
            name, op, word = m.groups()
            val = env.get(name)
            if op == "-":
                val = val if val else expand(path, line, word, env)
            elif op == "+":
                val = expand(path, line, word, env) if val else ""
            out.append(val or "")
            i = end + 1
        elif c == "$" and i + 1 < len(s) and re.match(r"[A-Za-z_]", s[i + 1]):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", s[i + 1:])
            out.append(env.get(m.group(0), ""))
            i += 1 + len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def words(path, line, s, env):
    """Splits on unquoted white space; quotes group and are removed; a backslash escapes the
    next character; variables expand outside single quotes (ENV, LABEL, EXPOSE, COPY)."""
    result, cur, have, quote, i = [], [], False, None, 0
    while i < len(s):
        c = s[i]
        if quote == "'":
            if c == "'":
                quote = None
            else:
                cur.append(c)
            i += 1
            continue
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if quote == '"' and nxt not in '"\\$':
                cur.append(c)
            cur.append(nxt)
            have, i = True, i + 2
            continue
        if c == "'" and quote is None:
            quote, have, i = "'", True, i + 1
            continue
        if c == '"':
            quote = None if quote == '"' else '"'
            have, i = True, i + 1
            continue
        if c == "$":
            m = re.match(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", s[i:])
            if m:
                cur.append(expand(path, line, m.group(0), env))
                have, i = True, i + len(m.group(0))
                continue
        if c.isspace() and quote is None:
            if have:
                result.append("".join(cur))
            cur, have, i = [], False, i + 1
            continue
        cur.append(c)
        have, i = True, i + 1
    if quote:
        fail(path, line, f"unterminated quote in {s!r}")
    if have:
        result.append("".join(cur))
    return result


def key_values(path, line, op, rest, env):
    ws = words(path, line, rest, env)
    if op == "ENV" and ws and "=" not in ws[0]:
        # Legacy form: ENV KEY value with spaces.
        key, _, value = rest.strip().partition(" ")
        return [(key, expand(path, line, value.strip(), env))]
    pairs = []
    for w in ws:
        if "=" not in w:
            fail(path, line, f"{op} expects KEY=VALUE, got {w!r}")
        k, _, v = w.partition("=")
        pairs.append((k, v))
    return pairs


def exec_form(path, line, rest):
    """JSON array (exec form) or a string for /bin/sh -c (shell form); no substitution."""
    s = rest.strip()
    if s.startswith("["):
        try:
            argv = json.loads(s)
        except json.JSONDecodeError:
            argv = None
        if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
            return argv
    return ["/bin/sh", "-c", s]


def flags(path, line, rest):
    out = {}
    while True:
        m = re.match(r"\s*--([a-z-]+)(?:=(\S*))?\s+", rest)
        if not m:
            return out, rest.strip()
        out[m.group(1)] = m.group(2)
        rest = rest[m.end():]


def parse(path, args):
    """The final stage: its base, instructions (with ARG and ENV substituted where Docker
    substitutes) and the stage names before it."""
    text = open(path, encoding="utf-8").read()
    lines = logical_lines(path, text)
    global_args, stages = {}, []
    for line, instr in lines:
        op, _, rest = instr.partition(" ")
        op = op.upper()
        if op not in KNOWN:
            fail(path, line, f"unknown instruction {op}")
        if op == "FROM":
            fl, rest = flags(path, line, rest)
            if fl:
                fail(path, line, f"FROM flags {sorted(fl)} are not supported by the local builder")
            parts = rest.split()
            base = expand(path, line, parts[0], {**global_args})
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            if len(parts) not in (1, 3) or (len(parts) == 3 and name is None):
                fail(path, line, f"cannot read FROM {rest!r}")
            stages.append({"from": base, "name": name, "line": line, "steps": []})
        elif not stages:
            if op != "ARG":
                fail(path, line, f"{op} before the first FROM")
            for w in words(path, line, rest, dict(global_args)):
                k, eq, v = w.partition("=")
                global_args[k] = args.get(k, v if eq else "")
        else:
            stages[-1]["steps"].append((line, op, rest))
    if not stages:
        fail(path, 1, "no FROM")
    final = stages[-1]
    names = {s["name"] for s in stages[:-1] if s["name"]} | {str(i) for i in range(len(stages) - 1)}
    for line, op, _ in final["steps"]:
        if op not in SUPPORTED:
            fail(path, line, f"{op} is not supported by the local builder (hack/build-images.sh): "
                 "build this image with podman/docker, or teach hack/containerfile.py the instruction")
    consumed = set(global_args)
    return {"file": path, "text": text, "from": final["from"], "from_line": final["line"],
            "steps": final["steps"], "stage_names": sorted(names), "global_args": global_args,
            "args": args, "consumed": consumed}


def walk(stage, base_config, on_step=None):
    """Applies the final stage's instructions to a config (the Docker/BuildKit rules) and hands
    each filesystem step to on_step(kind, detail, state). Returns the final config."""
    path, args = stage["file"], stage["args"]
    cfg = json.loads(json.dumps(base_config or {}))
    env = cfg.get("Env") or []
    env_map = dict(e.split("=", 1) for e in env)
    stage_args = {}
    cmd_set = False
    state = {"user": cfg.get("User") or "", "workdir": cfg.get("WorkingDir") or "/"}
    used_args = set()

    def scope():
        return {**stage_args, **env_map}

    for line, op, rest in stage["steps"]:
        if op == "ARG":
            for w in words(path, line, rest, scope()):
                k, eq, v = w.partition("=")
                if k in args:
                    stage_args[k] = args[k]
                elif eq:
                    stage_args[k] = v
                else:
                    stage_args[k] = stage["global_args"].get(k, "")
                used_args.add(k)
        elif op == "ENV":
            for k, v in key_values(path, line, op, rest, scope()):
                env_map[k] = v
                for i, e in enumerate(env):
                    if e.split("=", 1)[0] == k:
                        env[i] = f"{k}={v}"
                        break
                else:
                    env.append(f"{k}={v}")
        elif op == "LABEL":
            labels = cfg.setdefault("Labels", {}) or {}
            cfg["Labels"] = labels
            for k, v in key_values(path, line, op, rest, scope()):
                labels[k] = v
        elif op == "USER":
            user = expand(path, line, rest.strip(), scope())
            cfg["User"] = user
            state["user"] = user
        elif op == "WORKDIR":
            wd = expand(path, line, rest.strip(), scope())
            wd = os.path.normpath(os.path.join(state["workdir"], wd))
            cfg["WorkingDir"] = wd
            state["workdir"] = wd
            if on_step:
                on_step("WORKDIR", wd, dict(state), line)
        elif op == "EXPOSE":
            ports = cfg.get("ExposedPorts") or {}
            for w in words(path, line, rest, scope()):
                port = w if "/" in w else f"{w}/tcp"
                ports[port] = {}
            cfg["ExposedPorts"] = ports
        elif op == "ENTRYPOINT":
            cfg["Entrypoint"] = exec_form(path, line, rest)
            if not cmd_set:
                cfg["Cmd"] = None
        elif op == "CMD":
            cfg["Cmd"] = exec_form(path, line, rest)
            cmd_set = True
        elif op == "COPY":
            fl, rest2 = flags(path, line, rest)
            if set(fl) - {"from"} or "from" not in fl:
                fail(path, line, "only COPY --from=<stage> SRC DEST is supported by the local builder")
            if fl["from"] not in stage["stage_names"]:
                fail(path, line, f"COPY --from={fl['from']}: no such earlier stage")
            parts = words(path, line, rest2, scope()) if not rest2.startswith("[") else json.loads(rest2)
            if len(parts) != 2:
                fail(path, line, "COPY --from: exactly one source and one destination")
            if on_step:
                on_step("COPY", {"src": parts[0], "dest": parts[1]}, dict(state), line)
        elif op == "RUN":
            fl, rest2 = flags(path, line, rest)
            if fl:
                fail(path, line, f"RUN flags {sorted(fl)} are not supported by the local builder")
            if re.match(r"<<-?['\"]?\w", rest2):
                fail(path, line, "RUN with a here-document is not supported by the local builder")
            run_env = dict(env_map)
            for k, v in stage_args.items():
                run_env.setdefault(k, v)
            if on_step:
                on_step("RUN", {"argv": exec_form(path, line, rest2), "env": run_env}, dict(state), line)
        elif op == "FROM":
            fail(path, line, "unexpected FROM")
    unused = set(args) - used_args - stage["consumed"]
    if unused:
        fail(path, stage["from_line"], f"build arguments {sorted(unused)} are not declared by ARG")
    if env:
        cfg["Env"] = env
    return {k: v for k, v in cfg.items() if v not in (None, {}, [], "")}


# --------------------------------------------------------------------- root filesystem

def rjoin(root, path):
    """root + path, resolving symbolic links inside root (never escaping it)."""
    parts = [p for p in path.split("/") if p and p != "."]
    cur = root
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            cur = os.path.dirname(cur) if cur != root else root
            continue
        nxt = os.path.join(cur, p)
        if os.path.islink(nxt) and parts:
            hops += 1
            if hops > 40:
                raise BuildError(f"too many symbolic links under {root} for {path}")
            target = os.readlink(nxt)
            parts = [q for q in target.split("/") if q] + parts
            if target.startswith("/"):
                cur = root
            continue
        cur = nxt
    return cur


def ldd_libraries(binary):
    """Absolute paths `ldd` lists for a dynamically linked binary (none for a static one)."""
    res = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if res.returncode != 0:
        if "not a dynamic executable" in res.stderr + res.stdout or "statically linked" in res.stdout:
            return []
        raise BuildError(f"ldd {binary}: {res.stderr.strip()}")
    libs = []
    for ln in res.stdout.splitlines():
        ln = ln.strip()
        if "statically linked" in ln:
            return []
        m = re.match(r"\S+ => (/\S+) \(0x", ln) or re.match(r"(/\S+) \(0x", ln)
        if m:
            libs.append(m.group(1))
        elif "=> not found" in ln:
            raise BuildError(f"ldd {binary}: {ln}")
    return libs


def copy_file(src, dest):
    """src's content and mode at dest (inside a root), owned by root; a symbolic link at dest
    is replaced, never followed (it may point out of the root)."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.isdir(dest) and not os.path.islink(dest):
        dest = os.path.join(dest, os.path.basename(src))
    if os.path.islink(dest):
        os.unlink(dest)
    shutil.copyfile(src, dest, follow_symlinks=True)
    os.chmod(dest, stat.S_IMODE(os.stat(src).st_mode))
    os.chown(dest, 0, 0)


def resolve_user(root, user):
    """USER as numeric uid and gid, names looked up in the root's /etc/passwd and /etc/group."""
    name, _, group = (user or "0").partition(":")

    def lookup(file, key):
        try:
            for ln in open(rjoin(root, file), encoding="utf-8"):
                f = ln.rstrip("\n").split(":")
                if f[0] == key:
                    return f
        except FileNotFoundError:
            pass
        raise BuildError(f"user/group {key!r} not found in {file} of the image")

    if name.isdigit():
        uid = int(name)
        gid = None
        if not group:
            try:
                for ln in open(rjoin(root, "/etc/passwd"), encoding="utf-8"):
                    f = ln.split(":")
                    if len(f) > 3 and f[2] == name:
                        gid = int(f[3])
            except FileNotFoundError:
                pass
    else:
        f = lookup("/etc/passwd", name)
        uid, gid = int(f[2]), int(f[3])
    if group:
        gid = int(group) if group.isdigit() else int(lookup("/etc/group", group)[2])
    return uid, 0 if gid is None else gid


def home_of(root, uid):
    try:
        for ln in open(rjoin(root, "/etc/passwd"), encoding="utf-8"):
            f = ln.split(":")
            if len(f) > 5 and f[2] == str(uid):
                return f[5]
    except FileNotFoundError:
        pass
    return "/root" if uid == 0 else "/"


def run_in_root(root, argv, env, user, workdir, timeout=None, capture=False, log=None):
    """Runs argv in root like a container's process would see it: chroot, private mount and PID
    namespaces (every mount vanishes with the process), /proc, a minimal /dev, the host's
    resolv.conf and CA bundle (build-time only), as USER in WORKDIR. Mount points it had to
    create are removed afterwards, so nothing of it ends up in the layer."""
    uid, gid = resolve_user(root, user)
    created = []

    def ensure(path, is_dir):
        full = rjoin(root, path)
        if os.path.lexists(full):
            return full
        top = full
        while not os.path.lexists(os.path.dirname(top)):
            top = os.path.dirname(top)
        created.append(top)
        if is_dir:
            os.makedirs(full)
        else:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            open(full, "w").close()
        return full

    spec = {"root": root, "argv": argv, "uid": uid, "gid": gid, "workdir": workdir or "/",
            "mounts": []}
    try:
        spec["mounts"].append(["proc", ensure("/proc", True)])
        spec["mounts"].append(["dev", ensure("/dev", True)])
        resolv = rjoin(root, "/etc/resolv.conf")
        if os.path.islink(resolv):
            pass  # a link into /run or elsewhere: leave the image's own setting alone
        elif os.path.isdir(rjoin(root, "/etc")):
            spec["mounts"].append(["bind", "/etc/resolv.conf", ensure("/etc/resolv.conf", False)])
        ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
        run_env = dict(env)
        if os.path.isfile(ca) and os.path.isdir(rjoin(root, "/run")):
            target = ensure(BUILD_CA_DIR + "/ca.crt", False)
            spec["mounts"].append(["bind", ca, target])
            run_env.setdefault("PIP_CERT", BUILD_CA_DIR + "/ca.crt")
        for k in PASSTHROUGH:
            if k in os.environ:
                run_env.setdefault(k, os.environ[k])
        run_env.setdefault("PATH", DEFAULT_PATH)
        run_env.setdefault("HOME", home_of(root, uid))
        spec["env"] = run_env
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
            spec_file = f.name
        try:
            cmd = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
                   "--", sys.executable, os.path.abspath(__file__), "_inside", spec_file]
            res = subprocess.run(cmd, timeout=timeout, env={"PATH": os.environ.get("PATH", DEFAULT_PATH)},
                                 preexec_fn=die_with_parent, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if capture else log,
                                 stderr=subprocess.STDOUT if capture or log else None, text=capture)
        finally:
            os.unlink(spec_file)
        return res
    finally:
        for p in reversed(created):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)


def die_with_parent():
    """The namespace goes when this builder goes (unshare --kill-child does the rest)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def inside(spec_file):
    """PID 1 of the new namespaces: mounts, then becomes the image's process."""
    spec = json.load(open(spec_file))
    root = spec["root"]

    def mount(*a):
        subprocess.run(["mount", *a], check=True)

    for m in spec["mounts"]:
        if m[0] == "proc":
            mount("-t", "proc", "proc", m[1])
        elif m[0] == "dev":
            mount("-t", "tmpfs", "-o", "mode=0755,nosuid", "tmpfs", m[1])
            for node in ("null", "zero", "full", "random", "urandom", "tty"):
                open(os.path.join(m[1], node), "w").close()
                mount("--bind", "/dev/" + node, os.path.join(m[1], node))
            for d in ("shm", "pts"):
                os.makedirs(os.path.join(m[1], d))
            mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", os.path.join(m[1], "shm"))
            for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                                 ("ptmx", "pts/ptmx")):
                os.symlink(target, os.path.join(m[1], name))
        elif m[0] == "bind":
            mount("--bind", m[1], m[2])
            mount("-o", "remount,bind,ro", m[2])  # never written through to this machine
    os.chroot(root)
    os.chdir("/")
    wd = spec["workdir"]
    if not os.path.isdir(wd):
        os.makedirs(wd)
    os.setgroups([])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    os.chdir(wd)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        print(f"exec {argv[0]}: {e}", file=sys.stderr)
        os._exit(127)


# ------------------------------------------------------------------------ commands

def parse_kv(items, what):
    out = {}
    for it in items or []:
        k, eq, v = it.partition("=")
        if not eq:
            raise BuildError(f"{what} {it!r}: expected KEY=VALUE")
        out[k] = v
    return out


def sha256_file(path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def cmd_key(a):
    """Everything the image is made of: this file, the Containerfile's text, the build
    arguments, the bytes of every copied binary and library, and the caller's inputs (the
    base's key, the image name)."""
    stage = parse(a.file, parse_kv(a.arg, "--arg"))
    artifacts = parse_kv(a.artifact, "--artifact")
    used = {}

    def on_step(kind, detail, state, line):
        if kind == "COPY":
            if detail["src"] not in artifacts:
                fail(a.file, line, f"COPY --from: no local artifact for {detail['src']} "
                     f"(hack/build-images.sh provides {sorted(artifacts) or 'none'})")
            used[detail["src"]] = artifacts[detail["src"]]

    walk(stage, {}, on_step)
    h = hashlib.sha256()
    h.update(open(__file__, "rb").read())
    h.update(stage["text"].encode())
    h.update(json.dumps(sorted(stage["args"].items())).encode())
    for src, p in sorted(used.items()):
        h.update(f"\0artifact {src}\0".encode())
        sha256_file(p, h)
        for lib in ldd_libraries(p):
            h.update(f"\0lib {lib}\0".encode())
            sha256_file(lib, h)
    for t in a.input or []:
        h.update(f"\0input {t}\0".encode())
    print(h.hexdigest())


def cmd_from(a):
    print(parse(a.file, parse_kv(a.arg, "--arg"))["from"])


def cmd_stage(a):
    stage = parse(a.file, parse_kv(a.arg, "--arg"))
    base = json.loads(a.base_config) if a.base_config else {}
    print(json.dumps({"from": stage["from"], "config": walk(stage, base)}, indent=1))


def cmd_apply(a):
    stage = parse(a.file, parse_kv(a.arg, "--arg"))
    artifacts = parse_kv(a.artifact, "--artifact")
    base = json.load(open(a.base_config))
    root = a.rootfs
    history = []

    def on_step(kind, detail, state, line):
        if kind == "WORKDIR":
            full = rjoin(root, detail)
            if not os.path.isdir(full):
                os.makedirs(full, mode=0o755)
            history.append(f"WORKDIR {detail}")
        elif kind == "COPY":
            src, dest = detail["src"], detail["dest"]
            if src not in artifacts:
                fail(a.file, line, f"COPY --from: no local artifact for {src} "
                     f"(hack/build-images.sh provides {sorted(artifacts) or 'none'})")
            target = dest if not dest.endswith("/") else dest + os.path.basename(src)
            if not target.startswith("/"):
                target = os.path.join(state["workdir"], target)
            copy_file(artifacts[src], rjoin(root, target))
            added = []
            for lib in ldd_libraries(artifacts[src]):
                d = rjoin(root, lib)
                if not os.path.lexists(d):
                    copy_file(lib, d)
                    added.append(lib)
            history.append(f"COPY {src} {target}" + (f" (+ {' '.join(added)})" if added else ""))
            print(f"[build-images]   COPY {src} -> {target}"
                  + (f", with {len(added)} libraries ldd lists: {' '.join(added)}" if added else ""),
                  file=sys.stderr)
        elif kind == "RUN":
            argv = detail["argv"]
            print(f"[build-images]   RUN {argv[-1] if argv[:2] == ['/bin/sh', '-c'] else argv}"[:200],
                  file=sys.stderr)
            with open(a.log, "a") if a.log else open(os.devnull, "w") as log:
                if a.log:
                    log.write(f"==> {a.file}:{line}: RUN {argv}\n")
                    log.flush()
                res = run_in_root(root, argv, detail["env"], state["user"], state["workdir"],
                                  log=log if a.log else None)
            if res.returncode != 0:
                tail = "".join(open(a.log).readlines()[-40:]) if a.log else ""
                fail(a.file, line, f"RUN exited with {res.returncode}" + (f"; the end of {a.log}:\n{tail}" if tail else ""))
            history.append("RUN " + " ".join(argv))

    cfg = walk(stage, base.get("config") or {}, on_step)
    json.dump({"config": cfg, "history": history, "from": stage["from"]}, open(a.out_config, "w"), indent=1)


def blob_path(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def write_blob(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blob_path(layout, d)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    return d, len(data)


def find_manifest(layout, tag):
    index = json.load(open(os.path.join(layout, "index.json")))
    for m in index.get("manifests", []):
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag:
            return index, m
    raise BuildError(f"{layout}: no image tagged {tag}")


def cmd_set_config(a):
    """Replaces the image config of FROM_TAG (keeping its layers and history) and tags the
    result TO_TAG, dropping FROM_TAG: the config the Containerfile says, on the layers."""
    new = json.load(open(a.config))
    index, desc = find_manifest(a.layout, a.from_tag)
    manifest = json.load(open(blob_path(a.layout, desc["digest"])))
    config = json.load(open(blob_path(a.layout, manifest["config"]["digest"])))
    config["config"] = new["config"]
    config["architecture"], config["os"] = "amd64", "linux"
    config["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # The layer umoci just added is described by the steps that made it.
    hist = config.get("history") or []
    if new.get("history") and hist and not hist[-1].get("empty_layer"):
        hist[-1]["created_by"] = " && ".join(new["history"])
    cd, cs = write_blob(a.layout, json.dumps(config, sort_keys=True).encode())
    manifest["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}
    md, ms = write_blob(a.layout, json.dumps(manifest, sort_keys=True).encode())
    index["manifests"] = [m for m in index["manifests"]
                          if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
                          not in (a.from_tag, a.to_tag)]
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
                               "size": ms, "platform": {"architecture": "amd64", "os": "linux"},
                               "annotations": {"org.opencontainers.image.ref.name": a.to_tag}})
    with open(os.path.join(a.layout, "index.json"), "w") as f:
        json.dump(index, f)
    print(md)


def cmd_config_of(a):
    """The image config of TAG in LAYOUT, as {"config": ...}."""
    _, desc = find_manifest(a.layout, a.tag)
    manifest = json.load(open(blob_path(a.layout, desc["digest"])))
    config = json.load(open(blob_path(a.layout, manifest["config"]["digest"])))
    print(json.dumps({"config": config.get("config") or {}}))


def cmd_export(a):
    """One image of LAYOUT as an OCI archive: index.json first (so it can be read without
    scanning the layers), annotated with the tag (for `ctr import --base-name`) and the full
    name (io.containerd.image.name)."""
    _, desc = find_manifest(a.layout, a.tag)
    manifest = json.load(open(blob_path(a.layout, desc["digest"])))
    blobs = [desc["digest"], manifest["config"]["digest"]] + [l["digest"] for l in manifest["layers"]]
    desc = dict(desc)
    desc["annotations"] = {"org.opencontainers.image.ref.name": a.tag, "io.containerd.image.name": a.name}
    desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [desc]}
    tmp = a.archive + ".tmp"

    def add_bytes(tf, name, data):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
        tf.addfile(ti, io.BytesIO(data))

    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        add_bytes(tf, "index.json", json.dumps(index).encode())
        add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for d in dict.fromkeys(blobs):
            p = blob_path(a.layout, d)
            ti = tf.gettarinfo(p, arcname="blobs/" + d.replace(":", "/"))
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mode, ti.mtime = 0o644, 0
            with open(p, "rb") as f:
                tf.addfile(ti, f)
    os.replace(tmp, a.archive)
    print(desc["digest"])


def cmd_smoke(a):
    """Starts the image's program with --help in its root as its user: the binary, its
    libraries and its interpreter are all there."""
    cfg = json.load(open(a.config))["config"]
    argv = (cfg.get("Entrypoint") or cfg.get("Cmd") or [])[:1]
    if not argv:
        raise BuildError("the image has neither ENTRYPOINT nor CMD")
    env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
    res = run_in_root(a.rootfs, argv + ["--help"], env, cfg.get("User") or "0",
                      cfg.get("WorkingDir") or "/", timeout=120, capture=True)
    if res.returncode != 0:
        raise BuildError(f"{argv[0]} --help as user {cfg.get('User') or 0} in the image exited "
                         f"{res.returncode}:\n{res.stdout[-2000:]}")
    print(f"[build-images]   {argv[0]} --help runs as user {cfg.get('User') or '0 (root)'}", file=sys.stderr)


def main():
    import argparse
    if len(sys.argv) == 3 and sys.argv[1] == "_inside":
        inside(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage")
    s.add_argument("file")
    s.add_argument("--arg", action="append")
    s.add_argument("--base-config")
    s.set_defaults(fn=cmd_stage)
    s = sub.add_parser("from")
    s.add_argument("file")
    s.add_argument("--arg", action="append")
    s.set_defaults(fn=cmd_from)
    s = sub.add_parser("key")
    s.add_argument("file")
    s.add_argument("--arg", action="append")
    s.add_argument("--artifact", action="append")
    s.add_argument("--input", action="append")
    s.set_defaults(fn=cmd_key)
    s = sub.add_parser("apply")
    s.add_argument("file")
    s.add_argument("--rootfs", required=True)
    s.add_argument("--base-config", required=True)
    s.add_argument("--out-config", required=True)
    s.add_argument("--log", help="RUN output goes here (else to this terminal)")
    s.add_argument("--arg", action="append")
    s.add_argument("--artifact", action="append")
    s.set_defaults(fn=cmd_apply)
    s = sub.add_parser("set-config")
    s.add_argument("layout")
    s.add_argument("from_tag")
    s.add_argument("to_tag")
    s.add_argument("config")
    s.set_defaults(fn=cmd_set_config)
    s = sub.add_parser("export")
    s.add_argument("layout")
    s.add_argument("tag")
    s.add_argument("name")
    s.add_argument("archive")
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("config-of")
    s.add_argument("layout")
    s.add_argument("tag")
    s.set_defaults(fn=cmd_config_of)
    s = sub.add_parser("smoke")
    s.add_argument("rootfs")
    s.add_argument("config")
    s.set_defaults(fn=cmd_smoke)
    a = p.parse_args()
    try:
        a.fn(a)
    except BuildError as e:
        print(f"[build-images] error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
