// The one error type of the client: the gRPC status code and message of a failed call, with the
// google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo) the server sends in the
// `grpc-status-details-bin` trailer, decoded with the generated google.rpc types.

import { create } from "@bufbuild/protobuf";
import type { Any } from "@bufbuild/protobuf/wkt";
import { AnySchema, anyPack, anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, decodeBinaryHeader } from "@connectrpc/connect";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

export { Code } from "@connectrpc/connect";

/** The trailer (or trailers-only header) carrying a serialized google.rpc.Status. */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";
/** The request id the server answers every call with (the caller's, when it sent one). */
export const REQUEST_ID_KEY = "x-request-id";
/** gRPC server pushback: how long to wait before retrying, in milliseconds. */
export const RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms";

// gRPC's names of the canonical codes (google.rpc.Code), indexed by their number.
const CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** gRPC's name of a status code, for example "INVALID_ARGUMENT". */
export function codeName(code: Code): string {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

/** One invalid request field (BadRequest.FieldViolation), e.g. `limit` or `events[2].user_id`. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call: status code, message and the server's structured details. */
export class RecsysError extends Error {
  override readonly name = "RecsysError";
  /** The gRPC status code (Connect's `Code`, numbered as gRPC and google.rpc.Code). */
  readonly code: Code;
  /** The server's message, without the code prefix of `message`. */
  readonly rawMessage: string;
  /** The server's `x-request-id` for this call ("" when none came back). */
  readonly requestId: string;
  /** ErrorInfo.reason: a stable UPPER_SNAKE_CASE identifier, e.g. "RATE_LIMITED" ("" if none). */
  readonly reason: string;
  /** ErrorInfo.domain ("recsys.v1" for the platform's own errors). */
  readonly domain: string;
  /** ErrorInfo.metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** BadRequest.field_violations: every invalid field of the request. */
  readonly fieldViolations: readonly FieldViolation[];
  /** RetryInfo.retry_delay (or the grpc-retry-pushback-ms trailer) in milliseconds. */
  readonly retryAfterMs: number | undefined;

  constructor(
    init: {
      code: Code;
      message: string;
      requestId?: string;
      reason?: string;
      domain?: string;
      metadata?: Record<string, string>;
      fieldViolations?: FieldViolation[];
      retryAfterMs?: number | undefined;
    },
    options?: { cause?: unknown },
  ) {
    const violations = init.fieldViolations ?? [];
    let text = `${codeName(init.code)}: ${init.message}`;
    if (violations.length > 0) {
      text += ` [${violations.map((v) => `${v.field}: ${v.description}`).join("; ")}]`;
    }
    super(text, options);
    this.code = init.code;
    this.rawMessage = init.message;
    this.requestId = init.requestId ?? "";
    this.reason = init.reason ?? "";
    this.domain = init.domain ?? "";
    this.metadata = init.metadata ?? {};
    this.fieldViolations = violations;
    this.retryAfterMs = init.retryAfterMs;
  }

  /** gRPC's name of `code`, for example "INVALID_ARGUMENT". */
  get codeName(): string {
    return codeName(this.code);
  }

  /** The RecsysError of anything a call threw (a ConnectError, an abort, a network error). */
  static from(reason: unknown): RecsysError {
    if (reason instanceof RecsysError) {
      return reason;
    }
    const error = ConnectError.from(reason);
    let fieldViolations: FieldViolation[] = [];
    let info: { reason: string; domain: string; metadata: Record<string, string> } | undefined;
    let retryAfterMs: number | undefined;
    for (const detail of statusDetails(error)) {
      const badRequest = anyUnpack(detail, BadRequestSchema);
      if (badRequest !== undefined) {
        fieldViolations = fieldViolations.concat(
          badRequest.fieldViolations.map((v) => ({ field: v.field, description: v.description })),
        );
        continue;
      }
      const errorInfo = anyUnpack(detail, ErrorInfoSchema);
      if (errorInfo !== undefined) {
        info = { reason: errorInfo.reason, domain: errorInfo.domain, metadata: errorInfo.metadata };
        continue;
      }
      const retryInfo = anyUnpack(detail, RetryInfoSchema);
      if (retryInfo?.retryDelay !== undefined) {
        const delay = retryInfo.retryDelay;
        retryAfterMs = Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6);
      }
    }
    if (retryAfterMs === undefined) {
      const pushback = Number.parseInt(error.metadata.get(RETRY_PUSHBACK_KEY) ?? "", 10);
      if (Number.isFinite(pushback) && pushback >= 0) {
        retryAfterMs = pushback;
      }
    }
    return new RecsysError(
      {
        code: error.code,
        message: error.rawMessage,
        requestId: firstValue(error.metadata.get(REQUEST_ID_KEY)),
        reason: info?.reason,
        domain: info?.domain,
        metadata: info?.metadata,
        fieldViolations,
        retryAfterMs,
      },
      { cause: reason },
    );
  }
}

/** The details (packed in Any) of a failed call: from the google.rpc.Status of its
 * `grpc-status-details-bin` trailer, or, for an error made on this side, its own details. */
function statusDetails(error: ConnectError): Any[] {
  const header = error.metadata.get(STATUS_DETAILS_KEY);
  if (header !== null) {
    try {
      return decodeBinaryHeader(firstValue(header), StatusSchema).details;
    } catch {
      // Undecodable details: the call's own code and message still hold.
      return [];
    }
  }
  return error.details.map((detail) =>
    "desc" in detail
      ? anyPack(detail.desc, create(detail.desc, detail.value))
      : create(AnySchema, { typeUrl: `type.googleapis.com/${detail.type}`, value: detail.value }),
  );
}

// Headers.get joins repeated values (header and trailer both carrying one) with ", ".
function firstValue(value: string | null): string {
  return (value ?? "").split(",")[0]!.trim();
}
