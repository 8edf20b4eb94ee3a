#!/usr/bin/env bash
# Run a whole tokenmill plan on Google Cloud Dataflow.
#
#   PROJECT=my-project REGION=europe-west4 BUCKET=my-bucket \
#   IMAGE=europe-west4-docker.pkg.dev/my-project/tokenmill/tokenmill-beam:0.1 \
#     infra/dataflow/launch.sh [--input 'gs://my-bucket/raw/*.jsonl.zst'] [-- --set key=value ...]
#
# What it does, from the repo root:
#   1. builds and pushes the Beam SDK container (infra/Dockerfile, target beam-sdk) as IMAGE:
#      Dataflow's workers run tokenmill from that image (skip with --skip-build or SKIP_BUILD=1);
#   2. runs `tokenmill run configs/beam-dataflow.yaml` here, with run_root gs://BUCKET/tokenmill-runs,
#      the inputs (default gs://BUCKET/raw/*.jsonl.zst) and the Dataflow pipeline options
#      (DataflowRunner, project, region, temp and staging locations under gs://BUCKET, the image,
#      Runner v2). This machine plans the run and submits each phase; Dataflow does the work.
#      Arguments after `--` are passed on to `tokenmill run` (e.g. --set engine.workers=64).
#
# Needs, on this machine: docker (logged in to the registry of IMAGE, e.g.
# `gcloud auth configure-docker REGION-docker.pkg.dev`); tokenmill installed with
# `pip install ".[gcs]" "apache-beam[gcp]"` (the same Beam and Python 3.11 as the image);
# and Google Cloud credentials: `gcloud auth application-default login` (or a service account
# via GOOGLE_APPLICATION_CREDENTIALS) with the Dataflow API enabled in PROJECT and write access
# to BUCKET.
#
# Settings (flags win over environment variables):
#   --project / PROJECT   --region / REGION   --bucket / BUCKET (name or gs://name)
#   --image / IMAGE       --input / INPUT     --config / CONFIG (default configs/beam-dataflow.yaml)
set -euo pipefail

prog="launch.sh"

usage() {
  cat >&2 <<'EOF'
usage: infra/dataflow/launch.sh --project PROJECT --region REGION --bucket BUCKET --image IMAGE
                                [--input GLOB] [--config FILE] [--skip-build] [-- TOKENMILL_ARGS...]
  or set PROJECT, REGION, BUCKET, IMAGE (and optionally INPUT, CONFIG, SKIP_BUILD=1) in the environment.
  IMAGE is the Beam SDK image to build and push, e.g. REGION-docker.pkg.dev/PROJECT/tokenmill/tokenmill-beam:0.1
EOF
}

die() {
  echo "$prog: $*" >&2
  exit 2
}

PROJECT="${PROJECT:-}"
REGION="${REGION:-}"
BUCKET="${BUCKET:-}"
IMAGE="${IMAGE:-}"
INPUT="${INPUT:-}"
CONFIG="${CONFIG:-configs/beam-dataflow.yaml}"
SKIP_BUILD="${SKIP_BUILD:-0}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --project | --region | --bucket | --image | --input | --config)
      [[ $# -ge 2 && -n "$2" ]] || { usage; die "$1 needs a value"; }
      case "$1" in
        --project) PROJECT="$2" ;;
        --region) REGION="$2" ;;
        --bucket) BUCKET="$2" ;;
        --image) IMAGE="$2" ;;
        --input) INPUT="$2" ;;
        --config) CONFIG="$2" ;;
      esac
      shift 2
      ;;
    --project=* | --region=* | --bucket=* | --image=* | --input=* | --config=*)
      value="${1#*=}"
      case "$1" in
        --project=*) PROJECT="$value" ;;
        --region=*) REGION="$value" ;;
        --bucket=*) BUCKET="$value" ;;
        --image=*) IMAGE="$value" ;;
        --input=*) INPUT="$value" ;;
        --config=*) CONFIG="$value" ;;
      esac
      shift
      ;;
    --skip-build)
      SKIP_BUILD=1
      shift
      ;;
    --)
      shift
      break
      ;;
    *)
      usage
      die "unknown argument: $1"
      ;;
  esac
done
extra_args=("$@")

# Everything is checked before anything is built, pushed or run.
missing=()
[[ -n "$PROJECT" ]] || missing+=(PROJECT)
[[ -n "$REGION" ]] || missing+=(REGION)
[[ -n "$BUCKET" ]] || missing+=(BUCKET)
[[ -n "$IMAGE" ]] || missing+=(IMAGE)
if [[ ${#missing[@]} -gt 0 ]]; then
  usage
  die "missing ${missing[*]} (flags or environment variables)"
fi

BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "BUCKET must be a bucket name (got '$BUCKET')"
INPUT="${INPUT:-gs://$BUCKET/raw/*.jsonl.zst}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
[[ -f "$CONFIG" ]] || die "config $CONFIG not found (relative to the repo root)"
command -v tokenmill >/dev/null 2>&1 || die 'tokenmill not found: pip install ".[gcs]" "apache-beam[gcp]"'
if [[ "$SKIP_BUILD" != 1 ]]; then
  command -v docker >/dev/null 2>&1 || die "docker not found (or pass --skip-build if IMAGE is pushed already)"
fi

# One YAML flow-list item: single-quoted, so that ':', '#', ',' or '*' in a value stay text.
yaml_item() {
  local s="${1//\'/\'\'}"
  printf "'%s'" "$s"
}

yaml_list() {
  local out="" item
  for item in "$@"; do
    out+="${out:+, }$(yaml_item "$item")"
  done
  printf '[%s]' "$out"
}

beam_options=(
  --runner=DataflowRunner
  "--project=$PROJECT"
  "--region=$REGION"
  "--temp_location=gs://$BUCKET/tmp"
  "--staging_location=gs://$BUCKET/staging"
  "--sdk_container_image=$IMAGE"
  --experiments=use_runner_v2
)

if [[ "$SKIP_BUILD" != 1 ]]; then
  echo "$prog: building and pushing $IMAGE" >&2
  docker build -f infra/Dockerfile --target beam-sdk -t "$IMAGE" . && docker push "$IMAGE"
fi

echo "$prog: tokenmill run $CONFIG on Dataflow (project $PROJECT, region $REGION)" >&2
exec tokenmill run "$CONFIG" \
  --set "run_root=gs://$BUCKET/tokenmill-runs" \
  --set "input.paths=$(yaml_list "$INPUT")" \
  --set "engine.beam.options=$(yaml_list "${beam_options[@]}")" \
  ${extra_args[@]+"${extra_args[@]}"}
