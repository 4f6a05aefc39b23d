"""Domain layer: request objects, validation, pipeline stages and policies.

Nothing here imports gRPC or generated protobuf code; servicers translate at the edge.
"""
