#!/usr/bin/env bash
# Create, once, the venv that runs a real `clip-retrieval back` for the kNN-service tests
# (tests/test_knn_client.py). Its pip list is the one of envs/clip-retrieval.yaml; the venv is rebuilt
# only when that file changes (a stamp holds its checksum). Path: $SYNRET_CLIP_RETRIEVAL_VENV, default
# .venvs/clip-retrieval (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

env_file=envs/clip-retrieval.yaml
venv="${SYNRET_CLIP_RETRIEVAL_VENV:-.venvs/clip-retrieval}"
stamp="$venv/.synret-env-sha256"
want="$(sha256sum "$env_file" | cut -d' ' -f1)"

if [[ -x "$venv/bin/clip-retrieval" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "clip-retrieval venv $venv is up to date"
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
"$venv/bin/clip-retrieval" --help >/dev/null  # imports cleanly (pkg_resources present)
echo "$want" >"$stamp"
echo "created clip-retrieval venv $venv in $((SECONDS - start)) s"
