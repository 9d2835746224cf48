import { afterEach, describe, expect, it } from 'vitest'
import {
  createHttpClient,
  type HttpClient,
  type HttpServiceOptions,
  HttpStatusError,
} from '../../src/http/index.js'
import { type Handler, startServer, type TestServer } from './servers.js'

// Idempotency-Key on the wire: generated once per logical call, the same on every attempt, the
// caller's when given; and only calls that are safe to repeat are retried.

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

const cleanup: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

async function serve(handler: Handler): Promise<TestServer> {
  const server = await startServer(handler)
  cleanup.push(() => server.close())
  return server
}

function clientFor(baseUrl: string, options: Partial<HttpServiceOptions> = {}): HttpClient {
  const client = createHttpClient({
    services: { svc: { baseUrl, retry: { maxAttempts: 3, baseDelayMs: 1 }, ...options } },
  })
  cleanup.push(() => client.close())
  return client
}

// Fails the first `failures` requests of each key (or, without a key, of each method and URL)
// with 503.
function flaky(failures: number): Handler {
  const seen = new Map<string, number>()
  return (_req, res, hit) => {
    const key = String(hit.headers['idempotency-key'] ?? `${hit.method} ${hit.url}`)
    const n = (seen.get(key) ?? 0) + 1
    seen.set(key, n)
    res.writeHead(n <= failures ? 503 : 201).end()
  }
}

const keysOf = (server: TestServer) => server.hits.map((h) => h.headers['idempotency-key'])

describe('Idempotency-Key', () => {
  it('sends one generated key with every attempt of a POST', async () => {
    const server = await serve(flaky(2))
    const client = clientFor(server.url)
    const response = await client.request('svc', { method: 'POST', path: '/charges', json: {} })
    expect(response.status).toBe(201)
    expect(server.hits).toHaveLength(3)
    const keys = keysOf(server)
    expect(keys[0]).toMatch(uuid)
    expect(new Set(keys).size).toBe(1)
  })

  it('generates a new key for each logical call', async () => {
    const server = await serve(flaky(0))
    const client = clientFor(server.url)
    await client.request('svc', { method: 'POST', path: '/a' })
    await client.request('svc', { method: 'POST', path: '/a' })
    const keys = keysOf(server)
    expect(keys).toHaveLength(2)
    expect(keys[0]).not.toBe(keys[1])
  })

  it("uses the caller's key (a saga step's deterministic key) on every attempt", async () => {
    const server = await serve(flaky(2))
    const client = clientFor(server.url)
    await client.request('svc', {
      method: 'POST',
      path: '/reserve',
      idempotencyKey: 'saga-42:reserve-inventory',
    })
    expect(keysOf(server)).toEqual(Array(3).fill('saga-42:reserve-inventory'))

    await client.request('svc', {
      method: 'POST',
      path: '/reserve',
      headers: { 'Idempotency-Key': 'from-header' },
    })
    expect(keysOf(server).slice(3)).toEqual(Array(3).fill('from-header'))
  })

  it('gives PUT, PATCH and DELETE a key, and GET none', async () => {
    const server = await serve(flaky(0))
    const client = clientFor(server.url)
    for (const method of ['PUT', 'PATCH', 'DELETE', 'GET', 'HEAD']) {
      await client.request('svc', { method, path: '/' })
    }
    const keys = keysOf(server)
    expect(keys.slice(0, 3).every((k) => typeof k === 'string' && uuid.test(k))).toBe(true)
    expect(keys.slice(3)).toEqual([undefined, undefined])
  })
})

describe('what is retried', () => {
  it('does not retry a POST without a key when automatic keys are off', async () => {
    const server = await serve(flaky(2))
    const client = clientFor(server.url, { idempotencyKeys: false })
    const error = await client.request('svc', { method: 'POST', path: '/' }).catch((e) => e)
    expect(error).toBeInstanceOf(HttpStatusError)
    expect((error as HttpStatusError).status).toBe(503)
    expect(server.hits).toHaveLength(1)
    expect(keysOf(server)).toEqual([undefined])
  })

  it('does not retry a POST whose connection reset mid-response when it has no key', async () => {
    // The server may well have done the work: repeating it without a key could do it twice.
    const server = await serve((req, res) => {
      res.writeHead(200, { 'content-length': '100' })
      res.write('half')
      setImmediate(() => req.socket.destroy())
    })
    const client = clientFor(server.url, { idempotencyKeys: false })
    const error = await client.request('svc', { method: 'POST', path: '/' }).catch((e) => e)
    expect((error as { code?: string }).code).toBe('UND_ERR_SOCKET')
    expect(server.hits).toHaveLength(1)
  })

  it('retries a POST with a caller key when automatic keys are off', async () => {
    const server = await serve(flaky(2))
    const client = clientFor(server.url, { idempotencyKeys: false })
    const response = await client.request('svc', {
      method: 'POST',
      path: '/',
      idempotencyKey: 'k-1',
    })
    expect(response.status).toBe(201)
    expect(keysOf(server)).toEqual(['k-1', 'k-1', 'k-1'])
  })

  it('does not retry PATCH without a key, but retries PUT and DELETE (idempotent methods)', async () => {
    const server = await serve(flaky(1))
    const client = clientFor(server.url, { idempotencyKeys: false })
    const patch = await client.request('svc', { method: 'PATCH', path: '/' }).catch((e) => e)
    expect(patch).toBeInstanceOf(HttpStatusError)
    expect(server.hits).toHaveLength(1)
    expect((await client.request('svc', { method: 'PUT', path: '/' })).status).toBe(201)
    expect((await client.request('svc', { method: 'DELETE', path: '/' })).status).toBe(201)
    expect(server.hits).toHaveLength(5)
    expect(keysOf(server).every((k) => k === undefined)).toBe(true)
  })

  it('idempotencyKey: false sends no key and turns retries off for that POST', async () => {
    const server = await serve(flaky(1))
    const client = clientFor(server.url)
    const error = await client
      .request('svc', { method: 'POST', path: '/', idempotencyKey: false })
      .catch((e) => e)
    expect(error).toBeInstanceOf(HttpStatusError)
    expect(keysOf(server)).toEqual([undefined])
  })

  it('lets the caller override: retry: true for a safe POST, retry: false for a GET', async () => {
    const server = await serve(flaky(1))
    const client = clientFor(server.url, { idempotencyKeys: false })
    const post = await client.request('svc', { method: 'POST', path: '/', retry: true })
    expect(post.status).toBe(201)
    expect(server.hits).toHaveLength(2)
    const get = await client.request('svc', { path: '/', retry: false }).catch((e) => e)
    expect(get).toBeInstanceOf(HttpStatusError)
    expect(server.hits).toHaveLength(3)
  })

  it('refuses a key option that contradicts the header', async () => {
    const server = await serve(flaky(0))
    const client = clientFor(server.url)
    await expect(
      client.request('svc', {
        method: 'POST',
        path: '/',
        idempotencyKey: 'a',
        headers: { 'idempotency-key': 'b' },
      }),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'request.idempotencyKey' })
    expect(server.hits).toHaveLength(0)
  })
})
