#!/usr/bin/env bash
# Deploy to Azure Functions (Flex Consumption, Python 3.11; function_app.py + host.json)
# and print the URL to use as `api_host`.
#
#   scripts/azure-deploy.sh [--dry-run] [--env-file PATH]
#
# Reads .env: DESTINATIONS (required) and the destinations' settings, plus
# AZ_RESOURCE_GROUP, AZ_LOCATION, AZ_FUNCTION_APP (a globally unique name),
# AZ_STORAGE_ACCOUNT (the Functions host's own storage account) and AZ_KEY_VAULT (all
# required), AZ_LAKE_RESOURCE_GROUP (the azure destination's storage account's group;
# default AZ_RESOURCE_GROUP). The app's system-assigned identity gets only
# scripts/azure/proxy-role.json (no `*` actions), assigned on the lake container (with
# a condition that limits deletes to the write probe) and on the vault. Secret settings
# go into Key Vault and reach the app as Key Vault references; the rest are plain app
# settings. RUNTIME=AZURE is set by function_app.py: rows are written inside each
# request (DELIVERY=sync). The code is built remotely from requirements.txt plus
# requirements-azure-functions.txt.
# Needs: az CLI, logged in with rights to create these resources and role assignments,
# and Key Vault Secrets Officer on the vault (RBAC mode) to write the secrets.
set -euo pipefail
# shellcheck source=scripts/lib/deploy-common.sh
source "$(dirname "$0")/lib/deploy-common.sh"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  usage_common
}

require() {
  local value
  value="$(env_get "$1")"
  [ -n "$value" ] || die "${1^^} is not set in $ENV_FILE"
  printf '%s' "$value"
}

json_string() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

parse_args "$@"
load_env
select_vars
RG="$(require az_resource_group)"
LOCATION="$(require az_location)"
APP="$(require az_function_app)"
HOST_STORAGE="$(require az_storage_account)"
VAULT="$(require az_key_vault)"
LAKE_RG="$(env_get az_lake_resource_group)"
LAKE_RG="${LAKE_RG:-$RG}"
ROLE_NAME="mixpanel-dwh-proxy runtime"
WORK="$(scratch_dir)"

say "Azure Function App $APP in $RG ($LOCATION); destinations: $(env_get destinations)"
capture SUBSCRIPTION_ID az account show --query id -o tsv
run az group create --name "$RG" --location "$LOCATION" --output none
ensure az storage account show --name "$HOST_STORAGE" --resource-group "$RG" -- \
  az storage account create --name "$HOST_STORAGE" --resource-group "$RG" --location "$LOCATION" \
  --sku Standard_LRS --min-tls-version TLS1_2 --allow-blob-public-access false --output none
ensure az functionapp show --name "$APP" --resource-group "$RG" -- \
  az functionapp create --name "$APP" --resource-group "$RG" --storage-account "$HOST_STORAGE" \
  --flexconsumption-location "$LOCATION" --runtime python --runtime-version 3.11 --output none
capture PRINCIPAL_ID az functionapp identity assign --name "$APP" --resource-group "$RG" --query principalId -o tsv

# The custom role, assigned only where it is needed.
role="$(<"$ROOT/scripts/azure/proxy-role.json")"
scopes="\"/subscriptions/$SUBSCRIPTION_ID/resourceGroups/$RG\""
[ "$LAKE_RG" = "$RG" ] || scopes+=", \"/subscriptions/$SUBSCRIPTION_ID/resourceGroups/$LAKE_RG\""
role="${role//"\${ASSIGNABLE_SCOPES}"/$scopes}"
write_file "$WORK/role.json" "$role"
run_ok az role definition create --role-definition "@$WORK/role.json"
run az role definition update --role-definition "@$WORK/role.json" --output none
assign() {
  run az role assignment create --assignee-object-id "$PRINCIPAL_ID" --assignee-principal-type ServicePrincipal \
    --role "$ROLE_NAME" "$@" --output none
}
if has_destination azure && env_has azure_account; then
  prefix="$(env_get lake_prefix)"
  prefix="${prefix#/}"
  prefix="${prefix%/}"
  container_scope="/subscriptions/$SUBSCRIPTION_ID/resourceGroups/$LAKE_RG/providers/Microsoft.Storage/storageAccounts/$(env_get azure_account)/blobServices/default/containers/$(env_get azure_container)"
  blobs="Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
  condition="((!(ActionMatches{'$blobs/delete'})) OR (@Resource[$blobs:path] StringStartsWith '${prefix:+$prefix/}_proxy_probe/'))"
  assign --scope "$container_scope" --condition "$condition" --condition-version 2.0
fi

# Secrets: Key Vault (RBAC mode), read by the app's identity through Key Vault references.
settings=""
if [ ${#SECRET_NAMES[@]} -gt 0 ]; then
  ensure az keyvault show --name "$VAULT" --resource-group "$RG" -- \
    az keyvault create --name "$VAULT" --resource-group "$RG" --location "$LOCATION" --enable-rbac-authorization true --output none
  assign --scope "/subscriptions/$SUBSCRIPTION_ID/resourceGroups/$RG/providers/Microsoft.KeyVault/vaults/$VAULT"
  for name in "${SECRET_NAMES[@]}"; do
    id="$(secret_id "$name")"
    write_secret_file "$WORK/secret" "$name"
    run az keyvault secret set --vault-name "$VAULT" --name "$id" --file "$WORK/secret" --encoding utf-8 --output none
    run rm -f "$WORK/secret"
    settings+="${settings:+,$'\n'}  {\"name\": $(json_string "${name^^}"), \"value\": \"@Microsoft.KeyVault(VaultName=$VAULT;SecretName=$id)\", \"slotSetting\": false}"
  done
fi
for name in $(plain_names); do
  settings+="${settings:+,$'\n'}  {\"name\": $(json_string "${name^^}"), \"value\": $(json_string "$(env_get "$name")"), \"slotSetting\": false}"
done
write_file "$WORK/settings.json" "[
$settings
]"
run az functionapp config appsettings set --name "$APP" --resource-group "$RG" --settings "@$WORK/settings.json" --output none

# The code, built remotely (pip install of the merged requirements.txt).
stage_code "$WORK/app" requirements-azure-functions.txt "$ROOT/function_app.py" "$ROOT/host.json"
run python3 -c 'import shutil, sys; shutil.make_archive(sys.argv[1], "zip", sys.argv[2])' "$WORK/app" "$WORK/app"
run az functionapp deployment source config-zip --name "$APP" --resource-group "$RG" --src "$WORK/app.zip" --build-remote true
capture HOST az functionapp show --name "$APP" --resource-group "$RG" --query defaultHostName -o tsv
[ "$DRY_RUN" = 1 ] || rm -rf "$WORK"
print_api_host "https://$HOST"
