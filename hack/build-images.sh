#!/usr/bin/env bash
# Builds the project's container images without a container engine or a registry, from the
# final stage of each image's Containerfile (the definition podman/docker builds too), into
# OCI archives cached by content, and imports them into a containerd.
#
#   hack/build-images.sh build          every image (cached: a second run does no work)
#   hack/build-images.sh pause          only the pod sandbox image (no cargo, no network)
#   hack/build-images.sh pause-name     print the pause image's name (containerd's sandbox_image)
#   hack/build-images.sh index          print the index file's path
#   hack/build-images.sh import SOCKET  import every image of the index that the containerd at
#                                       SOCKET lacks (namespace k8s.io), or has with another digest
#
# Where: ${MLOPS_TOOLS_CACHE:-~/.cache/mlops-operator}/images/ holds one archive per image,
# named by a hash of everything it is made of (Containerfile text, build arguments, binary and
# library bytes, base recipe, this builder), and `index`: one line per image,
# "<full image name> <archive path>".
#
# How an image is built: the base named by FROM comes from a local recipe (base_* below: a
# Debian root by mmdebstrap, a distroless-like root of Debian files, or an empty one), or is
# another image of this list; hack/containerfile.py then applies the final stage's
# instructions (COPY --from=<stage> takes the binary built here: cargo for the Rust ones, gcc
# for pause; RUN runs in a chroot) and fails on any instruction it does not understand; umoci
# turns the result into a layer. tests/images.rs checks each archive's config against its
# Containerfile. Needs root (chroot, mounts in a private namespace, file ownership).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"

CACHE=${MLOPS_TOOLS_CACHE:-$HOME/.cache/mlops-operator}
IMAGES=$CACHE/images
BASES=$IMAGES/bases
WORK=$IMAGES/work
INDEX=$IMAGES/index
HELPER=$root/hack/containerfile.py
SUITE=bookworm
PAUSE_IMAGE=ghcr.io/mlops-dev/pause:1.0
# The crate version tags the operator and runtime images (the chart's default image tag).
VERSION=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
[[ -n $VERSION ]] || { echo "no package version in Cargo.toml" >&2; exit 1; }

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
py() { python3 "$HELPER" "$@"; }
sha() { sha256sum | cut -c1-64; }

# The images, in build order (a base before the images FROM it):
# "<name> <Containerfile> [build argument...]".
image_table() {
  cat <<EOF
$PAUSE_IMAGE images/pause/Containerfile
ghcr.io/mlops-dev/mlops-operator:$VERSION Containerfile VERSION=$VERSION
ghcr.io/mlops-dev/mlops-runtime:$VERSION runtime/Containerfile
docker.io/library/python:3.11 images/python/Containerfile
ghcr.io/mlops-dev/mlserver:$MLSERVER_VERSION images/mlserver/Containerfile MLSERVER_VERSION=$MLSERVER_VERSION SCIKIT_LEARN_VERSION=$SCIKIT_LEARN_VERSION
EOF
}

# ---------------------------------------------------------------- binaries (COPY --from)

