import { getEventListeners } from 'node:events'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  createHttpClient,
  type HttpClient,
  HttpClientClosedError,
  type HttpServiceOptions,
} from '../../src/http/index.js'
import { BreakwaterError, InvalidOptionError } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { optionRefusal } from '../support/unknown-option.js'
import { Gate, startServer, type TestServer, until } from './servers.js'

let server: TestServer
let client: HttpClient | undefined

beforeEach(async () => {
  server = await startServer((_req, res, hit) => {
    res.setHeader('content-type', 'application/json')
    res.setHeader('set-cookie', ['a=1', 'b=2'])
    res.end(JSON.stringify({ method: hit.method, url: hit.url, body: hit.body }))
  })
})

afterEach(async () => {
  await client?.close()
  client = undefined
  await server.close()
})

function make(options: Partial<HttpServiceOptions> = {}, base = server.url): HttpClient {
  client = createHttpClient({ services: { svc: { baseUrl: base, ...options } } })
  return client
}

/**
 * Runs a call on `c`'s service whose attempt closes the client and fails with `failure`; what
 * the call rejects with, once the close is done.
 */
async function failWhileClosing(c: HttpClient, failure: Error): Promise<unknown> {
  const closing: Array<Promise<void>> = []
  const error = await c
    .service('svc')
    .execute(
      () => {
        closing.push(c.close())
        throw failure
      },
      { retry: true },
    )
    .catch((e: unknown) => e)
  await Promise.all(closing)
  return error
}

describe('requests and responses', () => {
  it('resolves with status, headers and the body as bytes, text and JSON', async () => {
    const response = await make().request('svc', { path: '/items/1' })
    expect(response.status).toBe(200)
    expect(response.attempts).toBe(1)
    expect(response.headers['content-type']).toBe('application/json')
    expect(response.headers['set-cookie']).toEqual(['a=1', 'b=2'])
    expect(response.body).toBeInstanceOf(Uint8Array)
    expect(JSON.parse(response.text())).toEqual({ method: 'GET', url: '/items/1', body: '' })
    expect(response.json()).toEqual({ method: 'GET', url: '/items/1', body: '' })
  })

  it('joins the path onto the base path and appends query parameters', async () => {
    const c = make({}, `${server.url}/api/v1/`)
    const response = await c.request('svc', {
      path: '/items?sort=asc',
      query: { tag: ['a b', 'c'], limit: 10, deep: true, skipped: undefined },
    })
    expect(response.json<{ url: string }>().url).toBe(
      '/api/v1/items?sort=asc&tag=a+b&tag=c&limit=10&deep=true',
    )
    expect(c.service('svc').baseUrl).toBe(`${server.url}/api/v1`)
  })

  it('sends JSON and string bodies, default headers and the caller headers', async () => {
    const c = make({ headers: { 'X-Team': 'orders', accept: 'text/plain' } })
    await c.request('svc', {
      method: 'post',
      path: '/a',
      json: { n: 1 },
      headers: { Accept: 'application/json', 'x-trace': 't1' },
    })
    await c.request('svc', {
      method: 'PUT',
      path: '/b',
      body: 'plain',
      headers: { 'content-type': 'text/plain' },
    })
    const [post, put] = server.hits
    expect(post?.method).toBe('POST')
    expect(post?.body).toBe('{"n":1}')
    expect(post?.headers['content-type']).toBe('application/json')
    expect(post?.headers.accept).toBe('application/json')
    expect(post?.headers['x-team']).toBe('orders')
    expect(post?.headers['x-trace']).toBe('t1')
    expect(put?.body).toBe('plain')
    expect(put?.headers['content-type']).toBe('text/plain')
  })

  it('resolves 4xx and 3xx answers as responses by default', async () => {
    await server.close()
    server = await startServer((_req, res, hit) => {
      res.writeHead(hit.url === '/missing' ? 404 : 304)
      res.end()
    })
    const c = make()
    expect((await c.request('svc', { path: '/missing' })).status).toBe(404)
    expect((await c.request('svc', { path: '/cached' })).status).toBe(304)
  })
})

