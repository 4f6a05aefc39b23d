// RecsysClient: the recsys.v1 API over gRPC (HTTP/2) with Connect-ES, a deadline on every call
// and every failure turned into a RecsysError with the server's decoded error details.

import type { MessageInitShape } from "@bufbuild/protobuf";
import type { CallOptions, Client, Transport } from "@connectrpc/connect";
import { createClient } from "@connectrpc/connect";
import type { GrpcTransportOptions } from "@connectrpc/connect-node";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import type { RequestContextSchema } from "./gen/recsys/v1/common_pb.js";
import type {
  DeleteUserDataResponse,
  RecommendResponse,
} from "./gen/recsys/v1/recommend_service_pb.js";
import { RecommendService } from "./gen/recsys/v1/recommend_service_pb.js";
import { REQUEST_ID_KEY, RecsysError } from "./errors.js";

/** Deadline of a call that names none (the Python client's default too). */
export const DEFAULT_TIMEOUT_MS = 5000;

export interface RecsysClientOptions {
  /** Where the platform listens: "http://127.0.0.1:50051" (plaintext) or "https://host:443". */
  baseUrl: string;
  /** Sent as `authorization: Bearer <token>` when the server requires authentication. */
  token?: string;
  /** Deadline of each call unless the call sets its own; DEFAULT_TIMEOUT_MS if not given. */
  timeoutMs?: number;
  /** Options of Node's http2.connect: TLS trust (`ca`) and a client certificate for mTLS. */
  nodeOptions?: GrpcTransportOptions["nodeOptions"];
  /** A transport of your own (interceptors, tests); `baseUrl` and `nodeOptions` then unused. */
  transport?: Transport;
}

/** Options every call takes. */
export interface CallSettings {
  /** Deadline of this call in milliseconds (sent as grpc-timeout, enforced here too). */
  timeoutMs?: number;
  /** Sent as `x-request-id`; the server generates one when absent. */
  requestId?: string;
  /** Cancels the call. */
  signal?: AbortSignal;
}

export interface RecommendOptions extends CallSettings {
  /** The surface asking, e.g. "homepage". Required. */
  surface: string;
  /** Number of items wanted, 1 to 100. Required. */
  limit: number;
  /** Where and when the request comes from. */
  context?: MessageInitShape<typeof RequestContextSchema>;
  /** Items that must not be returned. */
  excludedItemIds?: readonly (bigint | number)[];
}

/** A health service's status: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN". */
export type HealthStatus = keyof typeof HealthCheckResponse_ServingStatus;

export class RecsysClient {
  private readonly recommendService: Client<typeof RecommendService>;
  private readonly health: Client<typeof Health>;
  private readonly sessionManager: Http2SessionManager | undefined;
  private readonly timeoutMs: number;
  private readonly token: string | undefined;

  constructor(options: RecsysClientOptions) {
    let transport = options.transport;
    if (transport === undefined) {
      this.sessionManager = new Http2SessionManager(options.baseUrl, {}, options.nodeOptions);
      transport = createGrpcTransport({
        baseUrl: options.baseUrl,
        sessionManager: this.sessionManager,
      });
    }
    this.recommendService = createClient(RecommendService, transport);
    this.health = createClient(Health, transport);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.token = options.token;
  }

  /** Up to `limit` ranked items for a user on a surface. */
  async recommend(userId: string, options: RecommendOptions): Promise<RecommendResponse> {
    return this.call(
      (callOptions) =>
        this.recommendService.recommend(
          {
            userId,
            surface: options.surface,
            limit: options.limit,
            context: options.context,
            excludedItemIds: (options.excludedItemIds ?? []).map((id) => BigInt(id)),
          },
          callOptions,
        ),
      options,
    );
  }

  /** Erases everything the platform keeps about a user; idempotent. */
  async deleteUserData(userId: string, options: CallSettings = {}): Promise<DeleteUserDataResponse> {
    return this.call(
      (callOptions) => this.recommendService.deleteUserData({ userId }, callOptions),
      options,
    );
  }

  /** grpc.health.v1 Check: "" is the whole server, "liveness" and "readiness" the probes,
   * "recsys.v1.RecommendService" one service. An unknown name fails with NOT_FOUND. */
  async checkHealth(service = "", options: CallSettings = {}): Promise<HealthStatus> {
    const response = await this.call(
      (callOptions) => this.health.check({ service }, callOptions),
      options,
    );
    return HealthCheckResponse_ServingStatus[response.status] as HealthStatus;
  }

  /** Closes the connection (a client made with a `transport` of its own leaves that alone). */
  close(): void {
    this.sessionManager?.abort();
  }

  private async call<T>(run: (options: CallOptions) => Promise<T>, settings: CallSettings): Promise<T> {
    const headers = new Headers();
    if (this.token !== undefined) {
      headers.set("authorization", `Bearer ${this.token}`);
    }
    if (settings.requestId !== undefined) {
      headers.set(REQUEST_ID_KEY, settings.requestId);
    }
    try {
      return await run({
        timeoutMs: settings.timeoutMs ?? this.timeoutMs,
        headers,
        signal: settings.signal,
      });
    } catch (reason) {
      throw RecsysError.from(reason);
    }
  }
}
