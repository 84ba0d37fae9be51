# shellcheck shell=bash
# Shared by scripts/*-deploy.sh: arguments, .env, which variables a deployment gets,
# secrets, and --dry-run. Sourced, never run.
#
# Every command that touches the cloud or the disk goes through `run`, `run_stdin`,
# `capture` or `ensure`: with --dry-run each is printed (shell-quoted, one per line,
# prefixed `+ `) and nothing runs; values that come from a command's output become
# placeholders like <ACCOUNT_ID>. Secret values are never printed, in either mode.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DRY_RUN=0
ENV_FILE="$ROOT/.env"
declare -A ENV_VALUES=()
declare -a PASS_NAMES=()   # variables the deployment gets, lower-case, in .env order
declare -a SECRET_NAMES=() # the subset that goes through the platform's secret store

die() {
  echo "error: $*" >&2
  exit 1
}

say() {
  echo "==> $*" >&2
}

usage_common() {
  cat <<EOF
Options:
  --dry-run          print every command instead of running it
  --env-file PATH    read settings from PATH instead of .env in the project root
  -h, --help         this help
EOF
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --env-file)
        [ $# -ge 2 ] || die "--env-file needs a path"
        ENV_FILE="$2"
        shift
        ;;
      --env-file=*) ENV_FILE="${1#*=}" ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
}

# .env as python-dotenv reads the common cases: KEY=VALUE, optional `export`, quotes, comments.
load_env() {
  [ -f "$ENV_FILE" ] || die "no settings file $ENV_FILE (copy your .env there; see docs/deploy.md)"
  local line key value
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%$'\r'}"
    line="${line#"${line%%[![:space:]]*}"}"
    case "$line" in '' | '#'*) continue ;; esac
    line="${line#export }"
    [[ "$line" == *=* ]] || continue
    key="${line%%=*}"
    key="${key//[[:space:]]/}"
    value="${line#*=}"
    value="${value#"${value%%[![:space:]]*}"}"
    if [[ "$value" =~ ^\"(.*)\"$ ]] || [[ "$value" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    else
      value="${value%%[[:space:]]#*}"
      value="${value%"${value##*[![:space:]]}"}"
    fi
    ENV_VALUES["${key,,}"]="$value"
  done <"$ENV_FILE"
}

env_get() {
  printf '%s' "${ENV_VALUES[${1,,}]:-}"
}

env_has() {
  [ -n "${ENV_VALUES[${1,,}]:-}" ]
}

# Settings of the proxy itself (not of one destination) that a deployment may carry.
GENERAL_VARS=(
  destinations frontend_url environment log_format log_level
  events_table_name users_table_name groups_table_name
  events_extra_columns users_extra_columns groups_extra_columns
  mixpanel_token mixpanel_region mixpanel_api_host mixpanel_timeout_seconds mixpanel_cdn_url
  mixpanel_delivery mixpanel_api_secret mixpanel_project_id
  mixpanel_service_account_username mixpanel_service_account_secret
  trusted_proxy_hops max_body_bytes base_path
  delivery batch_max_records batch_max_bytes batch_max_seconds max_buffer_bytes
  retry_max_attempts retry_max_seconds retry_base_seconds destination_timeout_seconds
  dead_letter_max_bytes transform transform_on_error warehouse_transform
  drop_token drop_allow_production http_proxy https_proxy
)
LAKE_VARS=(lake_prefix lake_max_object_bytes lake_gzip_level)
# Names that are never passed: the platform sets them, or the script decides them.
NEVER_VARS=(port runtime bind data_dir dead_letter_dir)

is_secret() {
  local name="${1,,}"
  [ "$name" = "mixpanel_token" ] && return 1 # public: every browser sees it
  case "$name" in
    *secret* | *password* | *private_key* | *_key | *token* | *connection_string* | *keyfile* | *credentials* | *access_key_id*) return 0 ;;
  esac
  return 1
}

destination_list() {
  local raw
  raw="$(env_get destinations)"
  raw="${raw,,}"
  tr ',' '\n' <<<"$raw" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | sed '/^$/d'
}

has_destination() {
  destination_list | grep -qx "$1"
}

# Decide PASS_NAMES and SECRET_NAMES: general settings, the lake settings if a lake is
# chosen, each chosen destination's own `<name>_*` variables, the Pub/Sub dead letter's
# if `pubsub_bad_topic` is set, and DEPLOY_EXTRA_VARS (for custom destinations).
select_vars() {
  env_has destinations || die "DESTINATIONS is not set in $ENV_FILE: name the destinations this deployment writes to (e.g. DESTINATIONS=mixpanel,gcs)"
  local -a prefixes=()
  local dest name extra
  while IFS= read -r dest; do
    case "$dest" in
      *:*) ;; # custom factory: its variables come through DEPLOY_EXTRA_VARS
      files) say "warning: the files destination writes to the instance's local disk, which this platform discards" ;;
      mixpanel) ;;
      *) prefixes+=("${dest}_") ;;
    esac
  done < <(destination_list)
  env_has pubsub_bad_topic && prefixes+=("pubsub_")
  local -A wanted=()
  for name in "${GENERAL_VARS[@]}"; do wanted[$name]=1; done
  if has_destination s3 || has_destination gcs || has_destination azure; then
    for name in "${LAKE_VARS[@]}"; do wanted[$name]=1; done
  fi
  extra="$(env_get deploy_extra_vars)"
  for name in ${extra//,/ }; do wanted[${name,,}]=1; done
  for name in "${NEVER_VARS[@]}"; do unset "wanted[$name]"; done
  local prefix
  for name in "${!ENV_VALUES[@]}"; do
    for prefix in "${prefixes[@]}"; do
      [[ "$name" == "$prefix"* ]] && wanted[$name]=1
    done
  done
  PASS_NAMES=()
  SECRET_NAMES=()
  for name in $(printf '%s\n' "${!wanted[@]}" | sort); do
    env_has "$name" || continue
    PASS_NAMES+=("$name")
    if is_secret "$name"; then SECRET_NAMES+=("$name"); fi
  done
}

