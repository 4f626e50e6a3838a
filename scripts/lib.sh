# Helpers sourced by the scripts in this folder.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every half second until it succeeds, it exits 2
# (hopeless, e.g. the process died) or time runs out.
wait_for() {
  local what=$1 seconds=$2 rc
  shift 2
  local deadline=$((SECONDS + seconds))
  while true; do
    rc=0
    "$@" || rc=$?
    [ "$rc" = 0 ] && break
    if [ "$rc" = 2 ] || [ "$SECONDS" -ge "$deadline" ]; then
      log "gave up waiting for $what after $((seconds - deadline + SECONDS))s"
      return 1
    fi
    sleep 0.5
  done
  log "$what is ready"
}

# The AWS SDK gets static test credentials and never asks the instance-metadata address.
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_EC2_METADATA_DISABLED=true

# The SQS emulator the scripts start and the tests, the demo and the bench use: SQS_EMULATOR=localstack
# (the default and the reference; 127.0.0.1:4566) or fauxqs (Node; FAUXQS_PORT, 127.0.0.1:4576 by
# default, so both can run at once). With fauxqs, AWS_ENDPOINT_URL names it, for every process these
# scripts start (the tests read it through testkit, the services and accrual-bench through settings).
# SQS_EMULATOR=both (scripts/test's default) starts the two; the test script then points each of its
# two passes at one (LOCALSTACK_URL, FAUXQS_URL).
SQS_EMULATOR=${SQS_EMULATOR:-localstack}
FAUXQS_PORT=${FAUXQS_PORT:-4576}
LOCALSTACK_URL=http://127.0.0.1:4566
FAUXQS_URL=http://127.0.0.1:$FAUXQS_PORT
case "$SQS_EMULATOR" in
  localstack | both) ;;
  fauxqs) export AWS_ENDPOINT_URL=$FAUXQS_URL ;;
  *)
    log "SQS_EMULATOR must be localstack, fauxqs or (for scripts/test and services-up) both, not '$SQS_EMULATOR'"
    exit 64
    ;;
esac
export SQS_EMULATOR FAUXQS_PORT

# one_emulator WHAT: refuses SQS_EMULATOR=both for a script that runs on one emulator.
one_emulator() {
  if [ "$SQS_EMULATOR" = both ]; then
    log "$1 runs on one SQS emulator: SQS_EMULATOR=localstack (the default) or fauxqs, not both"
    exit 64
  fi
}

# localstack_healthy: LocalStack answers and its SQS is up.
localstack_healthy() {
  curl -fsS --max-time 2 http://127.0.0.1:4566/_localstack/health 2>/dev/null |
    grep -Eq '"sqs": *"(available|running)"'
}

# fauxqs_healthy: fauxqs answers an SQS ListQueues call on its port.
fauxqs_healthy() {
  curl -fsS --max-time 2 -X POST -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Target: AmazonSQS.ListQueues' -d '{}' "http://127.0.0.1:$FAUXQS_PORT/" 2>/dev/null |
    grep -q '"QueueUrls"'
}

# sqs_emulator_healthy: the emulator SQS_EMULATOR names answers.
sqs_emulator_healthy() {
  case "$SQS_EMULATOR" in
    both) localstack_healthy && fauxqs_healthy ;;
    *) "${SQS_EMULATOR}_healthy" ;;
  esac
}
