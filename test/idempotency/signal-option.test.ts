// A request's signal (IdempotencyRequest.signal, what a custom adapter hands to handle() and
// begin()) is read only when a duplicate has to wait. A value that was not an AbortSignal
// failed there with a bare TypeError from inside the poll's sleep; it is now refused as
// INVALID_OPTION naming `request.signal`. run() and idempotent() check their `signal` up front
// (idempotent.test.ts).
import { describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  type IdempotencyRequest,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'

function request(signal?: unknown): IdempotencyRequest {
  return {
    method: 'POST',
    route: '/charges',
    header: (name) => (name.toLowerCase() === 'idempotency-key' ? 'charge-1' : undefined),
    body: Buffer.from('{"amount":10}'),
    ...(signal === undefined ? {} : { signal: signal as AbortSignal }),
  }
}

describe('idempotency: a request signal that is not an AbortSignal', () => {
  it('is refused, naming request.signal, when the duplicate has to wait', async () => {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({
      store: createMemoryIdempotencyStore(),
      onConcurrent: 'wait',
      clock,
    })
    const first = await idempotency.begin(request())
    expect(first.kind).toBe('execute')
    let runs = 0
    for (const signal of ['abort', {}, { aborted: false }]) {
      await expect(
        idempotency.handle(request(signal), async () => {
          runs++
          return { status: 201, headers: {}, body: Buffer.from('') }
        }),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'request.signal' })
    }
    expect(runs).toBe(0)
  })
})
