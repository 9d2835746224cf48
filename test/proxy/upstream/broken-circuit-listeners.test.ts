// The 503 BROKEN_CIRCUIT answer as a client of a real listener gets it: the ambassador (its fast
// path and node:http for a split head) over the real upstream runtime, with the breaker's
// cooldown on a ManualClock. The service's own tests (forward.test.ts) cover the answer itself.

import { afterEach, describe, expect, it } from 'vitest'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenAmbassador } from '../inbound/harness.js'
import { startFaultyUpstream } from '../support/faulty-upstream.js'
import { sendRaw } from '../support/raw-http.js'
import { serviceConfig, testDeps } from './helpers.js'

const cleanups: Array<() => Promise<unknown> | unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

describe('BROKEN_CIRCUIT through the ambassador', () => {
  it('answers 503 problem+json with Retry-After on the fast path and through node:http alike', async () => {
    const up = await startFaultyUpstream({ fallback: { kind: 'respond', status: 502 } })
    cleanups.push(() => up.close())
    const clock = new ManualClock(1_000_000)
    const service = createServiceRuntime(
      serviceConfig([up.url], {
        retry: undefined,
        breaker: { failureThreshold: 1, cooldownMs: 30_000, halfOpenProbes: 1 },
      }),
      testDeps(clock),
    )
    cleanups.push(() => service.close())
    const { server, port } = await listenAmbassador([service], { clock })
    cleanups.push(() => server.close())
    const head = 'GET /orders/a HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n'
    expect((await sendRaw(port, `${head}\r\n`)).status).toBe(502)
    await clock.advance(10_400)
    const fast = await sendRaw(port, `${head}\r\n`)
    // Split, the head is incomplete in the first read: node:http parses it.
    const split = await sendRaw(port, [head, '\r\n'], { gapMs: 50 })
    for (const answer of [fast, split]) {
      expect(answer.status).toBe(503)
      expect(answer.headers['retry-after']).toBe('20')
      expect(answer.headers['content-type']).toBe('application/problem+json')
      expect(JSON.parse(answer.body)).toMatchObject({
        status: 503,
        code: 'BROKEN_CIRCUIT',
        service: 'orders',
      })
    }
    expect(up.requests).toHaveLength(1)
  })
})
