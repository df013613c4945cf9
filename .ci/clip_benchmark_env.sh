#!/usr/bin/env bash
# Create, once, the venv that runs the real `clip_benchmark` CLI for the cross-check tests
# (tests/test_clip_benchmark.py). Its pip list is the one of envs/clip-benchmark.yaml; the venv is rebuilt
# only when that file changes (a stamp holds its checksum). Path: $SYNRET_CLIP_BENCHMARK_VENV, default
# .venvs/clip-benchmark (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

env_file=envs/clip-benchmark.yaml
venv="${SYNRET_CLIP_BENCHMARK_VENV:-.venvs/clip-benchmark}"
stamp="$venv/.synret-env-sha256"
want="$(sha256sum "$env_file" | cut -d' ' -f1)"

if [[ -x "$venv/bin/clip_benchmark" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "clip-benchmark venv $venv is up to date"
    exit 0
fi

# the entries of the file's pip: block (lines "      - <requirement>" after "  - pip:")
mapfile -t requirements < <(sed -n '/^  - pip:/,$ s/^      - \(.*\)$/\1/p' "$env_file")
if [[ ${#requirements[@]} -eq 0 ]]; then
    echo "error: no pip requirements found in $env_file" >&2
    exit 1
fi

start=$SECONDS
rm -rf "$venv"
python3 -m venv "$venv"
# (pip's notes about this machine's empty local indexes are noise here)
"$venv/bin/pip" install --quiet "${requirements[@]}" 2> >(grep -v "^WARNING: Location 'file:" >&2)
"$venv/bin/clip_benchmark" --help >/dev/null  # imports cleanly
echo "$want" >"$stamp"
echo "created clip-benchmark venv $venv in $((SECONDS - start)) s"
