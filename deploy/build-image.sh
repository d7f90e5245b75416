#!/usr/bin/env bash
# Build the Dockerfile without a registry and smoke-test the image without `podman run`:
#   1. a Debian base image with Python, made locally with mmdebstrap and imported into podman;
#   2. `podman build --isolation=chroot` of the Dockerfile on that base;
#   3. the image's filesystem exported and the server started inside it with chroot, answering
#      /v2/health/ready.
# Needs root, podman, mmdebstrap and a reachable Debian mirror and Python package index.
# Usage: deploy/build-image.sh [workdir]   (prints build time, image size and the health answer)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/tta-image}
BASE=localhost/tta-base:bookworm
IMAGE=localhost/tta-server:cpu
SUITE=${SUITE:-bookworm}
PORT=${PORT:-8765}
mkdir -p "$WORK"

if ! podman image exists "$BASE"; then
  echo "== base image: mmdebstrap $SUITE + python3"
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    "$SUITE" "$WORK/base.tar"
  podman import --change 'CMD ["/bin/bash"]' "$WORK/base.tar" "$BASE"
fi

# the host's Python package sources, passed into the build (no index is configured in the base)
: "${PIP_EXTRA_INDEX_URL:=$(pip config get global.extra-index-url 2>/dev/null || true)}"
: "${PIP_INDEX_URL:=$(pip config get global.index-url 2>/dev/null || true)}"
PIP_ARGS=()
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT PIP_DEFAULT_TIMEOUT; do
  [ -n "${!var:-}" ] && PIP_ARGS+=(--build-arg "$var=${!var}")
done
VOLUMES=()
for dir in /opt/wheels /opt/pypi /opt/pypi-more /etc/ssl/certs; do
  [ -d "$dir" ] && VOLUMES+=(-v "$dir:$dir:ro")
done

echo "== podman build"
start=$(date +%s)
podman build --isolation=chroot --network=host "${VOLUMES[@]}" "${PIP_ARGS[@]}" \
  --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_CPU="${TORCH_CPU:-torch==2.13.0}" \
  -t "$IMAGE" -f Dockerfile .
seconds=$(( $(date +%s) - start ))
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')

echo "== smoke test: the exported filesystem, chroot, /v2/health/ready"
root="$WORK/rootfs"
rm -rf "$root" && mkdir -p "$root"
container=$(podman create "$IMAGE")
podman export "$container" | tar -x -C "$root"
podman rm "$container" >/dev/null
mount --bind /proc "$root/proc"; mount --bind /dev "$root/dev"
trap 'kill "$server" 2>/dev/null || true; umount "$root/proc" "$root/dev" 2>/dev/null || true' EXIT
chroot --userspec=10001:10001 "$root" /usr/bin/env -i HOME=/home/tta PATH=/opt/tta/bin:/usr/bin:/bin \
  TTA_HOST=127.0.0.1 TTA_PORT="$PORT" TTA_SNAPSHOT_DIR=/var/lib/tta/snapshots /opt/tta/bin/tta-server serve \
  > "$WORK/server.log" 2>&1 &
server=$!
answer=""
for _ in $(seq 1 240); do
  answer=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/v2/health/ready', timeout=2).read().decode())" 2>/dev/null) && break
  sleep 0.5
done
echo "build_seconds=$seconds image_bytes=$size ready=$answer"
[ -n "$answer" ] || { tail -20 "$WORK/server.log"; exit 1; }
