import { afterEach, describe, expect, it } from 'vitest'
import { createHttpClient, type HttpServiceOptions } from '../../src/http/index.js'
import { DEADLINE_HEADER, withDeadline } from '../../src/index.js'
import { MAX_DEADLINE_HEADER_MS } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/index.js'
import { startServer } from './servers.js'

// The deadline header the client sends must be one every breakwater hop parses: plain digits,
// never String(1e300) = "1e+300".

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

async function headerSentWithin(
  deadlineMs: number,
  options: Partial<HttpServiceOptions>,
): Promise<unknown> {
  const server = await startServer((_req, res) => {
    res.end('ok')
  })
  cleanup.push(() => server.close())
  const clock = new ManualClock(1_000_000)
  const client = createHttpClient({
    clock,
    services: { svc: { baseUrl: server.url, ...options } },
  })
  cleanup.push(() => client.close())
  await withDeadline(deadlineMs, () => client.request('svc', { path: '/' }), { clock })
  return server.hits[0]?.headers[DEADLINE_HEADER]
}

const unbounded: Partial<HttpServiceOptions> = {
  attemptTimeoutMs: Number.POSITIVE_INFINITY,
  overallTimeoutMs: Number.POSITIVE_INFINITY,
}

describe('the deadline header of a huge budget', () => {
  it('is clamped to the largest value a hop parses', async () => {
    expect(await headerSentWithin(1e300, unbounded)).toBe(String(MAX_DEADLINE_HEADER_MS))
    expect(await headerSentWithin(2 ** 62, { ...unbounded, deadlineMarginMs: 0 })).toBe(
      '999999999999999',
    )
  })

  it('is not sent for an infinite deadline without timeouts, as before', async () => {
    expect(await headerSentWithin(Number.POSITIVE_INFINITY, unbounded)).toBeUndefined()
  })

  it('is the timeout left when a timeout is the tighter bound', async () => {
    expect(await headerSentWithin(1e300, { attemptTimeoutMs: 2_000 })).toBe('1995')
  })
})