describe('a path cannot leave its service', () => {
  const escapes = [
    '//evil.example/x',
    '///evil.example/x',
    'http://evil.example/x',
    'https:evil.example',
    'evil.example/x',
    '',
    '\\\\evil.example\\x',
    '/\\evil.example/x',
    '/api/../admin',
    '/..',
    '/api/%2e%2e/admin',
    '/api/.%2E/admin',
    // An encoded slash or backslash is a separator to a server (or a proxy such as nginx) that
    // decodes before it resolves dot segments: these are /api/../admin too.
    '/x/..%2fadmin',
    '/x%2F..%2Fadmin',
    '/x/..%5cadmin',
    '/x%5C%2e%2e',
    // Tomcat and Jetty drop path parameters before resolving: `..;/` is `../` to them.
    '/x/..;/admin',
    '/x/.%2e;jsessionid=1/admin',
    '/./x',
    '/a#fragment',
    '/a b',
    '/a\r\nx-injected: 1',
    '/caf\u00e9',
  ]

  it.each(escapes)('refuses %j with InvalidOptionError naming request.path', async (path) => {
    const c = make({}, `${server.url}/api`)
    const error = await c.request('svc', { path }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('request.path')
    expect(server.hits).toHaveLength(0)
  })

  it('shows why: URL resolution would change the host or leave the base path', () => {
    expect(new URL('//evil.example/x', 'http://127.0.0.1/api/').host).toBe('evil.example')
    expect(new URL('/\\evil.example/x', 'http://127.0.0.1/api/').host).toBe('evil.example')
    expect(new URL('/api/%2e%2e/admin', 'http://127.0.0.1/').pathname).toBe('/admin')
  })

  it('keeps dots that are not whole segments', async () => {
    const c = make({}, `${server.url}/api`)
    const response = await c.request('svc', { path: '/files/v1.2..3/.hidden?x=../y' })
    expect(response.json<{ url: string }>().url).toBe('/api/files/v1.2..3/.hidden?x=../y')
  })
})

describe('options are checked at construction', () => {
  const cases: ReadonlyArray<[string, unknown, string]> = [
    ['no services', { services: {} }, 'services'],
    ['services not an object', { services: 'x' }, 'services'],
    ['a bad service name', { services: { 'a b': { baseUrl: 'http://x' } } }, 'services.a b'],
    ['a missing baseUrl', { services: { a: {} } }, 'services.a.baseUrl'],
    ['a relative baseUrl', { services: { a: { baseUrl: '/api' } } }, 'services.a.baseUrl'],
    ['an ftp baseUrl', { services: { a: { baseUrl: 'ftp://x' } } }, 'services.a.baseUrl'],
    // Port 0 parses, but no server listens there: every call would fail to connect.
    ['port 0 in the baseUrl', { services: { a: { baseUrl: 'http://x:0' } } }, 'services.a.baseUrl'],
    [
      'credentials in the baseUrl',
      { services: { a: { baseUrl: 'http://u:p@x' } } },
      'services.a.baseUrl',
    ],
    [
      'a query in the baseUrl',
      { services: { a: { baseUrl: 'http://x/?q=1' } } },
      'services.a.baseUrl',
    ],
    [
      'a default header named twice',
      { services: { a: { baseUrl: 'http://x', headers: { Accept: 'a', accept: 'b' } } } },
      'services.a.headers.accept',
    ],
    [
      'a negative attempt timeout',
      { services: { a: { baseUrl: 'http://x', attemptTimeoutMs: -1 } } },
      'services.a.attemptTimeoutMs',
    ],
    [
      'a zero headers timeout',
      { services: { a: { baseUrl: 'http://x', headersTimeoutMs: 0 } } },
      'services.a.headersTimeoutMs',
    ],
    [
      'retry maxAttempts 0',
      { services: { a: { baseUrl: 'http://x', retry: { maxAttempts: 0 } } } },
      'services.a.retry.maxAttempts',
    ],
    ['retry: true', { services: { a: { baseUrl: 'http://x', retry: true } } }, 'services.a.retry'],
    [
      'a negative breaker cooldown',
      { services: { a: { baseUrl: 'http://x', circuitBreaker: { cooldownMs: -1 } } } },
      'services.a.circuitBreaker.cooldownMs',
    ],
    [
      'bulkhead maxConcurrent 0',
      { services: { a: { baseUrl: 'http://x', bulkhead: { maxConcurrent: 0 } } } },
      'services.a.bulkhead.maxConcurrent',
    ],
    [
      'connections next to a bulkhead',
      { services: { a: { baseUrl: 'http://x', connections: 4 } } },
      'services.a.connections',
    ],
    [
      'connections 0 without a bulkhead',
      { services: { a: { baseUrl: 'http://x', bulkhead: false, connections: 0 } } },
      'services.a.connections',
    ],
    [
      'a negative budget ratio',
      { services: { a: { baseUrl: 'http://x', retryBudget: { ratio: -1 } } } },
      'services.a.retryBudget.ratio',
    ],
    [
      'a non-boolean idempotencyKeys',
      { services: { a: { baseUrl: 'http://x', idempotencyKeys: 'yes' } } },
      'services.a.idempotencyKeys',
    ],
    [
      'a reserved default header',
      { services: { a: { baseUrl: 'http://x', headers: { Host: 'evil' } } } },
      'services.a.headers.Host',
    ],
    [
      // One key on every request: the downstream would answer each later POST with the first.
      'an idempotency key in the default headers',
      { services: { a: { baseUrl: 'http://x', headers: { 'Idempotency-Key': 'k1' } } } },
      'services.a.headers.Idempotency-Key',
    ],
    [
      'a negative maxResponseBytes',
      { services: { a: { baseUrl: 'http://x', maxResponseBytes: -1 } } },
      'services.a.maxResponseBytes',
    ],
    // The service sets these itself; accepted, they were silently replaced (a retry clock, a
    // breaker clock), or used although the budget was turned off (retryBudget: false).
    [
      'a clock in the retry options',
      { services: { a: { baseUrl: 'http://x', retry: { clock: new ManualClock() } } } },
      'services.a.retry.clock',
    ],
    [
      'a budget in the retry options',
      { services: { a: { baseUrl: 'http://x', retryBudget: false, retry: { budget: {} } } } },
      'services.a.retry.budget',
    ],
    [
      'a clock in the breaker options',
      { services: { a: { baseUrl: 'http://x', circuitBreaker: { clock: new ManualClock() } } } },
      'services.a.circuitBreaker.clock',
    ],
    [
      'a clock in the bulkhead options',
      { services: { a: { baseUrl: 'http://x', bulkhead: { clock: new ManualClock() } } } },
      'services.a.bulkhead.clock',
    ],
    [
      'a clock in the retry budget options',
      { services: { a: { baseUrl: 'http://x', retryBudget: { clock: new ManualClock() } } } },
      'services.a.retryBudget.clock',
    ],
  ]

  it.each(cases)('%s', (_name, options, option) => {
    let error: unknown
    try {
      createHttpClient(options as never)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
    expect((error as InvalidOptionError).message).toContain(option)
  })

  it('names the service of a bad option among several', () => {
    expect(() =>
      createHttpClient({
        services: {
          good: { baseUrl: 'http://127.0.0.1:1' },
          bad: { baseUrl: 'http://127.0.0.1:1', retry: { baseDelayMs: -5 } },
        },
      }),
    ).toThrow(/^services\.bad\.retry\.baseDelayMs: expected/)
  })
})

describe('an unknown (misspelt) option is refused, naming it', () => {
  const svc = (extra: Record<string, unknown>) => ({
    services: { svc: { baseUrl: 'http://127.0.0.1:1', ...extra } },
  })
  const atConstruction: ReadonlyArray<[string, unknown, string]> = [
    ['the client', { ...svc({}), clok: new ManualClock() }, 'httpClient.clok'],
    ['a service', svc({ attemptTimeoutMS: 500 }), 'services.svc.attemptTimeoutMS'],
    ['a service', svc({ retries: false }), 'services.svc.retries'],
    // The policies' own bags are refused by the policies, under the service's name.
    ['its retry', svc({ retry: { maxAttemps: 3 } }), 'services.svc.retry.maxAttemps'],
    [
      'its breaker',
      svc({ circuitBreaker: { cooldown: 5 } }),
      'services.svc.circuitBreaker.cooldown',
    ],
    ['its bulkhead', svc({ bulkhead: { maxConcurent: 2 } }), 'services.svc.bulkhead.maxConcurent'],
    ['its retry budget', svc({ retryBudget: { ration: 0.1 } }), 'services.svc.retryBudget.ration'],
  ]

  it.each(atConstruction)('%s: %s', async (_name, options, option) => {
    const error = await optionRefusal(() => createHttpClient(options as never))
    expect(error.option).toBe(option)
  })

  it('in a request or an execute(), before anything is sent', async () => {
    const c = make()
    for (const [options, option] of [
      [{ path: '/', idempotencyKy: 'k' }, 'request.idempotencyKy'],
      [{ path: '/', header: { 'x-a': '1' } }, 'request.header'],
    ] as const) {
      const error = await c.request('svc', options as never).catch((e: unknown) => e)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option })
    }
    let calls = 0
    const error = await c
      .service('svc')
      .execute(() => ++calls, { retries: true } as never)
      .catch((e: unknown) => e)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'execute.retries' })
    expect(calls).toBe(0)
    expect(server.hits).toHaveLength(0)
    // Correct options, and undefined values (spread defaults), still work.
    await c.request('svc', { path: '/', query: undefined, retry: undefined } as never)
    expect(await c.service('svc').execute(() => ++calls, { retry: undefined } as never)).toBe(1)
    expect(server.hits).toHaveLength(1)
  })
})

