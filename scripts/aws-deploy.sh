#!/usr/bin/env bash
# Deploy to AWS Lambda behind a public function URL (lambda_handler.handler) and print
# the URL to use as `api_host`.
#
#   scripts/aws-deploy.sh [--dry-run] [--env-file PATH]
#
# Reads .env: DESTINATIONS (required) and the destinations' settings, plus AWS_REGION
# (required), AWS_FUNCTION_NAME (mixpanel-dwh-proxy), AWS_ROLE_NAME
# (mixpanel-dwh-proxy-lambda), AWS_CODE_BUCKET (upload the zip through S3; needed once
# it passes Lambda's 50 MB direct-upload limit). Builds a zip for python3.11/x86_64 from
# requirements.txt (only the cloud SDKs the chosen destinations use) plus
# requirements-aws-lambda.txt. The function's role gets only scripts/aws/policy-*.json,
# rendered for this function, bucket and secret (no `*` actions). Secret settings go
# into one Secrets Manager secret that the function reads at cold start (SECRETS_ARN);
# the rest are plain environment variables. RUNTIME=AWS is set by lambda_handler.py: rows
# are written inside each request (DELIVERY=sync), since a frozen Lambda never flushes.
# Needs: aws CLI v2 (credentials with rights to manage IAM roles, Lambda, Secrets
# Manager), python3 with pip.
set -euo pipefail
# shellcheck source=scripts/lib/deploy-common.sh
source "$(dirname "$0")/lib/deploy-common.sh"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  usage_common
}

json_string() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\r'/\\r}"
  s="${s//$'\t'/\\t}"
  printf '"%s"' "$s"
}

# render TEMPLATE: the policy file with ${NAME} placeholders filled in.
render() {
  local text
  text="$(<"$1")"
  fill() { text="${text//"\${$1}"/$2}"; }
  fill REGION "$REGION"
  fill ACCOUNT_ID "$ACCOUNT_ID"
  fill FUNCTION "$FUNCTION"
  fill S3_BUCKET "$(env_get s3_bucket)"
  fill LAKE_PREFIX "$LAKE_KEY_PREFIX"
  fill SECRET_ARN "${SECRET_ARN:-}"
  [[ "$text" != *"\${"* ]] || die "$1 has a placeholder render() does not fill"
  printf '%s' "$text"
}

put_policy() {
  local name="$1" template="$2"
  write_file "$WORK/$name.json" "$(render "$template")"
  run aws iam put-role-policy --role-name "$ROLE" --policy-name "$name" --policy-document "file://$WORK/$name.json"
}

parse_args "$@"
load_env
select_vars
REGION="$(env_get aws_region)"
[ -n "$REGION" ] || die "AWS_REGION is not set in $ENV_FILE"
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"
FUNCTION="$(env_get aws_function_name)"
FUNCTION="${FUNCTION:-mixpanel-dwh-proxy}"
ROLE="$(env_get aws_role_name)"
ROLE="${ROLE:-mixpanel-dwh-proxy-lambda}"
CODE_BUCKET="$(env_get aws_code_bucket)"
LAKE_KEY_PREFIX="$(env_get lake_prefix)"
LAKE_KEY_PREFIX="${LAKE_KEY_PREFIX#/}"
LAKE_KEY_PREFIX="${LAKE_KEY_PREFIX%/}"
LAKE_KEY_PREFIX="${LAKE_KEY_PREFIX:+$LAKE_KEY_PREFIX/}"
SECRET_NAME="$FUNCTION/settings"
WORK="$(scratch_dir)"

say "Lambda function $FUNCTION in $REGION; destinations: $(env_get destinations)"