# The Rust binaries: the dev profile, the exact build `make test` does (cargo build
# --workspace --locked into target/), so a warm machine builds nothing here, stripped of
# symbols and debug info as the release profile strips them (half the size; panic locations
# stay). See the README ("Images") for the figures behind this choice. glibc, not the
# Containerfile's static musl for the operator: containerfile.py copies the libraries ldd
# lists next to it.
ARTIFACTS=()
rust_artifacts() {
  log "cargo build --workspace --locked (the dev build make test uses)"
  (cd "$root" && cargo build --workspace --locked --quiet)
  local target=${CARGO_TARGET_DIR:-$root/target} bin
  case $target in /*) ;; *) target=$root/$target ;; esac
  mkdir -p "$IMAGES/bin"
  for bin in mlops-operator mlops-runtime; do
    strip -o "$IMAGES/bin/$bin.tmp" "$target/debug/$bin"
    mv "$IMAGES/bin/$bin.tmp" "$IMAGES/bin/$bin"
    ARTIFACTS+=("/out/$bin=$IMAGES/bin/$bin")
  done
}

# The pause program, as the build stage of images/pause/Containerfile compiles it.
pause_artifact() {
  local src=$root/images/pause/pause.c key out
  key=$( { cat "$src"; gcc --version; declare -f pause_artifact; } | sha)
  out=$IMAGES/pause-bin/pause-${key:0:16}
  if [[ ! -x $out ]]; then
    mkdir -p "$IMAGES/pause-bin"
    gcc -static -Os -Wall -Wextra -Werror -o "$out.tmp" "$src"
    strip "$out.tmp"
    "$out.tmp" -v >/dev/null
    # It must end at SIGTERM, with status 0.
    local pid
    "$out.tmp" &
    pid=$!
    sleep 0.2
    kill -TERM "$pid"
    wait "$pid" || die "pause did not exit 0 on SIGTERM"
    mv "$out.tmp" "$out"
  fi
  ARTIFACTS+=("/out/pause=$out")
}

# ------------------------------------------------------------------------- base recipes

# Each recipe's image config: that of the upstream image it stands in for.
declare -A BASE_CONFIG=()

# The Debian mirrors apt uses on this machine (deb.debian.org if none is configured).
debian_mirrors() {
  local files=() f uris main="" security=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  if ((${#files[@]})); then
    uris=$(awk '/^[[:space:]]*deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }
                /^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "${files[@]}")
    main=$(grep -E '/debian/?$' <<<"$uris" | head -1 || true)
    security=$(grep -E '/debian-security/?$' <<<"$uris" | head -1 || true)
  fi
  main=${main:-http://deb.debian.org/debian}
  security=${security:-http://deb.debian.org/debian-security}
  printf '%s\n' "deb ${main%/} $SUITE main" "deb ${main%/} $SUITE-updates main" "deb ${security%/} $SUITE-security main"
}

# mmdebstrap ARGS... TARGET: a Debian $SUITE root from the mirrors above; no device nodes,
# and without this machine's resolv.conf and hostname (which mmdebstrap leaves in place).
debootstrap() {
  local target=${*: -1} mirrors
  mapfile -t mirrors < <(debian_mirrors)
  mmdebstrap --quiet --mode=root --format=directory "${@:1:$#-1}" "$SUITE" "$target" "${mirrors[@]}"
  if grep -qF " $target/" /proc/self/mountinfo; then die "something is still mounted under $target"; fi
  find "$target/dev" -mindepth 1 -delete 2>/dev/null || true
  rm -f "$target/etc/resolv.conf" "$target/etc/hostname"
}

# docker.io/library/debian:bookworm-slim: minbase (Essential and Priority required, as the
# official image), documentation excluded as in the slim image.
base_debian() {
  debootstrap --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' "$1"
}
BASE_CONFIG[debian]='{"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["bash"]}}'

# gcr.io/distroless/{static,cc}-debian12:nonroot: users root, nobody and nonroot (65532),
# CA certificates, tzdata, os-release, netbase's files, the packages' copyright files; no
# shell, no package manager. The glibc libraries of distroless/cc are not in the base: the
# COPY of a binary brings exactly the libraries ldd lists for it.
base_distroless() {
  local r=$1 x=$WORK/distroless-extract p
  rm -rf "$x"
  debootstrap --variant=extract --include=base-files,ca-certificates,netbase,tzdata "$x"
  install -d -m 0755 "$r/etc/ssl/certs" "$r/usr/share" "$r/usr/lib" "$r/home" "$r/var/lib"
  install -d -m 0700 "$r/root"
  install -d -m 0700 -o 65532 -g 65532 "$r/home/nonroot"
  install -d -m 1777 "$r/tmp"
  cp -a "$x/usr/share/zoneinfo" "$r/usr/share/zoneinfo"
  cat "$x"/usr/share/ca-certificates/mozilla/*.crt >"$r/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$r/etc/ssl/certs/ca-certificates.crt"
  cp -a "$x/usr/lib/os-release" "$r/usr/lib/os-release"
  ln -s ../usr/lib/os-release "$r/etc/os-release"
  cp -a "$x/etc/services" "$x/etc/protocols" "$x/etc/rpc" "$r/etc/"
  for p in base-files ca-certificates netbase tzdata; do
    install -D -m 0644 "$x/usr/share/doc/$p/copyright" "$r/usr/share/doc/$p/copyright"
  done
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$r/etc/group"
  printf '%s\n' 'hosts: files dns' 'networks: files' 'protocols: files' 'services: files' >"$r/etc/nsswitch.conf"
  chmod 0644 "$r/etc/passwd" "$r/etc/group" "$r/etc/nsswitch.conf"
  rm -rf "$x"
}
BASE_CONFIG[distroless]='{"config":{"User":"65532","WorkingDir":"/home/nonroot","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]}}'

# scratch: nothing; BuildKit gives such images the default PATH and / as working directory.
base_scratch() { :; }
BASE_CONFIG[scratch]='{"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"}}'

# recipe_of FROM: the local recipe for a base image name (empty when none).
recipe_of() {
  case $1 in
    scratch) echo scratch ;;
    gcr.io/distroless/static-debian12:nonroot | gcr.io/distroless/cc-debian12:nonroot) echo distroless ;;
    docker.io/library/debian:bookworm-slim) echo debian ;;
  esac
}

# build_base RECIPE: sets BASE_ARCHIVE to the base's archive (tag "base"), building it if
# needed.
BASE_ARCHIVE=
build_base() {
  local recipe=$1 key archive w
  key=$( {
    declare -f "base_$recipe" debootstrap debian_mirrors build_base
    echo "${BASE_CONFIG[$recipe]}"
    sha256sum "$HELPER"
    [[ $recipe == scratch ]] || { debian_mirrors; mmdebstrap --version; }
  } | sha)
  archive=$BASES/$recipe-${key:0:16}.tar
  BASE_ARCHIVE=$archive
  if [[ -f $archive ]]; then touch "$archive"; return; fi
  log "base $recipe: building"
  w=$WORK/base-$recipe
  rm -rf "$w"; mkdir -p "$w" "$BASES"
  umoci init --layout "$w/layout"
  umoci new --image "$w/layout:base"
  if [[ $recipe != scratch ]]; then
    umoci unpack --image "$w/layout:base" "$w/bundle" >/dev/null
    "base_$recipe" "$w/bundle/rootfs"
    umoci repack --history.created_by "local recipe base_$recipe (hack/build-images.sh)" \
      --image "$w/layout:base" "$w/bundle"
  fi
  echo "${BASE_CONFIG[$recipe]}" >"$w/config.json"
  py set-config "$w/layout" base base "$w/config.json" >/dev/null
  umoci gc --layout "$w/layout"
  py export "$w/layout" base "$recipe" "$archive" >/dev/null
  rm -rf "$w"
  log "base $recipe: $(du -h "$archive" | cut -f1)"
}

# ------------------------------------------------------------------------------- images

declare -A ARCHIVE_OF=()   # image name -> archive built (or found) in this run

# build_image NAME CONTAINERFILE [ARG=VALUE...]
build_image() {
  local name=$1 file=$root/$2; shift 2
  local repo=${name%:*} tag=${name##*:} stem from recipe base base_tag args=() a key archive w t0=$SECONDS
  stem=${repo##*/}
  for a in "$@"; do args+=(--arg "$a"); done
  from=$(py from "$file" "${args[@]}")
  for a in "${ARTIFACTS[@]}"; do args+=(--artifact "$a"); done
  recipe=$(recipe_of "$from")
  if [[ -n $recipe ]]; then
    build_base "$recipe"
    base=$BASE_ARCHIVE base_tag=base
  elif [[ -n ${ARCHIVE_OF[$from]:-} ]]; then
    base=${ARCHIVE_OF[$from]}; base_tag=${from##*:}
  else
    die "$2: FROM $from: no local recipe for this base (known: scratch, distroless static/cc-debian12:nonroot, debian:bookworm-slim, and the images of this script)"
  fi
  key=$(py key "$file" "${args[@]}" --input "name=$name" --input "base=$(basename "$base")" \
    --input "builder=$(declare -f build_image | sha)")
  archive=$IMAGES/$stem-$tag-${key:0:16}.tar
  ARCHIVE_OF[$name]=$archive
  if [[ -f $archive ]]; then
    touch "$archive"
    log "$name cached ($archive)"
    return
  fi
  log "$name: building from ${file#"$root"/} on $from"
  w=$WORK/$stem
  rm -rf "$w"; mkdir -p "$w/layout"
  tar -xf "$base" -C "$w/layout"
  umoci unpack --image "$w/layout:$base_tag" "$w/bundle" >/dev/null
  py config-of "$w/layout" "$base_tag" >"$w/base.json"
  mkdir -p "$IMAGES/logs"
  : >"$IMAGES/logs/$stem.log"
  py apply "$file" --rootfs "$w/bundle/rootfs" --base-config "$w/base.json" --out-config "$w/config.json" \
    --log "$IMAGES/logs/$stem.log" "${args[@]}"
  umoci repack --history.created_by "${file#"$root"/} (hack/build-images.sh)" --image "$w/layout:$base_tag" "$w/bundle"
  py set-config "$w/layout" "$base_tag" "$tag" "$w/config.json" >/dev/null
  umoci gc --layout "$w/layout"
  py smoke "$w/bundle/rootfs" "$w/config.json"
  py export "$w/layout" "$tag" "$name" "$archive" >/dev/null
  rm -rf "$w"
  log "$name: built in $((SECONDS - t0)) s, $(du -h "$archive" | cut -f1) ($archive)"
}

