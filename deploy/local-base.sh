#!/usr/bin/env bash
# Makes a Debian 12 (bookworm) base image in local container storage without any image registry:
# debootstrap --variant=minbase from the Debian mirror into a temporary folder, slimmed the way the official
# debian:bookworm-slim image is (no docs, man pages or locales; apt keeps no package lists or .debs), then
# `podman import`. deploy/Dockerfile and deploy/Dockerfile.cuda take it as --build-arg BASE_IMAGE=<this tag>.
#
# Why: no image registry is reachable from the lab machines this is tested on (nor from some air-gapped GPU nodes),
# but the Debian mirror is; the image is then built from the same bookworm packages the project is tested with.
#
# Idempotent: does nothing when the tag exists (--force rebuilds it). Takes 2-4 minutes when it does run.
# Usage: deploy/local-base.sh [--force] [--tag IMAGE]     (default tag localhost/sinkscope-base:bookworm)
# Env: DEBIAN_MIRROR (default: the first http(s) mirror in this machine's apt sources, else deb.debian.org)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=localhost/sinkscope-base:bookworm
FORCE=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --force) FORCE=1; shift ;;
    --tag) TAG=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-base: unknown argument $1" >&2; exit 2 ;;
  esac
done
die() { echo "local-base: ERROR: $*" >&2; exit 1; }
# Podman on these VMs needs runc and explicit ulimits (deploy/containers.conf); an operator's own setting wins.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}

[[ $(id -u) -eq 0 ]] || die "debootstrap and rootful podman need root"
command -v podman >/dev/null || die "podman not found (apt-get install -y --no-install-recommends podman runc catatonit)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install -y --no-install-recommends debootstrap)"

if [[ $FORCE == 0 ]] && podman image exists "$TAG"; then
  echo "local-base: $TAG exists ($(podman image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'), built $(podman image inspect --format '{{index .Labels "org.opencontainers.image.created"}}' "$TAG")); --force rebuilds it"
  exit 0
fi

if [[ -z ${DEBIAN_MIRROR:-} ]]; then
  # The mirror apt already uses here (deb822 .sources or one-line lists); it is known to be reachable.
  DEBIAN_MIRROR=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -1 || true)
  DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
DEBIAN_MIRROR=${DEBIAN_MIRROR%/}

T0=$(date +%s)
ROOTFS=$(mktemp -d /var/tmp/sinkscope-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "local-base: debootstrap bookworm (minbase) from $DEBIAN_MIRROR into $ROOTFS"
# minbase = Essential + apt: what debian:bookworm-slim has. The log goes to a file: debootstrap is chatty.
if ! debootstrap --variant=minbase --components=main bookworm "$ROOTFS" "$DEBIAN_MIRROR" >"$ROOTFS.log" 2>&1; then
  tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; die "debootstrap failed"
fi
rm -f "$ROOTFS.log"

# Slim like the official image: later apt installs skip docs, man pages and translations, and leave no caches.
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/90-sinkscope-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
cat > "$ROOTFS/etc/apt/apt.conf.d/90-sinkscope-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
# The same suites a Debian 12 host uses, so security updates reach the images built from this base.
SEC_MIRROR=${DEBIAN_SECURITY_MIRROR:-${DEBIAN_MIRROR%/debian}/debian-security}
cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $SEC_MIRROR bookworm-security main
EOF
find "$ROOTFS/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOTFS"/usr/share/{man,info,locale}/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/*
# An image has no machine identity of its own (systemd creates one where it boots).
: > "$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"

CREATED=$(date -u +%FT%TZ)
echo "local-base: importing as $TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | podman import --quiet \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.opencontainers.image.created=$CREATED" \
  --change 'LABEL org.opencontainers.image.description=Debian 12 minbase made by sinkscope deploy/local-base.sh' \
  - "$TAG" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')
echo "local-base: $TAG ready: $size, in $(( $(date +%s) - T0 ))s"
