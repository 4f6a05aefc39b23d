"""Servicers: thin translation between recsys.v1 protobuf messages and domain objects."""