# write_index [ONLY_NAME]: the index of this run's images; with a name, only that line is
# replaced and the others kept.
write_index() {
  local tmp=$INDEX.tmp name
  if [[ -n ${1:-} && -f $INDEX ]]; then
    awk -v n="$1" '$1 != n' "$INDEX" >"$tmp"
  else
    : >"$tmp"
  fi
  while read -r name _; do
    [[ -n ${ARCHIVE_OF[$name]:-} ]] && echo "$name ${ARCHIVE_OF[$name]}" >>"$tmp"
  done < <(image_table)
  mv "$tmp" "$INDEX"
  log "index: $INDEX"
}

# Archives not in the index go when unused for a week, or when two newer ones of the same
# image (or base) exist: another checkout sharing the cache may still use a recent one.
prune() {
  local f stem
  local -A kept=()
  while read -r _ f; do
    grep -qF " $f" "$INDEX" 2>/dev/null && continue
    stem=$(basename "$f")
    stem=${stem%-*}
    kept[$stem]=$((${kept[$stem]:-0} + 1))
    if ((kept[$stem] > 2)) || [[ -n $(find "$f" -maxdepth 0 -mtime +7) ]]; then
      log "pruning $f"
      rm -f "$f"
    fi
  done < <(find "$IMAGES" "$BASES" "$IMAGES/pause-bin" -maxdepth 1 -type f \( -name '*.tar' -o -name 'pause-*' \) \
    -printf '%T@ %p\n' 2>/dev/null | sort -rn)
  return 0
}

