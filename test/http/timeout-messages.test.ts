import { afterEach, describe, expect, it } from 'vitest'
import { createHttpClient, type HttpServiceOptions } from '../../src/http/index.js'
import { TimeoutError } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type Handler, startServer, until } from './servers.js'

// Which limit ended a call: the attempt timeout and the overall timeout both reject with
// TimeoutError (code TIMEOUT); the message names the limit and the service.

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

/** A server running `handler`, and a client on a ManualClock with its service `orders`. */
async function ordersOn(handler: Handler, options: Partial<HttpServiceOptions>) {
  const server = await startServer(handler)
  cleanup.push(() => server.close())
  const clock = new ManualClock(1_000_000)
  const client = createHttpClient({
    clock,
    services: { orders: { baseUrl: server.url, retry: false, ...options } },
  })
  cleanup.push(() => client.close())
  return { server, clock, client }
}

async function timedOut(
  options: Partial<HttpServiceOptions>,
  advanceMs: number,
  run: 'request' | 'signalled request' | 'execute' = 'request',
): Promise<TimeoutError> {
  // A server that never answers: only a timeout ends the call.
  const { server, clock, client } = await ordersOn(() => {}, options)
  const service = client.service('orders')
  const call =
    run === 'execute'
      ? // fn honours its signal, as a cooperative timeout expects.
        service.execute(
          (ctx) =>
            new Promise((_resolve, reject) => {
              ctx.signal.addEventListener('abort', () => reject(new Error('gave up')))
            }),
        )
      : client.request('orders', {
          path: '/',
          ...(run === 'signalled request' ? { signal: new AbortController().signal } : {}),
        })
  const outcome = call.then(
    () => {
      throw new Error('expected a timeout')
    },
    (error: unknown) => error,
  )
  if (run !== 'execute') await until(() => server.hits.length === 1)
  await clock.advance(advanceMs)
  const error = await outcome
  expect(error).toBeInstanceOf(TimeoutError)
  expect((error as TimeoutError).code).toBe('TIMEOUT')
  return error as TimeoutError
}

describe('a timed-out call', () => {
  it('names the attempt timeout and the service', async () => {
    for (const run of ['request', 'signalled request'] as const) {
      const error = await timedOut({ attemptTimeoutMs: 300, overallTimeoutMs: 10_000 }, 300, run)
      expect(error.timeoutMs).toBe(300)
      expect(error.message).toBe(
        'Service "orders": the attempt timed out after 300 ms (attemptTimeoutMs)',
      )
      expect(error.stack?.split('\n')[0]).toBe(`TimeoutError: ${error.message}`)
    }
  })

  it('names the overall timeout and the service', async () => {
    for (const run of ['request', 'signalled request'] as const) {
      const error = await timedOut({ attemptTimeoutMs: 10_000, overallTimeoutMs: 300 }, 300, run)
      expect(error.timeoutMs).toBe(300)
      expect(error.message).toBe(
        'Service "orders": the call timed out after 300 ms, retries included (overallTimeoutMs)',
      )
    }
  })

  it('names the overall timeout that ends a retried call', async () => {
    const error = await timedOut(
      { attemptTimeoutMs: 100, overallTimeoutMs: 250, retry: { maxAttempts: 50, baseDelayMs: 1 } },
      250,
    )
    expect(error.message).toMatch(/^Service "orders": the call timed out after 250 ms/)
  })

  it('blames no caller when the overall timeout ends an attempt of a retried call', async () => {
    for (const run of ['request', 'signalled request'] as const) {
      const error = await timedOut(
        { attemptTimeoutMs: 10_000, overallTimeoutMs: 300, retry: {} },
        300,
        run,
      )
      expect(error.message).toMatch(/^Service "orders": the call timed out after 300 ms/)
      // The attempt ended with the timeout's own error: nothing more to say, and above all not
      // an AbortedError ("aborted by the caller") that nobody's signal caused.
      expect(error.cause).toBeUndefined()
    }
  })

  it('names the overall timeout when both are the same (it started first, so it ends first)', async () => {
    const error = await timedOut({ attemptTimeoutMs: 300, overallTimeoutMs: 300 }, 300)
    expect(error.message).toMatch(/^Service "orders": the call timed out after 300 ms/)
  })

  it('says the same for a call made with execute()', async () => {
    const error = await timedOut(
      { attemptTimeoutMs: 300, overallTimeoutMs: 10_000 },
      300,
      'execute',
    )
    expect(error.message).toMatch(/^Service "orders": the attempt timed out after 300 ms/)
  })
})

describe("undici's headers and body timeouts", () => {
  // Their classes and codes are undici's (UND_ERR_HEADERS_TIMEOUT, UND_ERR_BODY_TIMEOUT); the
  // message says which limit ran out, for which service, as TimeoutError's does.
  async function failed(
    handler: Handler,
    options: Partial<HttpServiceOptions>,
    armedAtMs: number,
  ): Promise<Error & { code?: string }> {
    const { clock, client } = await ordersOn(handler, options)
    const outcome = client.request('orders', { path: '/' }).catch((error: unknown) => error)
    await until(() => clock.nextTimerAt() === armedAtMs)
    await clock.advance(armedAtMs - clock.now())
    return (await outcome) as Error & { code?: string }
  }

  it('names the headers timeout and the service', async () => {
    const error = await failed(() => {}, { headersTimeoutMs: 300 }, 1_000_300)
    expect(error.name).toBe('HeadersTimeoutError')
    expect(error.code).toBe('UND_ERR_HEADERS_TIMEOUT')
    expect(error.message).toBe(
      'Service "orders": the response headers timed out after 300 ms (headersTimeoutMs)',
    )
  })

  it('names the body timeout and the service', async () => {
    const error = await failed(
      (_req, res) => {
        res.writeHead(200)
        res.write('start ')
      },
      { headersTimeoutMs: 5_000, bodyTimeoutMs: 300 },
      1_000_300,
    )
    expect(error.name).toBe('BodyTimeoutError')
    expect(error.code).toBe('UND_ERR_BODY_TIMEOUT')
    expect(error.message).toBe(
      'Service "orders": the response body timed out after 300 ms without data (bodyTimeoutMs)',
    )
  })
})
