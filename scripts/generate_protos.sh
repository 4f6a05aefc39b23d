#!/usr/bin/env bash
# Regenerates the Python code of the recsys.v1 API (messages, gRPC stubs and .pyi type stubs)
# from protos/ with the pinned grpcio-tools and mypy-protobuf of the project's venv.
# Usage: scripts/generate_protos.sh [OUTPUT_ROOT]   (default: clients/python)
# The generated files are committed; `make check-protos` fails when they drift from protos/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
out=${1:-clients/python}
bin_dir=$(dirname "$PYTHON")
wkt_include=$("$PYTHON" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')

rm -rf "$out/recsys/v1"
mkdir -p "$out/recsys/v1"
"$PYTHON" -m grpc_tools.protoc \
  --proto_path=protos \
  --proto_path="$wkt_include" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy="$bin_dir/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$bin_dir/protoc-gen-mypy_grpc" \
  --mypy_out="$out" \
  --mypy_grpc_out="$out" \
  protos/recsys/v1/*.proto
cat > "$out/recsys/v1/__init__.py" <<'PY'
"""Generated code of the recsys.v1 API. Do not edit: run `make protos`."""
PY
touch "$out/recsys/v1/py.typed"
