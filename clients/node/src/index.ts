// The recsys.v1 TypeScript client: RecsysClient, RecsysError and the generated types.

export {
  DEFAULT_TIMEOUT_MS,
  RecsysClient,
  type CallSettings,
  type HealthStatus,
  type RecommendOptions,
  type RecsysClientOptions,
} from "./client.js";
export {
  Code,
  REQUEST_ID_KEY,
  RecsysError,
  STATUS_DETAILS_KEY,
  codeName,
  type FieldViolation,
} from "./errors.js";
export * from "./gen/recsys/v1/common_pb.js";
export * from "./gen/recsys/v1/recommend_service_pb.js";
export * from "./gen/recsys/v1/ingest_service_pb.js";
export * from "./gen/recsys/v1/interaction_event_pb.js";
