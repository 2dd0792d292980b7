#!/usr/bin/env bash
# A checkout whose device connections read and write through C: the experiment
# of docs/benchmarks.md, "The connect path in C, measured". Not part of loadgen.
#
#   bench/native_transport/make_tree.sh DIR [COMMIT]   (COMMIT: 986cc6c, which the patch fits)
#   .venv/bin/python -m bench.arrival --no-publish --devices 5000 --rate 250 --repeats 4 \
#       --workers auto --tree . --tree DIR
#
# The worktree gets bench/native_transport/_fastconn.c compiled into
# loadgen/transport (gcc, the Python headers and Debian's libssl-dev, against the
# libssl Python's own ssl module uses) and client.patch applied: each readable
# callback of a TLS connection, and each write, becomes one call into C that
# receives, feeds the SSL's memory BIO, runs the handshake or reads records, and
# sends what OpenSSL wrote; anything unusual (an error, an EOF, a partial send)
# goes back to the Python code it replaces.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${1:?usage: make_tree.sh DIR [COMMIT]}
commit=${2:-986cc6c}
python=${PYTHON:-$repo/.venv/bin/python}
git -C "$repo" worktree add -q --detach "$dir" "$commit"
git -C "$dir" apply "$here/client.patch"
suffix=$("$python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
gcc -O2 -Wall -shared -fPIC -I"$include" "$here/_fastconn.c" \
    -o "$dir/loadgen/transport/_fastconn$suffix" -lssl -lcrypto
"$python" -c "import sys; sys.path.insert(0, '$dir'); from loadgen.transport import client; assert client._fast is not None"
echo "$dir: loadgen with its connections in C"
