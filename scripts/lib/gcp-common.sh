# shellcheck shell=bash
# Google Cloud parts shared by gcp-run-deploy.sh and gcp-func-deploy.sh: configuration,
# the runtime service account and its least-privilege roles, Secret Manager, env file.
# Deploy settings in .env: GCP_PROJECT (required), GCP_REGION (us-central1),
# GCP_SERVICE_ACCOUNT (mpproxy-runtime), and the service or function name (per script).

gcp_config() {
  GCP_PROJECT="$(env_get gcp_project)"
  [ -n "$GCP_PROJECT" ] || die "GCP_PROJECT is not set in $ENV_FILE"
  GCP_REGION="$(env_get gcp_region)"
  GCP_REGION="${GCP_REGION:-us-central1}"
  local account
  account="$(env_get gcp_service_account)"
  account="${account:-mpproxy-runtime}"
  GCP_SA_EMAIL="$account@$GCP_PROJECT.iam.gserviceaccount.com"
  GCP_SA_NAME="$account"
  GCP_MEMBER="serviceAccount:$GCP_SA_EMAIL"
  GCP_RUNTIME_ROLE="projects/$GCP_PROJECT/roles/mpproxyRuntime"
  GCP_PROBE_ROLE="projects/$GCP_PROJECT/roles/mpproxyProbe"
}

gcp_role() {
  local id="$1" file="$2"
  ensure gcloud iam roles describe "$id" --project "$GCP_PROJECT" -- \
    gcloud iam roles create "$id" --project "$GCP_PROJECT" --file "$file" --quiet
  run gcloud iam roles update "$id" --project "$GCP_PROJECT" --file "$file" --quiet
}

# The service account, its roles, and their bindings on exactly the resources in use.
gcp_iam() {
  say "service account $GCP_SA_EMAIL and its roles"
  ensure gcloud iam service-accounts describe "$GCP_SA_EMAIL" --project "$GCP_PROJECT" -- \
    gcloud iam service-accounts create "$GCP_SA_NAME" --project "$GCP_PROJECT" --display-name "mixpanel-dwh-proxy runtime"
  gcp_role mpproxyRuntime "$ROOT/scripts/gcp/proxy-runtime-role.yaml"
  if has_destination gcs; then
    local bucket prefix
    bucket="$(env_get gcs_bucket)"
    [ -n "$bucket" ] || die "the gcs destination needs GCS_BUCKET"
    prefix="$(env_get lake_prefix)"
    prefix="${prefix#/}"
    prefix="${prefix%/}"
    gcp_role mpproxyProbe "$ROOT/scripts/gcp/proxy-probe-role.yaml"
    run gcloud storage buckets add-iam-policy-binding "gs://$bucket" --member "$GCP_MEMBER" --role "$GCP_RUNTIME_ROLE"
    run gcloud storage buckets add-iam-policy-binding "gs://$bucket" --member "$GCP_MEMBER" --role "$GCP_PROBE_ROLE" \
      --condition "expression=resource.name.startsWith(\"projects/_/buckets/$bucket/objects/${prefix:+$prefix/}_proxy_probe/\"),title=mpproxy-write-probe"
  fi
  if env_has pubsub_bad_topic; then
    local topic
    topic="$(gcp_topic "$(env_get pubsub_bad_topic)")"
    run gcloud pubsub topics add-iam-policy-binding "$topic" --member "$GCP_MEMBER" --role "$GCP_RUNTIME_ROLE"
  fi
  if has_destination pubsub; then
    # The pubsub destination's topics: PUBSUB_GOOD_TOPIC, else one per table. The runtime
    # role may only publish, so they are made here (the proxy's setup then finds them).
    local name path
    local -a topics=()
    if env_has pubsub_good_topic; then
      topics=("$(env_get pubsub_good_topic)")
    else
      for name in events users groups; do
        path="$(env_get "${name}_table_name")"
        topics+=("${path:-$name}")
      done
    fi
    for name in "${topics[@]}"; do
      path="$(gcp_topic "$name")"
      ensure gcloud pubsub topics describe "$path" -- gcloud pubsub topics create "$path"
      run gcloud pubsub topics add-iam-policy-binding "$path" --member "$GCP_MEMBER" --role "$GCP_RUNTIME_ROLE"
    done
  fi
}

# gcp_topic NAME: a full topic path; a bare name is in PUBSUB_PROJECT (else GCP_PROJECT).
gcp_topic() {
  local project
  if [[ "$1" == projects/* ]]; then
    echo "$1"
  else
    project="$(env_get pubsub_project)"
    echo "projects/${project:-$GCP_PROJECT}/topics/$1"
  fi
}

# Each secret setting becomes one Secret Manager secret readable by the service account
# only; GCP_SECRET_FLAGS maps them back to their variable names for --set-secrets.
gcp_secrets() {
  GCP_SECRET_FLAGS=""
  local name id
  for name in "${SECRET_NAMES[@]}"; do
    id="$(secret_id "$name")"
    ensure gcloud secrets describe "$id" --project "$GCP_PROJECT" -- \
      gcloud secrets create "$id" --project "$GCP_PROJECT" --replication-policy automatic
    run_stdin "$name" gcloud secrets versions add "$id" --project "$GCP_PROJECT" --data-file=-
    run gcloud secrets add-iam-policy-binding "$id" --project "$GCP_PROJECT" --member "$GCP_MEMBER" --role "$GCP_RUNTIME_ROLE"
    GCP_SECRET_FLAGS+="${GCP_SECRET_FLAGS:+,}${name^^}=$id:latest"
  done
}

# The plain (non-secret) settings as an --env-vars-file, plus the platform's own.
gcp_env_file() {
  local path="$1"
  shift
  local content="" name value
  for name in $(plain_names); do
    value="$(env_get "$name")"
    content+="${name^^}: '${value//\'/\'\'}'"$'\n'
  done
  for name in "$@"; do
    content+="${name%%=*}: '${name#*=}'"$'\n'
  done
  write_file "$path" "${content%$'\n'}"
}
