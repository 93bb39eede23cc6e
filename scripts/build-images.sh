#!/usr/bin/env bash
# Builds the two container images, tagged with the Cargo version:
#   openmatch-gossip:<version>           sidecar/Dockerfile  (sidecar + reference engine + data)
#   openmatch-gossip-operator:<version>  operator/Dockerfile
#
# Default: from binaries built on this machine. It runs `cargo build --release` for both
# binaries (--profile picks another Cargo profile; skip the build with --no-build), stages for each image a root filesystem under
# target/images/<image>/rootfs (the binary without debug info, its ELF interpreter and the shared libraries `ldd`
# lists, /etc/passwd and /etc/group with the user nonroot = 65532), and builds the
# Dockerfile's BINARIES=local variant: FROM scratch plus that root filesystem. Needs no base
# image and no registry.
#
# --from-source builds the Dockerfiles' default variant instead: a rust:1-bookworm builder
# stage compiles the binary, the runtime is gcr.io/distroless/cc-debian12:nonroot (needs those
# two images from their registries). Equivalent by hand, from the repository root:
#   docker build -f sidecar/Dockerfile  --build-arg VERSION=0.1.0 -t openmatch-gossip:0.1.0 .
#   docker build -f operator/Dockerfile --build-arg VERSION=0.1.0 -t openmatch-gossip-operator:0.1.0 .
#
# Usage: scripts/build-images.sh [--engine podman|docker] [--from-source] [--no-build]
#                                [--profile PROFILE] [--tag TAG] [--print-version]
#   --engine   container engine (default: podman if installed, else docker)
#   --profile  Cargo profile of the local binaries (default: release). The image tests use
#              `test` with --no-build: the binaries `cargo nextest run --workspace` just
#              built, which spares a second full build (~8 min on 2 cores)
#   --tag      image tag (default: the Cargo workspace version)
# Prints the two image names it built, one per line, last.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=""
from_source=false
build=true
profile=release
tag=""
# The workspace version ([workspace.package] version in Cargo.toml): every crate inherits it.
version="$(awk '/^\[workspace.package\]/{p=1; next} /^\[/{p=0} p && $1=="version" {gsub(/"/,"",$3); print $3; exit}' Cargo.toml)"
[ -n "$version" ] || { echo "build-images: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --from-source) from_source=true; shift ;;
        --no-build) build=false; shift ;;
        --profile) profile="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --print-version) echo "$version"; exit 0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-images: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$engine" ]; then
    if command -v podman >/dev/null 2>&1; then engine=podman; else engine=docker; fi
fi
command -v "$engine" >/dev/null 2>&1 || { echo "build-images: $engine not found" >&2; exit 1; }
tag="${tag:-$version}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# image name, Dockerfile, binary name
images=("openmatch-gossip sidecar/Dockerfile openmatch-gossip"
        "openmatch-gossip-operator operator/Dockerfile openmatch-gossip-operator")

# Stages target/images/<dir>/rootfs for a dynamically linked binary: the binary, and every
# library `ldd` resolves plus the ELF interpreter, each at the path the loader looks for it.
stage_rootfs() {
    local binary="$1" rootfs="$2"
    rm -rf "$rootfs"
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    install -m 0755 "$binary" "$rootfs/usr/local/bin/"
    # The release profile keeps line tables; the image does without (symbols stay, so panics
    # still name their functions): ~25 MB instead of ~160 MB.
    strip --strip-debug "$rootfs/usr/local/bin/$(basename "$binary")"
    local line path
    while read -r line; do
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        case "$line" in
            *"=> not found"*) echo "build-images: $binary: $line" >&2; return 1 ;;
            *"=> /"*) path="${line#*=> }"; path="${path%% (*}" ;;
            /*) path="${line%% (*}" ;;
            *) continue ;;  # linux-vdso.so.1: provided by the kernel
        esac
        mkdir -p "$rootfs$(dirname "$path")"
        cp -L "$path" "$rootfs$path"
    done < <(ldd "$binary")
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
}

if ! $from_source; then
    # Cargo writes the dev and test profiles' binaries to target/debug.
    case "$profile" in dev|test) outdir=debug ;; *) outdir="$profile" ;; esac
    bindir="${CARGO_TARGET_DIR:-target}/$outdir"
    if $build; then
        echo "build-images: cargo build --profile $profile (openmatch-gossip, openmatch-gossip-operator)" >&2
        cargo build --profile "$profile" -p openmatch-gossip-sidecar -p openmatch-gossip-operator >&2
    fi
    for spec in "${images[@]}"; do
        read -r _ dockerfile binary <<<"$spec"
        [ -x "$bindir/$binary" ] || { echo "build-images: $bindir/$binary missing (run without --no-build)" >&2; exit 1; }
        stage_rootfs "$bindir/$binary" "target/images/$(dirname "$dockerfile")/rootfs"
    done
fi

built=()
for spec in "${images[@]}"; do
    read -r name dockerfile _ <<<"$spec"
    args=(build -f "$dockerfile" -t "$name:$tag"
          --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created")
    if ! $from_source; then
        args+=(--build-arg BINARIES=local)
        # podman: never pull (the builder's base image is not needed and no registry may be
        # reachable), and keep no intermediate images of the staging layer.
        if [ "$engine" = podman ]; then args+=(--pull=never --layers=false); fi
    fi
    # The image this tag named before: removed below if the build replaced it and nothing
    # else uses it, so repeated builds do not pile up untagged images.
    old="$("$engine" image inspect --format '{{.Id}}' "$name:$tag" 2>/dev/null || true)"
    echo "build-images: $engine ${args[*]} ." >&2
    "$engine" "${args[@]}" . >&2
    new="$("$engine" image inspect --format '{{.Id}}' "$name:$tag")"
    if [ -n "$old" ] && [ "$old" != "$new" ]; then "$engine" rmi "$old" >/dev/null 2>&1 || true; fi
    built+=("$name:$tag")
done
printf '%s\n' "${built[@]}"
