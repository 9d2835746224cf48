// The listener's fast path (fast-request.ts, fast-response.ts, fast-connection.ts) against
// node:http's path: the same bytes sent to two listeners of the same ambassador, one with the
// fast path and one without (its handler has no `fast`), must get the same answers and put the
// same requests through to the service. fast-check generates the bytes: well-formed requests,
// requests just outside the fast path's subset (which it must hand to node:http), malformed
// ones node refuses, and several of them pipelined on one connection.

import type { ServerResponse } from 'node:http'
import { connect } from 'node:net'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type {
  ForwardOutcome,
  ForwardRequest,
  ProxyResponse,
  RequestHandler,
  ServiceRuntime,
} from '../../../src/proxy/contracts.js'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { parseFastRequest } from '../../../src/proxy/inbound/fast-request.js'
import { createListenerServer, type ListenerServer } from '../../../src/proxy/inbound/listener.js'
import {
  contextWith,
  defaultLimits,
  listenerConfig,
  recordingService,
  registryOf,
} from './harness.js'

/** What the service saw, per listener, in arrival order. */
const seen: Record<'fast' | 'node', string[]> = { fast: [], node: [] }
let which: 'fast' | 'node' = 'fast'

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

// Answers in the framing the request asks for (x-answer), echoing what was forwarded.
function echoService(name: string): ServiceRuntime {
  return {
    ...recordingService(name),
    forward(req: ForwardRequest, res: ProxyResponse | ServerResponse): Promise<ForwardOutcome> {
      const headers = Object.entries(req.headers)
        .map(([key, value]) => `${key}=${String(value).replace(uuidPattern, 'generated')}`)
        .sort()
      const body = JSON.stringify({
        method: req.method,
        target: req.target,
        headers,
        deadline: req.deadlineAt === undefined ? null : 'set',
        body: req.body?.toString('latin1') ?? null,
      })
      seen[which].push(body)
      const answer = req.headers['x-answer']
      if (answer === '204') {
        res.writeHead(204, { 'x-kind': 'empty' })
        res.end()
      } else if (answer === 'chunked') {
        res.writeHead(201, { 'content-type': 'application/json' })
        res.write(body.slice(0, 7))
        res.write('')
        res.end(body.slice(7))
      } else {
        res.writeHead(200, [
          'content-type',
          'application/json',
          'content-length',
          String(Buffer.byteLength(body, 'latin1')),
        ])
        res.end(Buffer.from(body, 'latin1'))
      }
      return Promise.resolve({
        status: 200,
        attempts: 1,
        written: true,
        endpoint: undefined,
        error: undefined,
        captured: undefined,
      })
    },
  }
}

interface Listening {
  readonly server: ListenerServer
  readonly port: number
}
let fastListener: Listening
let nodeListener: Listening

beforeAll(async () => {
  const services = [echoService('orders')]
  const { ctx } = contextWith(() => registryOf(services), { accessLog: false })
  const listener = listenerConfig({ limits: { ...defaultLimits, maxHeaders: 8, maxBodyBytes: 64 } })
  const handler = createAmbassadorHandler(listener, ctx)
  expect(handler.fast).toBeDefined()
  const nodeOnly: RequestHandler = (req, res) => handler(req, res)
  const start = async (h: RequestHandler): Promise<Listening> => {
    const server = createListenerServer(listener, h, ctx)
    const { port } = await server.listen()
    return { server, port }
  }
  fastListener = await start(handler)
  nodeListener = await start(nodeOnly)
})

afterAll(async () => {
  await fastListener.server.close()
  await nodeListener.server.close()
})

/** One response as the comparison sees it. */
interface Answer {
  readonly status: string
  readonly headers: string
  readonly body: string
}

/**
 * Writes `bytes` on a new connection and reads responses until as many as `methods` came back
 * or the server closed the connection.
 */
function exchange(port: number, bytes: Buffer, methods: readonly string[]) {
  return new Promise<{ answers: Answer[]; closed: boolean }>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let received = Buffer.alloc(0)
    let done = false
    const finish = (closed: boolean): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      resolve({ answers: parseAll(received, methods).answers, closed })
    }
    // Only a request both paths leave unanswered (a body still to come) gets here.
    const timer = setTimeout(() => finish(false), 2_000)
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      if (parseAll(received, methods).answers.length === methods.length) finish(false)
    })
    socket.on('close', () => finish(true))
    socket.on('error', () => finish(true))
    socket.on('connect', () => socket.write(bytes))
    socket.on('timeout', () => reject(new Error('timeout')))
  })
}

