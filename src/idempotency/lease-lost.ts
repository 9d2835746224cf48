import type { ServerResponse } from 'node:http'
import type { Idempotency, IdempotentExecution } from './core.js'
import { IdempotencyInProgressError } from './errors.js'
import type { IdempotencyResponse } from './types.js'

// What every HTTP adapter does when a handler overruns its lease (IdempotentExecution's
// onLeaseLost): its client is answered at the lease's end rather than left waiting for a
// handler that may never finish.

/** Whether `error` is the lease-lost 409 error a stale handler's statements fail with. */
export function isLostLease(error: unknown): boolean {
  return error instanceof IdempotencyInProgressError && error.reason === 'lease-lost'
}

/**
 * Gives up an execution whose lease ran out before its response was recorded, and returns the
 * answer for its client: the lease-lost 409 problem (with `Retry-After`), the answer a handler
 * ending late gets. The record stays in progress, expired (with its committed phases), for the
 * retry that takes it over: `abort({ release: false })`, never a release, which would let a
 * retry run while the stale handler may still be calling other systems.
 */
export async function leaseLostAnswer(
  idempotency: Idempotency,
  execution: IdempotentExecution,
  error: IdempotencyInProgressError,
): Promise<IdempotencyResponse> {
  await execution.abort({ release: false })
  return idempotency.problem(error)
}

/**
 * Answers a node response by `answer()` unless its headers already went out (a handler wrote
 * past the adapter): then no problem can follow, and the connection is destroyed instead, so
 * that the client learns no answer will come and retries.
 */
export function answerOrDestroy(res: ServerResponse, answer: () => void): void {
  if (!res.headersSent) answer()
  else if (!res.writableEnded) res.destroy()
}

/**
 * Reads a fetch body whole, unless the lease runs out first: then the stream is cancelled (so
 * that its producer stops) and the lease-lost error is returned instead of the bytes. For an
 * adapter that reads the handler's response to record it, a body that never ends must not keep
 * its client waiting past the lease. Replaces the execution's lease-lost listener.
 */
export async function readBodyWithinLease(
  execution: IdempotentExecution,
  body: ReadableStream<Uint8Array> | null,
): Promise<Uint8Array | IdempotencyInProgressError> {
  if (body === null) return new Uint8Array(0)
  const reader = body.getReader()
  let lost: IdempotencyInProgressError | undefined
  execution.onLeaseLost((error) => {
    lost = error
    // A pending read then resolves done; a cancel that fails leaves nothing more to stop.
    reader.cancel(error).catch(() => {})
  })
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    if (lost !== undefined) return lost
    const { done, value } = await reader.read().catch((error: unknown) => {
      // The stream failing once the lease is lost is the cancel's doing, not the handler's.
      if (lost !== undefined) return { done: true as const, value: undefined }
      throw error
    })
    if (lost !== undefined) return lost
    if (done) break
    chunks.push(value)
    size += value.byteLength
  }
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size)
}
