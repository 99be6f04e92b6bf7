#!/usr/bin/env bash
# Production on one machine: nginx on PORT in front of the production gunicorn (gunicorn_conf.py)
# on a private loopback port, with the same server block the containers use
# (deploy/nginx/u2net.conf.template). Stops both on SIGTERM or Ctrl-C; if either dies, stops the
# other and exits non-zero.
#
#   deploy/run-local.sh 5002
#
# Environment: everything the service reads (OpenClone_OpenCloneFS, U2NET_*, MAX_UPLOAD_MB, ...),
# plus U2NET_PRIVATE_PORT (gunicorn's port; default: a free one), NGINX and GUNICORN (the
# programs; default: nginx from PATH or /usr/sbin, the project's .venv gunicorn or PATH's).
set -euo pipefail

port=${1:?usage: deploy/run-local.sh PORT}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(dirname "$here")

python=python3
[ -x "$project/.venv/bin/python" ] && python="$project/.venv/bin/python"
gunicorn=${GUNICORN:-$( [ -x "$project/.venv/bin/gunicorn" ] && echo "$project/.venv/bin/gunicorn" || command -v gunicorn )}
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
private=${U2NET_PRIVATE_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
max_upload=${MAX_UPLOAD_MB:-50}

work=$(mktemp -d "${TMPDIR:-/tmp}/u2net-nginx.XXXXXX")
chmod 755 "$work"  # nginx's workers (another user when started as root) use its temp folders
render() {
  sed -e "s|\${NGINX_PORT}|$port|g" -e "s|\${U2NET_UPSTREAM}|127.0.0.1:$private|g" \
      -e "s|\${MAX_UPLOAD_MB}|$max_upload|g" -e "s|\${WORK}|$work|g" "$1"
}
render "$here/nginx/u2net.conf.template" > "$work/u2net.conf"
render "$here/nginx/local.conf" > "$work/nginx.conf"
"$nginx" -t -q -p "$work" -c "$work/nginx.conf" -e stderr

pids=()
stop() {
  # Both stop gracefully: gunicorn on TERM finishes the requests in flight (up to
  # graceful_timeout), nginx on QUIT finishes relaying them (on TERM it would drop them).
  trap - TERM INT EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[0]}" 2>/dev/null || true
  [ ${#pids[@]} -gt 1 ] && kill -QUIT "${pids[1]}" 2>/dev/null || true
  wait || true
  rm -rf "$work"
}
trap 'stop; exit 0' TERM INT
trap stop EXIT

(cd "$project" && HOST=127.0.0.1 PORT=$private exec "$gunicorn" -c gunicorn_conf.py) &
pids+=($!)
"$nginx" -p "$work" -c "$work/nginx.conf" -e stderr &
pids+=($!)
echo "nginx on :$port -> gunicorn on 127.0.0.1:$private" >&2

set +e
wait -n "${pids[@]}"
status=$?
echo "a server stopped (exit $status); stopping the other" >&2
stop
exit $(( status == 0 ? 1 : status ))