function parseAll(data: Buffer, methods: readonly string[]): { answers: Answer[] } {
  const answers: Answer[] = []
  let rest = data
  while (answers.length < methods.length) {
    const end = rest.indexOf('\r\n\r\n')
    if (end < 0) break
    const lines = rest.subarray(0, end).toString('latin1').split('\r\n')
    const statusLine = lines[0] ?? ''
    const status = statusLine.split(' ')[1] ?? ''
    const headers: Record<string, string> = {}
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':')
      headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
    }
    let body: Buffer
    let used: number
    const after = rest.subarray(end + 4)
    const noBody = methods[answers.length] === 'HEAD' || status === '204' || status === '304'
    if (noBody) {
      body = Buffer.alloc(0)
      used = 0
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length'])
      if (after.length < length) break
      body = after.subarray(0, length)
      used = length
    } else if (headers['transfer-encoding'] === 'chunked') {
      const parts: Buffer[] = []
      let at = 0
      let complete = false
      for (;;) {
        const lineEnd = after.indexOf('\r\n', at)
        if (lineEnd < 0) break
        const size = Number.parseInt(after.subarray(at, lineEnd).toString('latin1'), 16)
        if (size === 0) {
          if (after.length >= lineEnd + 4) complete = true
          at = lineEnd + 4
          break
        }
        if (after.length < lineEnd + 2 + size + 2) break
        parts.push(after.subarray(lineEnd + 2, lineEnd + 2 + size))
        at = lineEnd + 2 + size + 2
      }
      if (!complete) break
      body = Buffer.concat(parts)
      used = at
    } else {
      body = after
      used = after.length
    }
    answers.push({
      status,
      // What must match: the framing-independent headers and whether the connection stays.
      headers: JSON.stringify({
        type: headers['content-type'],
        kind: headers['x-kind'],
        connection: headers.connection ?? 'keep-alive',
      }),
      body: body.toString('latin1'),
    })
    rest = after.subarray(used)
  }
  return { answers }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

// Requests node's parser takes (whatever the proxy then thinks of them), safe to pipeline:
// node:http answers a parse error in the middle of a pipeline depending on how the bytes were
// split into reads, so malformed requests go alone on their connection.
const parsedMethods = ['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE']
const parsedTargets = [
  '/orders/x',
  '/orders/a/b?c=d&e=f',
  '/orders/../x',
  '/orders/%2e%2e/x',
  '/orders/a%20b',
  '/nope/x',
  '/',
  '*',
  'http://HOST/orders/abs',
  '//orders/x',
]
const parsedHeaders = [
  'x-request-id: abc-123',
  'x-request-id: has space',
  'X-Breakwater-Deadline-Ms: 5000',
  'x-breakwater-deadline-ms: junk',
  'grpc-timeout: 2S',
  'connection: close',
  'Connection: keep-alive, X-Secret',
  'x-secret: hop',
  'keep-alive: timeout=3',
  'transfer-encoding: chunked',
  'expect: 100-continue',
  'upgrade: websocket',
  'content-length: 3',
  'content-length: 99999',
  'Host: other.example',
  'x-answer: chunked',
  'x-answer: 204',
  'x-high: caf\u00e9',
  'x-tab:\tvalue\t',
  'x-empty:',
]
// Requests node's parser refuses (400 or 505).
const malformedMethods = ['get', 'BREW']
const malformedTargets = ['/orders/a#frag', '/orders/a"b', '/orders/a\u00e9', '/orders/a?b=<c>']
const malformedHeaders = [
  'x-folded: a\r\n b',
  'x-ctl: a\u0001b',
  'x-del: a\u007fb',
  'bad header: v',
  ': empty-name',
  'content-length: 3, 3',
  'content-length: +3',
]

