// RecsysClient against a running platform: RECSYS_ADDRESS=host:port (tests/clients/
// test_node_client.py starts an embedded deployment with the users alice, kid and bob and
// runs this file with `node --test`).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { Code, RecsysClient, RecsysError } from "../src/index.js";

const address = process.env["RECSYS_ADDRESS"];

describe("RecsysClient", { skip: address ? false : "RECSYS_ADDRESS is not set" }, () => {
  let client: RecsysClient;

  before(() => {
    client = new RecsysClient({ baseUrl: `http://${address}`, timeoutMs: 10_000 });
  });

  after(() => {
    client.close();
  });

  it("recommends items", async () => {
    const response = await client.recommend("alice", { surface: "homepage", limit: 5 });
    assert.equal(response.items.length, 5);
    assert.ok(response.requestId.length > 0);
    const scores = response.items.map((item) => item.score);
    assert.deepEqual(scores, [...scores].sort((a, b) => b - a));
    assert.ok(response.items.every((item) => typeof item.itemId === "bigint"));
    assert.ok(response.items.every((item) => item.category !== "Horror"));
  });

  it("sends the caller's request id", async () => {
    const response = await client.recommend("alice", {
      surface: "homepage",
      limit: 1,
      requestId: "node-test-1",
    });
    assert.equal(response.requestId, "node-test-1");
  });

  it("decodes INVALID_ARGUMENT with its field violations", async () => {
    const error = await rejection(client.recommend("alice", { surface: "Not A Surface", limit: 0 }));
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.domain, "recsys.v1");
    assert.ok(error.reason.length > 0, "ErrorInfo.reason decoded");
    assert.ok(error.requestId.length > 0, "x-request-id trailer read");
    const fields = error.fieldViolations.map((violation) => violation.field).sort();
    assert.deepEqual(fields, ["limit", "surface"]);
    assert.ok(error.fieldViolations.every((violation) => violation.description.length > 0));
    assert.match(error.message, /^INVALID_ARGUMENT: .*\[.*limit: /);
  });

  it("decodes RESOURCE_EXHAUSTED with its retry delay", async () => {
    // The test deployment allows 20 requests per window and user.
    let error: RecsysError | undefined;
    for (let attempt = 0; attempt < 40 && error === undefined; attempt++) {
      try {
        await client.recommend("kid", { surface: "homepage", limit: 1 });
      } catch (reason) {
        assert.ok(reason instanceof RecsysError);
        error = reason;
      }
    }
    assert.ok(error, "rate limited within 40 calls");
    assert.equal(error.code, Code.ResourceExhausted);
    assert.ok(error.retryAfterMs !== undefined && error.retryAfterMs > 0, "RetryInfo decoded");
  });

  it("deletes a user's data, idempotently", async () => {
    const first = await client.deleteUserData("bob");
    assert.ok(first.profileErased);
    assert.ok(first.deletionEventId.length > 0);
    const second = await client.deleteUserData("bob");
    assert.equal(second.profileErased, false);
    assert.equal(second.deletedKeys, 0);
    assert.equal(second.deletedInteractions, 0);
    assert.equal(second.deletionEventId, first.deletionEventId);
  });

  it("checks health", async () => {
    assert.equal(await client.checkHealth(), "SERVING");
    assert.equal(await client.checkHealth("recsys.v1.RecommendService"), "SERVING");
    const error = await rejection(client.checkHealth("no.such.Service"));
    assert.equal(error.code, Code.NotFound);
  });

  it("enforces a deadline per call", async () => {
    const error = await rejection(
      client.recommend("alice", { surface: "homepage", limit: 5, timeoutMs: 1 }),
    );
    assert.equal(error.code, Code.DeadlineExceeded);
  });
});

async function rejection(promise: Promise<unknown>): Promise<RecsysError> {
  try {
    await promise;
  } catch (reason) {
    assert.ok(reason instanceof RecsysError, `a RecsysError, not ${String(reason)}`);
    return reason;
  }
  assert.fail("the call succeeded");
}
