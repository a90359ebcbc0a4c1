#!/usr/bin/env bash
# Stand-ins for the two base images of docker/Dockerfile, for an engine that cannot reach Docker
# Hub (`make test-containers`). Made once and cached: a rootfs tarball under
# $BRAINPIPE_DOCKER_ROOT/bases (kept across data-root wipes), the images in the engine's store under
# the exact tags the Dockerfile names, so the Dockerfile and compose.yaml are used unmodified.
#
#   python:3.11-slim-bookworm   debootstrap --variant=minbase bookworm + python3, python3-venv,
#                               python3-pip, ca-certificates; python/pip in /usr/local/bin, no PEP 668
#                               marker (as in the official image). Debian's own CA store only: the
#                               host's extra CAs (an intercepting proxy's) are NOT copied in, so a
#                               build that reaches PyPI proves the Dockerfile's pip_ca secret works.
#   the CUDA_BASE_IMAGE tag     that image + the CPU torch==2.13.0 wheel found locally by pip
#                               (--no-index: never a multi-GB CUDA download).
#
# Needs DOCKER_HOST (engine.sh up prints it). Every failure ends with one line starting "bases:".
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=${BRAINPIPE_DOCKER_ROOT:-/var/tmp/brainpipe-docker}
CACHE=$ROOT/bases
PYTHON=${PYTHON:-python3}
SLIM=python:3.11-slim-bookworm
CUDA=$(sed -n 's/^ARG CUDA_BASE_IMAGE=//p' "$REPO/docker/Dockerfile")
TORCH=${BRAINPIPE_STANDIN_TORCH:-2.13.0}
CA_BUNDLE=${BRAINPIPE_PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
MIRROR=${BRAINPIPE_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' \
	/etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

die() {
	echo "bases: $*" >&2
	exit 1
}

have() { docker image inspect "$1" >/dev/null 2>&1; }

slim() {
	have "$SLIM" && return 0
	local tar=$CACHE/python-3.11-slim-bookworm.tar
	if [[ ! -s $tar ]]; then
		command -v debootstrap >/dev/null || die "debootstrap missing (engine.sh up installs it)"
		local rootfs=$CACHE/rootfs
		rm -rf "$rootfs" && mkdir -p "$rootfs"
		echo "bases: debootstrap bookworm from $MIRROR (once; a few minutes)"
		debootstrap --variant=minbase \
			--include=python3,python3-venv,python3-pip,ca-certificates,passwd \
			bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
			die "debootstrap failed; see $CACHE/debootstrap.log"
		ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
		ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
		ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
		rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
		rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
			"$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
		tar -C "$rootfs" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
		rm -rf "$rootfs"
	fi
	docker import \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV LANG=C.UTF-8' \
		--change 'CMD ["python3"]' \
		"$tar" "$SLIM" >/dev/null || die "docker import $tar failed"
	echo "bases: $SLIM imported (stand-in)"
}

cuda() {
	have "$CUDA" && return 0
	local ctx=$CACHE/cuda-context
	rm -rf "$ctx" && mkdir -p "$ctx"
	# --no-index: only wheels on this machine's disk (pip's find-links); on a machine without a
	# local CPU torch this fails instead of fetching a CUDA torch of several GB.
	"$PYTHON" -m pip download "torch==$TORCH" --no-deps --no-index --only-binary=:all: \
		--python-version 3.11 --platform manylinux_2_28_x86_64 -d "$ctx" >"$CACHE/pip-download.log" 2>&1 ||
		die "no local CPU wheel of torch==$TORCH for cp311 (pip download --no-index); see $CACHE/pip-download.log"
	local wheel
	wheel=$(cd "$ctx" && ls torch-*.whl)
	[[ $wheel == *+cpu* ]] || die "the local torch wheel $wheel is not a CPU build"
	cp "$CA_BUNDLE" "$ctx/ca.crt"
	# The real image's torch comes with its dependencies; they come from PyPI here, through the
	# host's CA bundle. A container + commit rather than a build: the wheel and the CA are mounted,
	# not left in a layer, and no BuildKit client (buildx) is needed.
	echo "bases: $CUDA = $SLIM + $wheel (stand-in, CPU torch)"
	local name=brainpipe-standin-cuda
	docker rm -f "$name" >/dev/null 2>&1 || true
	docker run --name "$name" -v "$ctx:/ctx:ro" -e PIP_CERT=/ctx/ca.crt "$SLIM" \
		pip install --no-cache-dir --disable-pip-version-check "/ctx/$wheel" >"$CACHE/cuda-build.log" 2>&1 ||
		die "installing torch into the cuda stand-in failed; see $CACHE/cuda-build.log"
	docker commit --change 'CMD ["python3"]' "$name" "$CUDA" >/dev/null
	docker rm "$name" >/dev/null
	rm -rf "$ctx"
}

mkdir -p "$CACHE"
[[ -n ${DOCKER_HOST:-} ]] || die "DOCKER_HOST is not set: run scripts/containers/engine.sh up first"
slim
cuda