function circular(): Record<string, unknown> {
  const value: Record<string, unknown> = {}
  value.self = value
  return value
}

describe('request options are checked before anything is sent', () => {
  const cases: ReadonlyArray<[string, Record<string, unknown>, string]> = [
    ['a bad method', { method: 'GE T', path: '/' }, 'request.method'],
    ['CONNECT', { method: 'CONNECT', path: '/' }, 'request.method'],
    ['a Host header', { path: '/', headers: { Host: 'evil' } }, 'request.headers.Host'],
    [
      'a Transfer-Encoding header',
      { path: '/', headers: { 'transfer-encoding': 'chunked' } },
      'request.headers.transfer-encoding',
    ],
    [
      'a header value with CRLF',
      { path: '/', headers: { 'x-a': 'v\r\nx-b: 1' } },
      'request.headers.x-a',
    ],
    ['body and json', { path: '/', body: 'x', json: {} }, 'request.body'],
    ['a numeric body', { path: '/', body: 5 }, 'request.body'],
    ['an empty idempotency key', { path: '/', idempotencyKey: '' }, 'request.idempotencyKey'],
    ['a key with spaces', { path: '/', idempotencyKey: 'a b' }, 'request.idempotencyKey'],
    ['a query object value', { path: '/', query: { a: { b: 1 } } }, 'request.query.a'],
    // Names are case-insensitive: the first of these was dropped without a word.
    [
      'one header named twice',
      { path: '/', headers: { 'X-Tenant': 'a', 'x-tenant': 'b' } },
      'request.headers.x-tenant',
    ],
    // These went out as `?limit=NaN` and `?n=Infinity`, which no downstream reads as a number.
    ['a NaN query value', { path: '/', query: { limit: NaN } }, 'request.query.limit'],
    ['an Infinity query value', { path: '/', query: { n: [1, Infinity] } }, 'request.query.n'],
    ['a -Infinity query value', { path: '/', query: { n: -Infinity } }, 'request.query.n'],
    ['retry: "yes"', { path: '/', retry: 'yes' }, 'request.retry'],
    // Object.entries() of these is empty: every header or parameter would be dropped silently.
    ['a Headers instance', { path: '/', headers: new Headers({ 'x-a': '1' }) }, 'request.headers'],
    ['a Map of headers', { path: '/', headers: new Map([['x-a', '1']]) }, 'request.headers'],
    ['URLSearchParams as query', { path: '/', query: new URLSearchParams('a=1') }, 'request.query'],
    // JSON.stringify gives undefined for these: an empty body labelled JSON would be sent.
    ['a function as json', { method: 'POST', path: '/', json: () => 1 }, 'request.json'],
    ['a symbol as json', { method: 'POST', path: '/', json: Symbol('x') }, 'request.json'],
    // JSON.stringify throws a bare TypeError for these.
    ['a bigint in json', { method: 'POST', path: '/', json: { n: 1n } }, 'request.json'],
    ['circular json', { method: 'POST', path: '/', json: circular() }, 'request.json'],
  ]

  it.each(cases)('%s', async (_name, options, option) => {
    const error = await make()
      .request('svc', options as never)
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
    expect(server.hits).toHaveLength(0)
  })

  // RFC 9110 forbids content in a TRACE request (§9.3.8) and gives content in GET or HEAD no
  // meaning (§9.3.1, §9.3.2): servers and proxies may drop it or reject the request, and it is
  // a request-smuggling vector. undici's request() sent all three (fetch() refuses them).
  it.each([
    ['GET', { body: 'x' }, 'request.body', 'no body for a GET request, got "x"'],
    [
      'get',
      { body: new Uint8Array(0) },
      'request.body',
      'no body for a GET request, got a Uint8Array',
    ],
    ['HEAD', { body: '' }, 'request.body', 'no body for a HEAD request, got ""'],
    ['TRACE', { json: { a: 1 } }, 'request.json', 'no body for a TRACE request, got an object'],
    ['GET (by default)', { json: null }, 'request.json', 'no body for a GET request, got null'],
  ])('a body on %s, naming the method', async (method, body, option, message) => {
    const options = method.startsWith('GET (') ? body : { method, ...body }
    const error = await optionRefusal(() => make().request('svc', { path: '/', ...options }))
    expect(error.option).toBe(option)
    expect(error.message).toBe(`${option}: expected ${message}`)
    expect(server.hits).toHaveLength(0)
  })

  // undici sends no header for an empty array: a request's [] silently dropped the service's
  // default header of that name, and a service's [] sent nothing at all.
  it('an empty array as a header value, on a request or a service', async () => {
    const c = make({ headers: { 'x-team': 'orders' } })
    const onRequest = await optionRefusal(() =>
      c.request('svc', { path: '/', headers: { 'X-Team': [] } }),
    )
    expect(onRequest.message).toBe(
      'request.headers.X-Team: expected a string or a non-empty array of strings, got an array of 0',
    )
    const onService = await optionRefusal(() => make({ headers: { 'x-team': [] } }))
    expect(onService.option).toBe('services.svc.headers.x-team')
    expect(server.hits).toHaveLength(0)
  })

  it('still sends a body on OPTIONS and DELETE', async () => {
    const c = make()
    await c.request('svc', { method: 'OPTIONS', path: '/', body: 'o' })
    await c.request('svc', { method: 'DELETE', path: '/', json: { d: 1 } })
    expect(server.hits.map((hit) => hit.body)).toEqual(['o', '{"d":1}'])
  })

  // The query and headers take plain objects only (prototype Object.prototype or null), a
  // stricter rule than other options; the refusal names the built-in or the class given (it
  // said "got an object" of a class instance, which read as if a plain object were refused).
  it('names the built-in given as query or headers, and still refuses a class instance', async () => {
    class Query {
      readonly a = '1'
    }
    const cases: ReadonlyArray<[Record<string, unknown>, string]> = [
      [
        { headers: new Headers({ 'x-a': '1' }) },
        'request.headers: expected a plain object of header names to values, got a Headers',
      ],
      [
        { headers: new Map([['x-a', '1']]) },
        'request.headers: expected a plain object of header names to values, got a Map',
      ],
      [
        { query: new URLSearchParams('a=1') },
        'request.query: expected a plain object, got a URLSearchParams',
      ],
      [{ query: new Query() }, 'request.query: expected a plain object, got an instance of Query'],
    ]
    for (const [options, message] of cases) {
      const error = await optionRefusal(() => make().request('svc', { path: '/', ...options }))
      expect(error.message).toBe(message)
    }
    expect(server.hits).toHaveLength(0)
  })

  it('never echoes the value of a secret header it refuses (a token read with its newline)', async () => {
    for (const headers of [
      { 'X-Api-Key': 'sk_live_0123456789\n' },
      { authorization: ['Token sk_live_0123456789\r\n'] },
    ]) {
      const error = await make()
        .request('svc', { path: '/', headers })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as Error).message).not.toContain('sk_live')
      expect(JSON.stringify((error as InvalidOptionError).value)).not.toContain('sk_live')
    }
    expect(() => make({ headers: { 'x-auth-token': 'sk_live_0123456789\n' } })).toThrow(
      /services\.svc\.headers\.x-auth-token: .*\[redacted\]/,
    )
    // Other headers still show what was wrong with them.
    const plain = await make()
      .request('svc', { path: '/', headers: { 'x-team': 'orders\n' } })
      .catch((e: unknown) => e)
    expect((plain as Error).message).toContain('orders')
    expect(server.hits).toHaveLength(0)
  })

  it('refuses an unknown service, naming the known ones', async () => {
    const error = await make()
      .request('nope', { path: '/' })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('request.service')
    expect((error as Error).message).toContain('"svc"')
    // No request was made: client.service's argument is what is wrong, named as such.
    expect(() => make().service('nope')).toThrow(
      new InvalidOptionError('service', 'one of "svc"', 'nope'),
    )
  })
})