plain_names() {
  local name
  for name in "${PASS_NAMES[@]}"; do
    is_secret "$name" || echo "$name"
  done
}

# -- running -------------------------------------------------------------------------
print_cmd() {
  local out="+" word
  for word in "$@"; do out+=" $(printf '%q' "$word")"; done
  echo "$out"
}

run() {
  if [ "$DRY_RUN" = 1 ]; then
    print_cmd "$@"
  else
    "$@"
  fi
}

# run_stdin NAME cmd...: the value of setting NAME on the command's stdin (never printed).
run_stdin() {
  local name="$1"
  shift
  if [ "$DRY_RUN" = 1 ]; then
    echo "$(print_cmd "$@") <<< (value of ${name^^} from $(basename "$ENV_FILE"))"
  else
    printf '%s' "$(env_get "$name")" | "$@"
  fi
}

# run_ok cmd...: run, and carry on if it fails (removing something that may not exist).
run_ok() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "$(print_cmd "$@") || true"
  else
    "$@" >/dev/null 2>&1 || true
  fi
}

# capture VAR cmd...: VAR=$(cmd...); a placeholder <VAR> in a dry run.
capture() {
  local var="$1"
  shift
  if [ "$DRY_RUN" = 1 ]; then
    echo "$(print_cmd "$@")  # -> $var"
    printf -v "$var" '<%s>' "$var"
  else
    printf -v "$var" '%s' "$("$@")"
  fi
}

# ensure CHECK... -- CREATE...: run CREATE only if CHECK fails (the resource is missing).
ensure() {
  local -a check=()
  while [ "$1" != "--" ]; do
    check+=("$1")
    shift
  done
  shift
  if [ "$DRY_RUN" = 1 ]; then
    echo "$(print_cmd "${check[@]}") >/dev/null 2>&1 || $(print_cmd "$@" | cut -c3-)"
  elif ! "${check[@]}" >/dev/null 2>&1; then
    "$@"
  fi
}

# write_file PATH CONTENT: a file the deployment reads (shown in a dry run, with no secrets in it).
write_file() {
  local path="$1" content="$2"
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ cat > $(printf '%q' "$path") <<'EOF'"
    printf '%s\n' "$content"
    echo "EOF"
  else
    (umask 077 && printf '%s\n' "$content" >"$path")
  fi
}

# write_secret_file PATH NAME: the value of setting NAME in a private file (never printed).
write_secret_file() {
  local path="$1" name="$2"
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ (value of ${name^^} from $(basename "$ENV_FILE")) > $(printf '%q' "$path")"
  else
    (umask 077 && printf '%s' "$(env_get "$name")" >"$path")
  fi
}

scratch_dir() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "/tmp/mpproxy-deploy"
  else
    mktemp -d "${TMPDIR:-/tmp}/mpproxy-deploy.XXXXXX"
  fi
}

# stage_code DIR ENTRY_FILE... : the app's code and the platform's entry files in DIR,
# with one flat requirements.txt (the base pins plus the platform's adapter file).
stage_code() {
  local dir="$1" platform_requirements="$2"
  shift 2
  run mkdir -p "$dir"
  run cp -R "$ROOT/app.py" "$ROOT/core" "$ROOT/proxy" "$ROOT/destinations" "$ROOT/examples" "$@" "$dir/"
  run find "$dir" -name __pycache__ -prune -exec rm -rf '{}' +
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ grep -hv '^-r ' $(printf '%q' "$ROOT/requirements.txt") $(printf '%q' "$ROOT/$platform_requirements") > $(printf '%q' "$dir/requirements.txt")"
  else
    grep -hv '^-r ' "$ROOT/requirements.txt" "$ROOT/$platform_requirements" >"$dir/requirements.txt"
  fi
}

# secret_id NAME: the secret store's name for setting NAME (mpproxy-s3-secret-access-key).
secret_id() {
  local name="${1,,}"
  printf 'mpproxy-%s' "${name//_/-}"
}

print_api_host() {
  local url="$1"
  echo
  echo "Deployed. Point your SDKs at it: api_host = $url"
  echo "  (browser: mixpanel.init(TOKEN, { api_host: \"$url\" }); check: curl $url/ping)"
}
