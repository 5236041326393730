#!/bin/sh
# Compose a custom Triton image rootless: no daemon, no privileges, any uid, a writable
# $TMPDIR. The Kubernetes Job, the GitLab CI job and the GitHub Actions workflow here run
# this very script; tests/test_examples.py runs it as an unprivileged user against a
# registry on loopback.
#
#   OUTPUT      registry reference to push to (required), e.g. registry.example.com/me/triton:24.05-onnx
#   ARCHIVE     also write a docker-archive file (docker load / podman load) for an air-gapped site
#   MIN, FULL   the source images (default: NGC's 24.05 py3-min and py3)
#   BACKENDS    space-separated backends (default: onnxruntime python)
#   EXTRA       more compose options, e.g. "--tls-verify=false" or "--platform all"
#   OCIASSEMBLE the command (default: ociassemble; e.g. "python3 -m ociassemble")
#
# Registry credentials come from $DOCKER_CONFIG/config.json (a Kubernetes docker-registry
# secret, `ociassemble login`, docker login), NGC's from $NGC_API_KEY.
set -eu
: "${OUTPUT:?set OUTPUT to the registry reference to push to}"
: "${MIN:=nvcr.io/nvidia/tritonserver:24.05-py3-min}"
: "${FULL:=nvcr.io/nvidia/tritonserver:24.05-py3}"
: "${BACKENDS:=onnxruntime python}"
: "${ARCHIVE:=}"
: "${ARCHIVE_NAME:=tritonserver:custom}"
: "${EXTRA:=}"
: "${OCIASSEMBLE:=ociassemble}"
WORK="${TMPDIR:-/tmp}/ociassemble-work"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-${TMPDIR:-/tmp}/ociassemble-cache}"

set --
for backend in $BACKENDS; do
  set -- "$@" --backend "$backend"
done
# shellcheck disable=SC2086  # OCIASSEMBLE and EXTRA are word lists on purpose
$OCIASSEMBLE compose "$@" --image "min,$MIN" --image "full,$FULL" --output-name "$OUTPUT" \
  --work-dir "$WORK" --verify $EXTRA
if [ -n "$ARCHIVE" ]; then
  # the same image, carried to an air-gapped site as one file (its blobs come from the store)
  # shellcheck disable=SC2086
  $OCIASSEMBLE copy "$OUTPUT" "docker-archive:$ARCHIVE:$ARCHIVE_NAME" --verify $EXTRA
fi
