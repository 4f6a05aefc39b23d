"""Generated code of the recsys.v1 API. Do not edit: run `make protos`."""