# One build at a time per cache (checkouts share it); the work folder goes with the build,
# failed or not (the RUN output stays in $IMAGES/logs/).
lock() {
  mkdir -p "$IMAGES" "$WORK"
  exec 9>"$IMAGES/.lock"
  flock 9
  trap 'rm -rf "$WORK"' EXIT
}

require_root() {
  [[ $(id -u) == 0 ]] || die "needs root: chroot, mounts in a private namespace and image file ownership"
  local tool
  for tool in umoci mmdebstrap unshare flock gcc python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool not found (hack/ensure-deps.sh installs the Debian packages)"
  done
}

cmd_build() {
  require_root; lock
  local t0=$SECONDS name file args
  pause_artifact
  rust_artifacts
  while read -r name file args; do
    # shellcheck disable=SC2086 # the build arguments are words
    build_image "$name" "$file" $args
  done < <(image_table)
  write_index
  prune
  log "all images ready in $((SECONDS - t0)) s"
}

cmd_pause() {
  require_root; lock
  local file
  pause_artifact
  file=$(image_table | awk -v n="$PAUSE_IMAGE" '$1 == n {print $2}')
  build_image "$PAUSE_IMAGE" "$file"
  write_index "$PAUSE_IMAGE"
}

# import SOCKET: each image of the index that containerd lacks, or has with another digest.
cmd_import() {
  local sock=${1:?usage: hack/build-images.sh import <containerd socket>} present name archive want have
  [[ -S $sock ]] || die "$sock is not a socket"
  [[ -f $INDEX ]] || die "no $INDEX: run hack/build-images.sh build first"
  command -v ctr >/dev/null || die "ctr not found (Debian package containerd)"
  present=$(ctr --address "$sock" -n k8s.io images ls)
  while read -r name archive; do
    [[ -f $archive ]] || die "$archive (of $name) is missing: run hack/build-images.sh build"
    want=$(tar -xOf "$archive" --occurrence=1 index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
    have=$(awk -v n="$name" '$1 == n {print $3}' <<<"$present")
    if [[ $have == "$want" ]]; then log "$name present"; continue; fi
    log "importing $name ($want)"
    ctr --address "$sock" -n k8s.io images import --base-name "${name%:*}" "$archive" >/dev/null
    have=$(ctr --address "$sock" -n k8s.io images ls "name==$name" | awk -v n="$name" '$1 == n {print $3}')
    [[ $have == "$want" ]] || die "after import, $name has digest '${have:-none}', expected $want"
  done <"$INDEX"
}

case ${1:-} in
  build) cmd_build ;;
  pause) cmd_pause ;;
  pause-name) echo "$PAUSE_IMAGE" ;;
  index) echo "$INDEX" ;;
  import) shift; cmd_import "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