describe('state, events and close', () => {
  it('reports breaker, bulkhead, pool and budget state per service', async () => {
    const c = make({ bulkhead: { maxConcurrent: 3 } })
    await c.request('svc', { path: '/' })
    // undici hands the connection back just after the response ended.
    await until(() => c.state().svc!.pool.free === 1)
    const state = c.state().svc!
    expect(state.breaker).toBe('closed')
    expect(state.bulkhead).toEqual({ running: 0, queued: 0 })
    expect(state.pool).toMatchObject({ connected: 1, free: 1, running: 0, pending: 0 })
    expect(state.retryBudget).toBeGreaterThan(0)
    expect(c.services).toEqual(['svc'])
    expect(c.service('svc').bulkhead?.running).toBe(0)
  })

  it('has no breaker, bulkhead or budget when they are turned off', async () => {
    const c = make({ circuitBreaker: false, bulkhead: false, retryBudget: false, connections: 2 })
    await c.request('svc', { path: '/' })
    expect(c.state().svc).toMatchObject({
      breaker: undefined,
      bulkhead: undefined,
      retryBudget: undefined,
    })
  })

  it('emits attempt and response events while somebody listens, and stops after', async () => {
    const c = make()
    const seen: string[] = []
    const off = c.events.on((e) => seen.push(`${e.type}:${e.service}`))
    expect(c.events.hasListeners).toBe(true)
    await c.request('svc', { path: '/x?secret=1' })
    off()
    expect(c.events.hasListeners).toBe(false)
    await c.request('svc', { path: '/y' })
    expect(seen).toEqual(['attempt:svc', 'response:svc'])
  })

  it("leaves no listener on a caller's long-lived signal after its calls", async () => {
    const c = make({ retry: { baseDelayMs: 1 } })
    const controller = new AbortController()
    for (let i = 0; i < 5; i++) await c.request('svc', { path: '/', signal: controller.signal })
    await c.service('svc').execute(() => 1, { signal: controller.signal })
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0)
  })

  it('refuses a listener that is not a function with InvalidOptionError', () => {
    const c = make()
    expect(() => c.events.on('log' as never)).toThrow(InvalidOptionError)
    expect(() => c.service('svc').events.on(undefined as never)).toThrow(InvalidOptionError)
    expect(c.events.hasListeners).toBe(false)
  })

  it("runs the caller's own work through a service's pool and policies (for the proxy)", async () => {
    await server.close()
    server = await startServer((_req, res, hit) => {
      res.writeHead(hit.n === 1 ? 503 : 200).end(`hit ${hit.n}`)
    })
    const c = make({ retry: { baseDelayMs: 1 } })
    const svc = c.service('svc')
    const attempts: number[] = []
    const text = await svc.execute(
      async ({ signal, attempt }) => {
        attempts.push(attempt)
        const res = await svc.dispatcher.request({ method: 'GET', path: '/stream', signal })
        const body = await res.body.text()
        if (res.statusCode === 503) throw Object.assign(new Error('busy'), { status: 503 })
        return body
      },
      { retry: true },
    )
    expect(text).toBe('hit 2')
    expect(attempts).toEqual([1, 2])
    // Without retry: true the same failure is final.
    const error = await svc
      .execute(() => {
        throw Object.assign(new Error('busy'), { status: 503 })
      })
      .catch((e: unknown) => e)
    expect((error as Error).message).toBe('busy')
  })

  // execute() runs the caller's work, which has no method, path or status: it reports the
  // policies' events (retry, giveUp, stateChange, rejected) and none of request()'s own.
  it("reports only the policies' events for execute(), not attempt, response or failure", async () => {
    const c = make({ retry: { baseDelayMs: 1, maxAttempts: 2 } })
    const seen: string[] = []
    c.events.on((e) => seen.push(e.type))
    const svc = c.service('svc')
    const busy = () => Object.assign(new Error('busy'), { status: 503 })
    let calls = 0
    const work = () => {
      calls++
      if (calls === 1) throw busy()
      return 'done'
    }
    expect(await svc.execute(work, { retry: true })).toBe('done')
    expect(seen).toEqual(['retry'])
    seen.length = 0
    const error = await svc
      .execute(
        () => {
          throw busy()
        },
        { retry: true },
      )
      .catch((e: unknown) => e)
    expect((error as Error).message).toBe('busy')
    expect(seen).toEqual(['retry', 'giveUp'])
    seen.length = 0
    await c.request('svc', { path: '/' })
    expect(seen).toEqual(['attempt', 'response'])
  })

  it('refuses bad execute() options with InvalidOptionError, before anything runs', async () => {
    const svc = make().service('svc')
    let calls = 0
    const work = () => ++calls
    const bad: unknown[] = [
      [work, { signal: 'x' }],
      [work, { retry: 'yes' }],
      [work, null],
      [work, 5],
      ['not a function', {}],
    ]
    for (const [fn, options] of bad as Array<[never, never]>) {
      const error = await svc.execute(fn, options).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
    }
    expect(calls).toBe(0)
  })

  it('resolves HEAD and 204 answers with an empty body', async () => {
    await server.close()
    server = await startServer((_req, res, hit) => {
      res.writeHead(hit.method === 'HEAD' ? 200 : 204, { 'content-length': '0' }).end()
    })
    const c = make()
    const head = await c.request('svc', { method: 'HEAD', path: '/' })
    const empty = await c.request('svc', { method: 'DELETE', path: '/x' })
    expect([head.status, head.body.length, empty.status, empty.text()]).toEqual([200, 0, 204, ''])
  })

  it('refuses requests after close with HttpClientClosedError', async () => {
    const c = make()
    await c.request('svc', { path: '/' })
    await c.close()
    const error = await c.request('svc', { path: '/' }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(HttpClientClosedError)
    expect(BreakwaterError.is(error) && error.code).toBe('HTTP_CLIENT_CLOSED')
    expect(server.hits).toHaveLength(1)
    await c.close()
  })

  it('ends a call waiting in retry backoff or the bulkhead queue at close(), not when the wait is over', async () => {
    // The clock never moves: before the fix, the backoff (a 20 s Retry-After) and the queued
    // call only ended when their waits did, holding the process open after close().
    const clock = new ManualClock(Date.now())
    const gate = new Gate()
    await server.close()
    server = await startServer(async (req, res) => {
      if (req.url === '/hold') await gate.wait()
      if (req.url === '/busy') res.writeHead(503, { 'retry-after': '20' })
      res.end('done')
    })
    client = createHttpClient({
      clock,
      services: { svc: { baseUrl: server.url, bulkhead: { maxConcurrent: 1, maxQueued: 1 } } },
    })
    const c = client
    const retried = new Promise<void>((resolve) =>
      c.events.on((e) => {
        if (e.type === 'retry') resolve()
      }),
    )
    const backoff = c.request('svc', { path: '/busy' }).catch((e: unknown) => e)
    await retried
    const held = c.request('svc', { path: '/hold' })
    await until(() => server.hits.some((h) => h.url === '/hold'))
    const queued = c.request('svc', { path: '/queued' }).catch((e: unknown) => e)
    await until(() => c.state().svc?.bulkhead?.queued === 1)
    const closed = c.close()
    expect(await backoff).toBeInstanceOf(HttpClientClosedError)
    expect(await queued).toBeInstanceOf(HttpClientClosedError)
    // The request in flight still finishes.
    gate.open()
    expect((await held).text()).toBe('done')
    await closed
    expect(server.hits.map((h) => h.url)).toEqual(['/busy', '/hold'])
    expect(clock.pendingTimers).toBe(0)
  })

  it('gives a request in flight at close() its answer, or HttpClientClosedError for a failure it would retry', async () => {
    const gate = new Gate()
    await server.close()
    server = await startServer(async (req, res) => {
      await gate.wait()
      res.writeHead(req.url === '/busy' ? 503 : 500).end('no')
    })
    const c = make({ retry: { baseDelayMs: 1 } })
    const busy = c.request('svc', { path: '/busy' }).catch((e: unknown) => e)
    const broken = c.request('svc', { path: '/broken' })
    await until(() => server.hits.length === 2)
    const closed = c.close()
    gate.open()
    expect(await busy).toBeInstanceOf(HttpClientClosedError)
    expect((await broken).status).toBe(500)
    await closed
    expect(server.hits).toHaveLength(2)
  })

  it.each([
    ['without retry', { retry: false }],
    ['on its last attempt', { retry: { maxAttempts: 1 } }],
  ] as const)(
    'gives a call %s the failure of its attempt, also when the client closed meanwhile',
    async (_name, options) => {
      const busy = Object.assign(new Error('busy'), { status: 503 })
      expect(await failWhileClosing(make(options), busy)).toBe(busy)
    },
  )

  // The service asks shouldRetry itself when the client closed during an attempt (to end a
  // call that would retry). An async one's promise read as true: the call ended with
  // HttpClientClosedError instead of the retry's refusal, and a rejecting one was unhandled.
  it.each([
    ['resolves', async () => false],
    [
      'rejects',
      async () => {
        throw new Error('shouldRetry broke')
      },
    ],
  ])(
    'refuses an async shouldRetry (its promise %s), also when the client closed meanwhile',
    async (_name, shouldRetry) => {
      const c = make({ retry: { shouldRetry: shouldRetry as unknown as () => boolean } })
      const error = await failWhileClosing(c, Object.assign(new Error('busy'), { status: 503 }))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ option: 'services.svc.retry.shouldRetry' })
    },
  )

  it("refuses a service's execute() after close, also for a retry of a call begun before", async () => {
    const c = make({ retry: { baseDelayMs: 1 } })
    const svc = c.service('svc')
    let calls = 0
    const closing: Array<Promise<void>> = []
    const error = await svc
      .execute(
        () => {
          calls++
          // The first attempt fails while the client closes; the retry must not run on the
          // closed pool (undici's UND_ERR_CLOSED is transient: every attempt would be spent).
          closing.push(c.close())
          throw Object.assign(new Error('busy'), { status: 503 })
        },
        { retry: true },
      )
      .catch((e: unknown) => e)
    await Promise.all(closing)
    expect(error).toBeInstanceOf(HttpClientClosedError)
    expect(calls).toBe(1)
    const late = await svc.execute(() => calls++).catch((e: unknown) => e)
    expect(late).toBeInstanceOf(HttpClientClosedError)
    expect(calls).toBe(1)
  })
})
