#!/usr/bin/env bash
# Run a command (the test suite) against a private Docker engine of its own, then stop the engine.
#
#   bash scripts/with-engine.sh .venv/bin/pytest -n 2
#
# The engine lives in a fresh /tmp/berth-engine.XXXX (short: UNIX socket paths are limited to 108 bytes),
# has no bridge, touches no iptables and reaches no registry (see shared/TESTING.md). The command gets
# BERTH_TEST_DOCKER_HOST=unix://.../docker.sock and the image berth-test/busybox:1 built from the host's
# busybox-static. When no engine can be had (not root, no dockerd, it does not start), the command still
# runs, with BERTH_TEST_DOCKER_UNAVAILABLE giving the reason, and the Docker tests skip (or fail under
# BERTH_REQUIRE_DOCKER=1). The exit code is the command's. BERTH_KEEP_ENGINE_DIR=1 keeps the engine's
# directory (its log, dockerd.log) for a post-mortem.
set -euo pipefail

readonly IMAGE="berth-test/busybox:1"
readonly START_TIMEOUT_S=60
readonly STOP_TIMEOUT_S=30
# Any registry pull goes to a closed port on loopback and fails at once, instead of leaving the machine.
readonly NO_REGISTRY_PROXY="http://127.0.0.1:9"

if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

engine_dir=""
engine_pid=""
engine_host=""
engine_cli=()
cleaned_up=0

log() { echo "with-engine: $*" >&2; }

