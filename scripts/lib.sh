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