# 1. The package: the app, the handler, and only the SDKs the chosen destinations import.
skip=()
has_destination s3 || [ ${#SECRET_NAMES[@]} -gt 0 ] || skip+=(boto3)
has_destination gcs || skip+=(google-cloud-storage)
has_destination pubsub || env_has pubsub_bad_topic || skip+=(google-cloud-pubsub)
has_destination azure || skip+=(azure-storage-blob azure-identity)
stage_code "$WORK/package" requirements-aws-lambda.txt "$ROOT/lambda_handler.py"
if [ ${#skip[@]} -gt 0 ]; then
  pattern="^($(IFS='|'; echo "${skip[*]}"))=="
  run sed -E -i "/$pattern/d" "$WORK/package/requirements.txt"
fi
run python3 -m pip install --quiet --disable-pip-version-check --target "$WORK/package" \
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 --only-binary=:all: \
  -r "$WORK/package/requirements.txt"
run python3 -c 'import shutil, sys; shutil.make_archive(sys.argv[1], "zip", sys.argv[2])' "$WORK/function" "$WORK/package"
if [ -n "$CODE_BUCKET" ]; then
  run aws s3 cp "$WORK/function.zip" "s3://$CODE_BUCKET/$FUNCTION/function.zip"
  code_create=(--code "S3Bucket=$CODE_BUCKET,S3Key=$FUNCTION/function.zip")
  code_update=(--s3-bucket "$CODE_BUCKET" --s3-key "$FUNCTION/function.zip")
else
  code_create=(--zip-file "fileb://$WORK/function.zip")
  code_update=(--zip-file "fileb://$WORK/function.zip")
fi

# 2. The execution role: logs, the lake bucket's objects, its own secret. Nothing else.
capture ACCOUNT_ID aws sts get-caller-identity --query Account --output text
ensure aws iam get-role --role-name "$ROLE" -- \
  aws iam create-role --role-name "$ROLE" --assume-role-policy-document "file://$ROOT/scripts/aws/lambda-trust-policy.json"
run aws iam wait role-exists --role-name "$ROLE"
put_policy mpproxy-logs "$ROOT/scripts/aws/policy-logs.json"
has_destination s3 && put_policy mpproxy-s3 "$ROOT/scripts/aws/policy-s3.json"

# 3. Secret settings: one Secrets Manager secret (a JSON object), read at cold start.
SECRET_ARN=""
if [ ${#SECRET_NAMES[@]} -gt 0 ]; then
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ (JSON object of $(printf '%s ' "${SECRET_NAMES[@]^^}")from $(basename "$ENV_FILE")) > $WORK/secrets.json"
  else
    body=""
    for name in "${SECRET_NAMES[@]}"; do
      body+="${body:+,}$(json_string "${name^^}"):$(json_string "$(env_get "$name")")"
    done
    (umask 077 && printf '{%s}' "$body" >"$WORK/secrets.json")
  fi
  ensure aws secretsmanager describe-secret --secret-id "$SECRET_NAME" -- \
    aws secretsmanager create-secret --name "$SECRET_NAME" --description "mixpanel-dwh-proxy secret settings"
  run aws secretsmanager put-secret-value --secret-id "$SECRET_NAME" --secret-string "file://$WORK/secrets.json"
  capture SECRET_ARN aws secretsmanager describe-secret --secret-id "$SECRET_NAME" --query ARN --output text
  put_policy mpproxy-secrets "$ROOT/scripts/aws/policy-secrets.json"
fi

# 4. The function, its plain settings, and a public function URL.
variables=""
for name in $(plain_names); do
  variables+="${variables:+, }$(json_string "${name^^}"): $(json_string "$(env_get "$name")")"
done
[ -n "$SECRET_ARN" ] && variables+="${variables:+, }\"SECRETS_ARN\": $(json_string "$SECRET_ARN")"
write_file "$WORK/environment.json" "{\"Variables\": {$variables}}"
ROLE_ARN="arn:aws:iam::$ACCOUNT_ID:role/$ROLE"
create=(aws lambda create-function --function-name "$FUNCTION" --runtime python3.11 --architectures x86_64
  --handler lambda_handler.handler --role "$ROLE_ARN" --timeout 60 --memory-size 512
  --environment "file://$WORK/environment.json" "${code_create[@]}")
update() {
  run aws lambda update-function-code --function-name "$FUNCTION" "${code_update[@]}"
  run aws lambda wait function-updated-v2 --function-name "$FUNCTION"
  run aws lambda update-function-configuration --function-name "$FUNCTION" --role "$ROLE_ARN" --timeout 60 \
    --memory-size 512 --environment "file://$WORK/environment.json"
}
check=(aws lambda get-function --function-name "$FUNCTION")
if [ "$DRY_RUN" = 1 ]; then
  echo "+ if $(print_cmd "${check[@]}" | cut -c3-) >/dev/null 2>&1; then"
  update
  echo "+ else"
  run "${create[@]}"
  echo "+ fi"
elif "${check[@]}" >/dev/null 2>&1; then
  update
else
  run "${create[@]}"
fi
run aws lambda wait function-updated-v2 --function-name "$FUNCTION"
ensure aws lambda get-function-url-config --function-name "$FUNCTION" -- \
  aws lambda create-function-url-config --function-name "$FUNCTION" --auth-type NONE
# A public URL needs both statements (lambda:InvokeFunctionUrl, and since October 2025
# lambda:InvokeFunction); replaced on every run so a re-run stays idempotent.
for sid in mpproxy-public-url mpproxy-public-invoke; do
  run_ok aws lambda remove-permission --function-name "$FUNCTION" --statement-id "$sid"
done
run aws lambda add-permission --function-name "$FUNCTION" --statement-id mpproxy-public-url \
  --action lambda:InvokeFunctionUrl --principal "*" --function-url-auth-type NONE
run aws lambda add-permission --function-name "$FUNCTION" --statement-id mpproxy-public-invoke \
  --action lambda:InvokeFunction --principal "*" --invoked-via-function-url
capture URL aws lambda get-function-url-config --function-name "$FUNCTION" --query FunctionUrl --output text
[ "$DRY_RUN" = 1 ] || rm -rf "$WORK"
print_api_host "${URL%/}"