engine_answers_ping() {
  if command -v curl >/dev/null; then
    [ "$(curl -sf --max-time 2 --unix-socket "$engine_dir/docker.sock" http://engine/_ping 2>/dev/null)" = "OK" ]
  else
    timeout 5 "${engine_cli[@]}" version >/dev/null 2>&1
  fi
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Send SIGTERM, wait up to $2 seconds, then SIGKILL. Works for our child (dockerd) and for others.
stop_pid() {
  local pid=$1 limit=$2
  local deadline=$((SECONDS + limit))
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  if alive "$pid"; then
    log "pid $pid still running after ${limit} s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Processes that name our engine directory on their command line: containerd, its shims.
engine_dir_pids() {
  local cmdline pid
  for cmdline in /proc/[0-9]*/cmdline; do
    pid=${cmdline#/proc/}
    pid=${pid%/cmdline}
    [ "$pid" = "$$" ] && continue
    if tr '\0' ' ' 2>/dev/null <"$cmdline" | grep -qF -- "$engine_dir/"; then
      echo "$pid"
    fi
  done
}

stop_engine() {
  [ -n "$engine_pid" ] || return 0
  if engine_answers_ping; then
    # Containers first, with SIGKILL: dockerd's own shutdown would give each one its 10 s stop timeout.
    timeout 30 "${engine_cli[@]}" swarm leave --force >/dev/null 2>&1 || true
    local containers
    containers=$(timeout 30 "${engine_cli[@]}" ps -aq 2>/dev/null || true)
    if [ -n "$containers" ]; then
      # shellcheck disable=SC2086 # one container id per word
      timeout 60 "${engine_cli[@]}" rm -f -v $containers >/dev/null 2>&1 || log "could not remove all containers"
    fi
  fi
  stop_pid "$engine_pid" "$STOP_TIMEOUT_S"
  engine_pid=""
  # dockerd stops the containerd it started; should it have died without doing so, stop what is left.
  local pid
  for pid in $(engine_dir_pids); do
    log "stopping leftover process $pid: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
    stop_pid "$pid" 10
  done
}

# shellcheck disable=SC2317 # reached from the EXIT trap
remove_engine_dir() {
  [ -n "$engine_dir" ] && [ -d "$engine_dir" ] || return 0
  # Mounts left under it (overlays, netns) by an engine that did not shut down cleanly; deepest first.
  local mount_point
  while read -r mount_point; do
    umount -l "$mount_point" 2>/dev/null || log "could not unmount $mount_point"
  done < <(awk -v dir="$engine_dir/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  if [ "${BERTH_KEEP_ENGINE_DIR:-0}" = "1" ]; then
    log "kept $engine_dir"
  else
    rm -rf --one-file-system "$engine_dir"
  fi
}

# shellcheck disable=SC2317 # reached from the EXIT trap
cleanup() {
  [ "$cleaned_up" -eq 0 ] || return 0
  cleaned_up=1
  stop_engine
  remove_engine_dir
}

# Why the engine cannot be had, or nothing when it can be tried.
engine_unavailable_reason() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "not root: a private dockerd needs root"
  elif ! command -v dockerd >/dev/null; then
    echo "no dockerd on PATH (install docker.io)"
  elif ! command -v docker >/dev/null; then
    echo "no docker CLI on PATH (install docker.io)"
  elif ! command -v busybox >/dev/null; then
    echo "no busybox on PATH for the test image (install busybox-static)"
  elif ldd "$(command -v busybox)" >/dev/null 2>&1; then
    echo "$(command -v busybox) is not statically linked (install busybox-static)"
  fi
}

# Called as an `if` condition, where set -e does not apply: each step that can fail returns by itself.
start_engine() {
  engine_dir=$(mktemp -d /tmp/berth-engine.XXXX) || return 1
  engine_host="unix://$engine_dir/docker.sock"
  # The docker CLI, aimed at our engine only and kept away from the user's ~/.docker (credential helpers).
  engine_cli=(env -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH DOCKER_CONFIG="$engine_dir/cli"
    docker -H "$engine_host")
  mkdir -p "$engine_dir/cli" || return 1
  # An empty config, so the host's /etc/docker/daemon.json changes nothing here.
  echo '{}' >"$engine_dir/daemon.json" || return 1
  # No GPU here: a stand-in for NVIDIA's OCI prestart hook. dockerd registers its "nvidia" device
  # driver when this program is on its PATH, so containers with NVIDIA device requests are created
  # and started for real, their HostConfig as on a GPU host; the stand-in attaches nothing.
  mkdir -p "$engine_dir/gpu-stub" || return 1
  printf '#!/bin/sh\ncat >/dev/null\nexit 0\n' >"$engine_dir/gpu-stub/nvidia-container-runtime-hook" || return 1
  chmod 755 "$engine_dir/gpu-stub/nvidia-container-runtime-hook" || return 1
  # setsid: a Ctrl-C meant for the command does not reach the engine; cleanup stops it in order.
  env -u NO_PROXY -u no_proxy \
    HTTP_PROXY="$NO_REGISTRY_PROXY" HTTPS_PROXY="$NO_REGISTRY_PROXY" \
    http_proxy="$NO_REGISTRY_PROXY" https_proxy="$NO_REGISTRY_PROXY" \
    PATH="$engine_dir/gpu-stub:$PATH" \
    setsid dockerd \
    --config-file "$engine_dir/daemon.json" \
    --data-root "$engine_dir/data" \
    --exec-root "$engine_dir/exec" \
    --host "$engine_host" \
    --pidfile "$engine_dir/dockerd.pid" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --userland-proxy=false \
    </dev/null >"$engine_dir/dockerd.log" 2>&1 &
  engine_pid=$!

  local deadline=$((SECONDS + START_TIMEOUT_S))
  until engine_answers_ping; do
    if ! alive "$engine_pid"; then
      wait "$engine_pid" 2>/dev/null || true
      engine_pid=""
      engine_failed "dockerd exited during start-up"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      engine_failed "dockerd did not answer _ping within ${START_TIMEOUT_S} s"
      return 1
    fi
    sleep 0.05
  done
}

engine_failed() {
  log "$1; its log ($engine_dir/dockerd.log):"
  sed 's/^/  dockerd: /' "$engine_dir/dockerd.log" >&2 || true
  unavailable_reason="$1 (see the dockerd log above)"
}

# Called as an `if` condition too: each step that can fail returns by itself.
import_busybox_image() {
  local rootfs="$engine_dir/rootfs" busybox applet
  busybox=$(command -v busybox)
  mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/root" "$rootfs/tmp" || return 1
  chmod 1777 "$rootfs/tmp" || return 1
  cp "$busybox" "$rootfs/bin/busybox" || return 1
  for applet in $("$busybox" --list); do
    [ "$applet" = "busybox" ] || ln -sf busybox "$rootfs/bin/$applet" || return 1
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd" || return 1
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group" || return 1
  tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -c . \
    | "${engine_cli[@]}" import -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
}

trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

unavailable_reason=$(engine_unavailable_reason)
if [ -z "$unavailable_reason" ]; then
  started_at=$(date +%s%N)
  if start_engine; then
    if import_busybox_image; then
      log "engine ready at $engine_host with $IMAGE in $((($(date +%s%N) - started_at) / 1000000)) ms"
    else
      unavailable_reason="the test image $IMAGE could not be imported"
      log "$unavailable_reason"
      stop_engine
    fi
  else
    stop_engine
  fi
fi

if [ -n "$unavailable_reason" ]; then
  log "no Docker engine for this run: $unavailable_reason; the Docker tests skip (fail under BERTH_REQUIRE_DOCKER=1)"
  export BERTH_TEST_DOCKER_UNAVAILABLE="$unavailable_reason"
  unset BERTH_TEST_DOCKER_HOST
else
  export BERTH_TEST_DOCKER_HOST="$engine_host"
  unset BERTH_TEST_DOCKER_UNAVAILABLE
fi

status=0
"$@" || status=$?
exit "$status"