// Requests the fast path serves itself (or answers 404 to): the ones that come before the
// last of a pipeline, so that the hand-over, if any, is at the last request. After a hand-over
// node:http reads the rest of the pipeline from one buffer, and for some sequences (a request
// after an HTTP/1.0 one without keep-alive) it then answers differently than when it reads
// them off the socket itself: a difference inside node:http, not in the fast path. No
// `Connection: close` before the last request either: node's parser calls bytes after it an
// error (400, in place of an answer not yet sent), where the fast path answers up to the
// close and reads no further (RFC 9112 §9.6), which this test does not compare.
const servedHeaders = [
  'x-request-id: abc-123',
  'x-request-id: has space',
  'X-Breakwater-Deadline-Ms: 5000',
  'grpc-timeout: 2S',
  'Connection: keep-alive, X-Secret',
  'x-secret: hop',
  'content-length: 3',
  'x-answer: chunked',
  'x-answer: 204',
  'x-high: caf\u00e9',
  'x-tab:\tvalue\t',
]
const servedRequestArb: fc.Arbitrary<GeneratedRequest> = fc
  .record({
    method: fc.constantFrom('GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'),
    target: fc.constantFrom('/orders/x', '/orders/a/b?c=d&e=f', '/nope/x', '/orders/../x'),
    extra: fc.shuffledSubarray(servedHeaders, { maxLength: 4 }),
  })
  .map((r): GeneratedRequest => {
    const lines = [`${r.method} ${r.target} HTTP/1.1`, 'Host: HOST', ...r.extra]
    const body = r.extra.includes('content-length: 3') ? 'abc' : ''
    return { method: r.method, bytes: `${lines.join('\r\n')}\r\n\r\n${body}` }
  })

function requestArb(malformed: boolean): fc.Arbitrary<GeneratedRequest> {
  const pick = <T>(parsed: T[], bad: T[]) =>
    fc.constantFrom(...(malformed ? [...parsed, ...bad] : parsed))
  const headerArb = fc.oneof(
    pick(parsedHeaders, malformedHeaders),
    fc
      .tuple(fc.stringMatching(/^[a-z][a-z0-9-]{0,8}$/), fc.stringMatching(/^[ -~]{0,12}$/))
      .map(([n, v]) => `x-${n}: ${v.trim()}`),
  )
  return fc
    .record({
      method: pick(parsedMethods, malformedMethods),
      target: pick(parsedTargets, malformedTargets),
      version: pick(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0'], ['HTTP/2.0']),
      host: fc.constantFrom('HOST', 'HOST', 'HOST', '', 'a/b', 'none', 'twice'),
      extra: fc
        .array(headerArb, { maxLength: 5 })
        // Two Content-Length, or one with Transfer-Encoding: a parse error, only when malformed.
        .filter(
          (extra) =>
            malformed ||
            extra.filter((h) => h.startsWith('content-length') || h.startsWith('transfer-encoding'))
              .length <= 1,
        ),
      body: fc.option(fc.stringMatching(/^[a-z]{0,80}$/), { nil: undefined }),
      bareLf: malformed ? fc.constantFrom(false, false, false, false, true) : fc.constant(false),
    })
    .map((r): GeneratedRequest => {
      const lines = [`${r.method} ${r.target} ${r.version}`]
      if (r.host === 'twice') lines.push('Host: HOST', 'Host: HOST')
      else if (r.host !== 'none') lines.push(`Host: ${r.host}`)
      lines.push(...r.extra)
      const chunked = r.extra.includes('transfer-encoding: chunked')
      const declaresLength = r.extra.some((h) => h.startsWith('content-length'))
      let body = ''
      if (r.body !== undefined) {
        if (chunked) {
          body = `${r.body.length === 0 ? '' : `${r.body.length.toString(16)}\r\n${r.body}\r\n`}0\r\n\r\n`
        } else if (!declaresLength) {
          lines.push(`Content-Length: ${r.body.length}`)
          body = r.body
        }
      } else if (chunked) {
        body = '0\r\n\r\n'
      }
      if (declaresLength && !chunked) body = 'abc'
      const eol = r.bareLf ? '\n' : '\r\n'
      return { method: r.method, bytes: `${lines.join(eol)}${eol}${eol}${body}` }
    })
}

interface GeneratedRequest {
  readonly method: string
  readonly bytes: string
}

function render(requests: readonly GeneratedRequest[], port: number): Buffer {
  return Buffer.from(
    requests.map((r) => r.bytes.replaceAll('HOST', `127.0.0.1:${port}`)).join(''),
    'latin1',
  )
}

describe('the fast path answers as node:http does', () => {
  it('for any sequence of pipelined requests, valid or not', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          requestArb(true).map((request) => [request]),
          fc
            .tuple(fc.array(servedRequestArb, { minLength: 1, maxLength: 2 }), requestArb(false))
            .map(([served, last]) => [...served, last]),
        ),
        async (requests) => {
          const methods = requests.map((r) => r.method)
          seen.fast = []
          seen.node = []
          which = 'fast'
          // Both listeners see the port in Host: render for each (the ports differ).
          const fast = await exchange(
            fastListener.port,
            render(requests, fastListener.port),
            methods,
          )
          which = 'node'
          const node = await exchange(
            nodeListener.port,
            render(requests, nodeListener.port),
            methods,
          )
          // The two exchanges run one after the other and may straddle a second: the Date
          // header is compared by its form (IMF-fixdate), not its value.
          const normalize = (text: string, port: number) =>
            text
              .replaceAll(String(port), 'PORT')
              .replace(
                /^Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\r$/gm,
                'Date: <IMF-fixdate>\r',
              )
          const fastAnswers = fast.answers.map((a) => ({
            ...a,
            body: normalize(a.body, fastListener.port),
          }))
          const nodeAnswers = node.answers.map((a) => ({
            ...a,
            body: normalize(a.body, nodeListener.port),
          }))
          expect(fastAnswers).toEqual(nodeAnswers)
          // In order: both paths take pipelined requests one at a time (pipelining.test.ts).
          expect(seen.fast.map((s) => normalize(s, fastListener.port))).toEqual(
            seen.node.map((s) => normalize(s, nodeListener.port)),
          )
          expect(fast.closed).toBe(node.closed)
        },
      ),
      { numRuns: 150 },
    )
  }, 120_000)
})

