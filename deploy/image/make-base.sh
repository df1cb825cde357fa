#!/usr/bin/env bash
# Build a minimal Debian bookworm + Python 3 base image from Debian's own packages
# (debootstrap), for machines that cannot pull the default base from a container registry.
#
#   deploy/image/make-base.sh [TAG]      default TAG: localhost/sparse-runtime-base:bookworm
#
# Needs root, debootstrap and podman (apt-get install debootstrap podman). The base has what the
# Dockerfile needs from python:3.11-slim: python3 with venv/ensurepip, CA certificates.
set -euo pipefail

TAG="${1:-localhost/sparse-runtime-base:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$TAG"; then
    echo "make-base: $TAG already exists"
    exit 0
fi

work="$(mktemp -d /var/tmp/sparse-runtime-base.XXXXXX)"
rootfs="$work/rootfs"
cleanup() {
    # debootstrap mounts /proc and /sys inside the rootfs: never delete through a mount.
    if [ -d "$rootfs" ]; then
        findmnt -rno TARGET | grep -F "$rootfs" | sort -r | xargs -r -n1 umount -l || true
    fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "make-base: debootstrap $SUITE into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -30 "$work/debootstrap.log" >&2
    exit 1
}

# Trim what an image does not need.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/tmp/*
# Debian's python3 is /usr/bin/python3; the slim images also have `python`.
ln -sf python3 "$rootfs/usr/bin/python"

tar --numeric-owner --one-file-system -C "$rootfs" -cf - . | podman import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
echo "make-base: built $TAG ($(podman image inspect --format '{{.Size}}' "$TAG") bytes)"
