#!/usr/bin/env bash
# Deploy to Google Cloud Functions (2nd gen, HTTP trigger; main.py `handler`) and print
# the URL to use as `api_host`.
#
#   scripts/gcp-func-deploy.sh [--dry-run] [--env-file PATH]
#
# Reads .env: DESTINATIONS (required) and the destinations' settings, plus
# GCP_PROJECT (required), GCP_REGION (us-central1), GCP_FUNCTION (mixpanel-dwh-proxy),
# GCP_SERVICE_ACCOUNT (mpproxy-runtime). Uploads the app with requirements.txt plus
# requirements-gcp-functions.txt, runs as its own service account holding only
# scripts/gcp/proxy-runtime-role.yaml (and the probe role on the lake bucket), passes
# only the variables the chosen destinations need, secrets through Secret Manager.
# RUNTIME=GCP is set by main.py itself: rows are written inside each request
# (DELIVERY=sync), since a function gets no CPU between requests.
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
FUNCTION="$(env_get gcp_function)"
FUNCTION="${FUNCTION:-mixpanel-dwh-proxy}"
WORK="$(scratch_dir)"

say "Cloud Function $FUNCTION in $GCP_PROJECT/$GCP_REGION; destinations: $(env_get destinations)"
run gcloud services enable cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com secretmanager.googleapis.com iam.googleapis.com --project "$GCP_PROJECT"
gcp_iam
gcp_secrets
stage_code "$WORK/source" requirements-gcp-functions.txt "$ROOT/main.py"
gcp_env_file "$WORK/env.yaml"

deploy=(gcloud functions deploy "$FUNCTION" --gen2 --project "$GCP_PROJECT" --region "$GCP_REGION"
  --runtime python311 --source "$WORK/source" --entry-point handler --trigger-http --allow-unauthenticated
  --service-account "$GCP_SA_EMAIL" --run-service-account "$GCP_SA_EMAIL" --env-vars-file "$WORK/env.yaml"
  --memory 512Mi --timeout 60s --quiet)
[ -n "$GCP_SECRET_FLAGS" ] && deploy+=(--set-secrets "$GCP_SECRET_FLAGS")
run "${deploy[@]}"
capture URL gcloud functions describe "$FUNCTION" --gen2 --project "$GCP_PROJECT" --region "$GCP_REGION" --format "value(serviceConfig.uri)"
[ "$DRY_RUN" = 1 ] || rm -rf "$WORK"
print_api_host "$URL"
