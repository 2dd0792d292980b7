#!/usr/bin/env bash
# Builds emqtt-bench (EMQX's Erlang MQTT load generator) for bench.arrival's
# --emqtt-bench, and prints the escript's path.
#
#   bench/build_emqtt_bench.sh [DIR]        (default DIR: /tmp/emqtt-bench-build)
#
# 0.4.21 is the newest release that builds on Debian 12's OTP 25 (from 0.5 on,
# emqtt needs OTP 26 or later; 0.4.20's `conn` crashes at its start). Its
# dependencies are pinned here to the tags its own rebar.config and emqtt
# 1.9.5's name, and put in `_checkouts`, so rebar3 fetches nothing from hex.pm
# or GitHub itself. QUIC (quicer, a NIF built with cmake) is left out.
#
# GIT_SOURCE says where to clone from: a template with {owner} and {name},
# https://github.com/{owner}/{name} unless set (for local mirrors, say
# GIT_SOURCE='/work/.mirror/{owner}+{name}/repo').
set -euo pipefail

dir=${1:-/tmp/emqtt-bench-build}
source_of() {
    local template=${GIT_SOURCE:-https://github.com/\{owner\}/\{name\}}
    template=${template//\{owner\}/$1}
    echo "${template//\{name\}/$2}"
}
clone() {  # owner name tag folder
    local source shallow=()
    source=$(source_of "$1" "$2")
    [[ $source == *://* ]] && shallow=(--depth 1)  # a local clone shares objects
    git clone --quiet -c advice.detachedHead=false "${shallow[@]}" --branch "$3" "$source" "$4"
}

if ! command -v erl >/dev/null || ! command -v rebar3 >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "build_emqtt_bench: needs Erlang and rebar3 (apt-get install erlang-nox erlang-dev rebar3)" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq erlang-nox erlang-dev rebar3 >/dev/null
fi

rm -rf "$dir"
mkdir -p "$dir"
clone emqx emqtt-bench 0.4.21 "$dir/emqtt-bench"
checkouts=$dir/emqtt-bench/_checkouts
mkdir -p "$checkouts"
clone emqx emqtt 1.9.5 "$checkouts/emqtt"
clone zmstone getopt v1.0.2.1 "$checkouts/getopt"
clone ninenines cowlib 2.12.1 "$checkouts/cowlib"
clone emqx gun 1.3.7 "$checkouts/gun"
cd "$dir/emqtt-bench"
rm -f rebar.lock
BUILD_WITHOUT_QUIC=1 rebar3 escriptize >"$dir/build.log" 2>&1 || {
    tail -20 "$dir/build.log" >&2
    exit 1
}
echo "$dir/emqtt-bench/_build/default/bin/emqtt_bench"
