#!/usr/bin/env bash
# `buf breaking` for the recsys.v1 API:
#  1. the working tree against HEAD (catches a breaking edit before it is committed);
#  2. the working tree against the published baseline, the commit named in
#     protos/BREAKING_BASELINE (the last released API; bump it when releasing).
# A baseline that the clone does not hold (shallow clone) is reported, not silently passed.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}

has_protos() { git cat-file -e "$1:buf.yaml" 2>/dev/null && git cat-file -e "$1:protos/recsys/v1" 2>/dev/null; }

checked=0
if git rev-parse --verify -q HEAD >/dev/null && has_protos HEAD; then
  "$BUF" breaking --against '.git#ref=HEAD'
  echo "buf breaking: no breaking change against HEAD"
  checked=1
fi
if [[ -s protos/BREAKING_BASELINE ]]; then
  baseline=$(tr -d '[:space:]' < protos/BREAKING_BASELINE)
  if ! git cat-file -e "${baseline}^{commit}" 2>/dev/null; then
    echo "buf breaking: baseline ${baseline} is not in this clone (shallow?); fetch full history" >&2
    exit 1
  fi
  "$BUF" breaking --against ".git#ref=${baseline}"
  echo "buf breaking: no breaking change against the published baseline ${baseline:0:12}"
  checked=1
fi
if [[ $checked -eq 0 ]]; then
  echo "buf breaking: no previous version of the protos yet"
fi
