#!/usr/bin/env bash
# Deploy the container to Google Cloud Run and print the URL to use as `api_host`.
#
#   scripts/gcp-run-deploy.sh [--dry-run] [--env-file PATH]
#
# Reads .env: DESTINATIONS (required) and the destinations' settings, plus
# GCP_PROJECT (required), GCP_REGION (us-central1), GCP_SERVICE (mixpanel-dwh-proxy),
# GCP_SERVICE_ACCOUNT (mpproxy-runtime). Builds the Dockerfile with Cloud Build
# (`--source`), runs it as its own service account holding only
# scripts/gcp/proxy-runtime-role.yaml (and the probe role on the lake bucket), passes
# only the variables the chosen destinations need, secrets through Secret Manager.
#
# CPU: with DELIVERY=sync the service gets CPU only during requests (cheapest: each
# request writes its rows before it is answered); otherwise (the default batch
# delivery) CPU is always allocated, so the background flusher runs between requests.
# GRACEFUL_TIMEOUT defaults to 8 s: Cloud Run kills an instance 10 s after SIGTERM.
# Needs: gcloud, logged in with rights to deploy, create service accounts, roles, secrets.
set -euo pipefail
# shellcheck source=scripts/lib/deploy-common.sh
source "$(dirname "$0")/lib/deploy-common.sh"
# shellcheck source=scripts/lib/gcp-common.sh
source "$(dirname "$0")/lib/gcp-common.sh"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  usage_common
}

parse_args "$@"
load_env
select_vars
gcp_config
SERVICE="$(env_get gcp_service)"
SERVICE="${SERVICE:-mixpanel-dwh-proxy}"
DELIVERY="$(env_get delivery)"
if [ "${DELIVERY,,}" = "sync" ]; then CPU_FLAG="--cpu-throttling"; else CPU_FLAG="--no-cpu-throttling"; fi
WORK="$(scratch_dir)"

say "Cloud Run service $SERVICE in $GCP_PROJECT/$GCP_REGION; destinations: $(env_get destinations)"
run gcloud services enable run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com secretmanager.googleapis.com iam.googleapis.com --project "$GCP_PROJECT"
gcp_iam
gcp_secrets
extra=()
env_has graceful_timeout || extra+=("GRACEFUL_TIMEOUT=8")
gcp_env_file "$WORK/env.yaml" "${extra[@]}"

deploy=(gcloud run deploy "$SERVICE" --project "$GCP_PROJECT" --region "$GCP_REGION" --source "$ROOT"
  --service-account "$GCP_SA_EMAIL" --allow-unauthenticated --env-vars-file "$WORK/env.yaml"
  "$CPU_FLAG" --memory 512Mi --cpu 1 --concurrency 250 --timeout 60 --quiet)
[ -n "$GCP_SECRET_FLAGS" ] && deploy+=(--set-secrets "$GCP_SECRET_FLAGS")
run "${deploy[@]}"
capture URL gcloud run services describe "$SERVICE" --project "$GCP_PROJECT" --region "$GCP_REGION" --format "value(status.url)"
[ "$DRY_RUN" = 1 ] || rm -rf "$WORK"
print_api_host "$URL"