describe('parseFastRequest', () => {
  const limits = { maxHeaderBytes: 1024, maxHeaders: 4, maxBodyBytes: 10 }
  const socket = {} as never
  const parse = (text: string) => parseFastRequest(Buffer.from(text, 'latin1'), socket, limits)

  it('reads a plain request whole, body included, and says how many bytes it took', () => {
    const text =
      'POST /a?b=c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabcGET'
    const request = parse(text)
    expect(request?.method).toBe('POST')
    expect(request?.url).toBe('/a?b=c')
    expect(request?.rawHeaders).toEqual([
      'Host',
      'h',
      'Content-Length',
      '3',
      'X-A',
      '1',
      'x-a',
      '2',
    ])
    expect(request?.headers['x-a']).toBe('1, 2')
    expect(request?.body?.toString()).toBe('abc')
    expect(request?.length).toBe(text.length - 3)
    expect(request?.keepAlive).toBe(true)
  })

  it('notes Connection: close', () => {
    expect(
      parse('GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n')?.keepAlive,
    ).toBe(false)
  })

  it.each([
    ['a head not yet whole', 'GET / HTTP/1.1\r\nHost: h\r\n'],
    ['a body not yet whole', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab'],
    ['HTTP/1.0', 'GET / HTTP/1.0\r\nHost: h\r\n\r\n'],
    ['an unknown method', 'BREW / HTTP/1.1\r\nHost: h\r\n\r\n'],
    ['absolute-form', 'GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n'],
    ['a quote in the target', 'GET /a"b HTTP/1.1\r\nHost: h\r\n\r\n'],
    ['chunked', 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['Expect', 'POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\na'],
    ['Upgrade', 'GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n'],
    ['two Content-Length', 'POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na'],
    ['a signed Content-Length', 'POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na'],
    ['a body over the limit', 'POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\nabcdefghijk'],
    ['obs-fold', 'GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n'],
    ['a bare LF', 'GET / HTTP/1.1\nHost: h\r\n\r\n'],
    ['a control character', 'GET / HTTP/1.1\r\nHost: h\r\nX: a\u0000b\r\n\r\n'],
    ['a space before the colon', 'GET / HTTP/1.1\r\nHost : h\r\n\r\n'],
    ['too many headers', 'GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n'],
    ['a head over the limit', `GET / HTTP/1.1\r\nX: ${'a'.repeat(1100)}\r\n\r\n`],
  ])('leaves %s to node:http', (_name, text) => {
    expect(parse(text)).toBeUndefined()
  })
})
