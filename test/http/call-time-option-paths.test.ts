// A configured service's policies run user callbacks at call time (retry.shouldRetry,
// retry.random, circuitBreaker.isFailure). One that answers what it must not (a promise from
// an async function) is refused with InvalidOptionError; that error named the library's option
// (`retry.shouldRetry`) where the caller wrote `services.<name>.retry.shouldRetry`, as every
// refusal at construction does.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createHttpClient, type HttpClient, type HttpServiceOptions } from '../../src/http/index.js'
import { InvalidOptionError } from '../../src/index.js'
import { startServer, type TestServer } from './servers.js'

let server: TestServer
let client: HttpClient | undefined

beforeEach(async () => {
  server = await startServer((_req, res) => {
    res.writeHead(503).end('busy')
  })
})

afterEach(async () => {
  await client?.close()
  client = undefined
  await server.close()
})

async function refusal(options: Partial<HttpServiceOptions>): Promise<unknown> {
  client = createHttpClient({ services: { orders: { baseUrl: server.url, ...options } } })
  return client.request('orders', { path: '/x' }).catch((e: unknown) => e)
}

describe('call-time refusals of a configured service', () => {
  it.each([
    [
      'retry.shouldRetry',
      { retry: { shouldRetry: (async () => true) as unknown as () => boolean } },
    ],
    ['retry.random', { retry: { random: (async () => 0.5) as unknown as () => number } }],
    [
      'circuitBreaker.isFailure',
      { circuitBreaker: { isFailure: (async () => true) as unknown as () => boolean } },
    ],
  ] as const)('names services.orders.%s', async (option, options) => {
    const error = await refusal(options as Partial<HttpServiceOptions>)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ option: `services.orders.${option}` })
    expect((error as Error).message).toMatch(new RegExp(`^services\\.orders\\.${option}: expected`))
  })

  it('still names a request option by its own path', async () => {
    client = createHttpClient({ services: { orders: { baseUrl: server.url } } })
    const error = await client
      .request('orders', { path: '/x', headers: 'x' as unknown as Record<string, string> })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).not.toMatch(/^services\./)
  })
})
