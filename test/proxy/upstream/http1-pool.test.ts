// Http1Pool against real sockets: node:http servers for the ordinary paths, and raw net
// servers that write exact bytes (split heads, chunk extensions and trailers, 1xx heads,
// HTTP/1.0, read-until-close bodies and every kind of malformed response). Idle and connect
// timers run on an injected clock; the only real waiting is for sockets to do their part.

import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http'
import { createServer as createNetServer, type Socket } from 'node:net'
import fc from 'fast-check'
import { afterEach, describe, expect, it } from 'vitest'
import type { Clock, TimerHandle } from '../../../src/core/clock.js'
import { InvalidOptionError } from '../../../src/core/errors.js'
import {
  type Http1DispatchOptions,
  type Http1Handler,
  Http1Pool,
  type Http1PoolOptions,
} from '../../../src/proxy/upstream/http1-pool.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { unacceptingListener } from '../../support/unaccepting-listener.js'
import { refusedUrl } from '../support/faulty-upstream.js'
import { eventually } from './helpers.js'

const cleanups: Array<() => Promise<unknown> | unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type CodedError = Error & { code?: string }

/** How one dispatch ended, as its handler saw it. */
interface Outcome {
  readonly kind: 'complete' | 'error' | 'upgrade'
  /** Every head's status, 1xx ones included. */
  readonly statuses: number[]
  readonly statusText: string
  /** The final head's raw headers, as latin1 strings. */
  readonly headers: string[]
  readonly body: Buffer
  readonly trailers: string[] | null
  readonly error: CodedError | undefined
  /** Whether onConnect came before the end. */
  readonly connected: boolean
  readonly dataCalls: number
}

interface Recorder {
  readonly handler: Http1Handler
  readonly outcome: Promise<Outcome>
  /** The abort function onConnect received. */
  abort: ((reason?: Error) => void) | undefined
  /** The abort function onQueued received (the request waited for a socket). */
  queuedAbort: ((reason?: Error) => void) | undefined
  /** The resume function of the final head. */
  resume: (() => void) | undefined
  /** Callbacks that came after the end (must stay empty). */
  readonly late: string[]
  /** Body chunks so far. */
  readonly chunks: Buffer[]
}

interface RecorderOptions {
  onConnect?(abort: (reason?: Error) => void): void
  onHeaders?(status: number): boolean
  onData?(chunk: Buffer, calls: number): boolean
  upgrade?: boolean
}

function recorder(options: RecorderOptions = {}): Recorder {
  let finish!: (outcome: Outcome) => void
  const outcome = new Promise<Outcome>((resolve) => {
    finish = resolve
  })
  const statuses: number[] = []
  const chunks: Buffer[] = []
  let headers: string[] = []
  let statusText = ''
  let connected = false
  let ended = false
  const late: string[] = []
  const end = (kind: Outcome['kind'], trailers: Buffer[] | null, error?: Error): void => {
    ended = true
    finish({
      kind,
      statuses,
      statusText,
      headers,
      body: Buffer.concat(chunks),
      trailers: trailers === null ? null : trailers.map((b) => b.toString('latin1')),
      error,
      connected,
      dataCalls: chunks.length,
    })
  }
  const rec: Recorder = {
    abort: undefined,
    queuedAbort: undefined,
    resume: undefined,
    late,
    chunks,
    outcome,
    handler: {
      onConnect(abort) {
        if (ended) late.push('onConnect')
        connected = true
        rec.abort = abort
        options.onConnect?.(abort)
      },
      onQueued(abort) {
        if (ended) late.push('onQueued')
        rec.queuedAbort = abort
      },
      onHeaders(status, raw, resume, text) {
        if (ended) late.push('onHeaders')
        statuses.push(status)
        if (status >= 200) {
          headers = raw.map((b) => b.toString('latin1'))
          statusText = text
          rec.resume = resume
        }
        return options.onHeaders?.(status) ?? true
      },
      onData(chunk) {
        if (ended) late.push('onData')
        chunks.push(Buffer.from(chunk))
        return options.onData?.(chunk, chunks.length) ?? true
      },
      onComplete(trailers) {
        if (ended) late.push('onComplete')
        else end('complete', trailers)
      },
      onError(error) {
        if (ended) late.push('onError')
        else end('error', null, error)
      },
    },
  }
  if (options.upgrade === true) {
    rec.handler.onUpgrade = () => {
      if (ended) late.push('onUpgrade')
      else end('upgrade', null)
    }
  }
  return rec
}

function get(path = '/', extra: Partial<Http1DispatchOptions> = {}): Http1DispatchOptions {
  return { path, method: 'GET', headers: [], body: null, ...extra }
}

/** Dispatches and waits for the end; also checks nothing came after it. */
async function send(
  pool: Http1Pool,
  options: Http1DispatchOptions = get(),
  recorderOptions: RecorderOptions = {},
): Promise<Outcome> {
  const rec = recorder(recorderOptions)
  pool.dispatch(options, rec.handler)
  const outcome = await rec.outcome
  await new Promise((resolve) => setImmediate(resolve))
  expect(rec.late).toEqual([])
  return outcome
}

function newPool(origin: string, options: Partial<Http1PoolOptions> = {}): Http1Pool {
  const pool = new Http1Pool(origin, { connections: 4, ...options })
  cleanups.push(() => pool.destroy())
  return pool
}

interface HttpUpstream {
  readonly url: string
  readonly server: Server
  /** Sockets the server accepted. */
  readonly sockets: Socket[]
  /** `method url` of every request, in arrival order, with the client's port. */
  readonly seen: Array<{ readonly line: string; readonly port: number; readonly body: string }>
}

async function httpUpstream(
  answer: (req: IncomingMessage, res: ServerResponse, body: string) => void = (_req, res) =>
    res.end('ok'),
  configure: (server: Server) => void = () => {},
): Promise<HttpUpstream> {
  const sockets: Socket[] = []
  const seen: Array<{ line: string; port: number; body: string }> = []
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString()
      seen.push({ line: `${req.method} ${req.url}`, port: req.socket.remotePort ?? 0, body })
      answer(req, res, body)
    })
  })
  configure(server)
  server.on('connection', (socket: Socket) => sockets.push(socket))
  const serverPort = await listenOnLoopback(server)
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  )
  return {
    url: `http://127.0.0.1:${serverPort}`,
    server,
    sockets,
    seen,
  }
}

interface RawUpstream {
  readonly url: string
  readonly sockets: Socket[]
  /** Request heads received, in order, as latin1. */
  readonly heads: string[]
  /** Everything each connection received, as latin1. */
  readonly received: string[]
}

/**
 * A net server that reads request heads (and Content-Length bodies) and lets `answer` write
 * whatever bytes it likes.
 */
async function rawUpstream(
  answer: (socket: Socket, head: string, index: number) => unknown,
): Promise<RawUpstream> {
  const sockets: Socket[] = []
  const heads: string[] = []
  const received: string[] = []
  const server = createNetServer((socket) => {
    const id = sockets.length
    sockets.push(socket)
    received.push('')
    socket.setNoDelay(true)
    socket.on('error', () => {})
    let pending = Buffer.alloc(0)
    socket.on('data', (chunk: Buffer) => {
      received[id] += chunk.toString('latin1')
      pending = Buffer.concat([pending, chunk])
      for (;;) {
        const end = pending.indexOf('\r\n\r\n')
        if (end === -1) return
        const head = pending.subarray(0, end + 4).toString('latin1')
        const length = /\r\ncontent-length: *(\d+)/i.exec(head)
        const total = end + 4 + (length === null ? 0 : Number(length[1]))
        if (pending.length < total) return
        pending = pending.subarray(total)
        heads.push(head)
        void answer(socket, head, heads.length - 1)
      }
    })
  })
  const serverPort = await listenOnLoopback(server)
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  )
  return {
    url: `http://127.0.0.1:${serverPort}`,
    sockets,
    heads,
    received,
  }
}

/** One event-loop turn: the peer's bytes get their own read on the other side. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

/** Writes `bytes` in pieces cut at `cuts`, one event-loop turn apart. */
async function writeInPieces(
  socket: Socket,
  bytes: Buffer,
  cuts: readonly number[],
): Promise<void> {
  let from = 0
  for (const cut of [...cuts, bytes.length]) {
    if (cut <= from) continue
    if (socket.destroyed) return
    socket.write(bytes.subarray(from, cut))
    from = cut
    await turn()
  }
}

function everyByte(bytes: Buffer): number[] {
  return Array.from({ length: bytes.length }, (_, i) => i + 1)
}

const latin1 = (text: string): Buffer => Buffer.from(text, 'latin1')

/** A clock whose timers the test fires by hand, synchronously. */
class HandClock implements Clock {
  readonly timers = new Map<number, { readonly callback: () => void; readonly delayMs: number }>()
  #next = 1
  now(): number {
    return 0
  }
  setTimeout(callback: () => void, delayMs: number): TimerHandle {
    const id = this.#next++
    this.timers.set(id, { callback, delayMs })
    return id
  }
  clearTimeout(handle: TimerHandle): void {
    this.timers.delete(handle as number)
  }
  fireAll(): void {
    const due = [...this.timers.values()]
    this.timers.clear()
    for (const timer of due) timer.callback()
  }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

describe('Http1Pool options', () => {
  it('refuses origins other than http://host[:port] and bad numbers', () => {
    for (const origin of ['https://a:1', 'http://a:1/path', 'http://a:1?q', 'nope', 42]) {
      expect(() => new Http1Pool(origin as string, { connections: 1 })).toThrow(InvalidOptionError)
    }
    const ok = 'http://127.0.0.1:1'
    expect(() => new Http1Pool(ok, { connections: 0 })).toThrow(/Http1Pool.connections/)
    expect(() => new Http1Pool(ok, { connections: 1.5 })).toThrow(InvalidOptionError)
    expect(() => new Http1Pool(ok, { connections: 1, keepAliveTimeoutMs: 0 })).toThrow(
      /keepAliveTimeoutMs/,
    )
    expect(
      () => new Http1Pool(ok, { connections: 1, maxHeaderBytes: 'x' as unknown as number }),
    ).toThrow(/maxHeaderBytes/)
    expect(() => new Http1Pool(ok, { connections: 1, clock: {} as unknown as Clock })).toThrow(
      /clock/,
    )
    expect(() => new Http1Pool(ok, null as unknown as Http1PoolOptions)).toThrow(InvalidOptionError)
    expect(new Http1Pool('http://[::1]:8080', { connections: 1 }).pending).toBe(0)
  })
})

describe('Http1Pool requests', () => {
  it('sends the request as given and delivers status, raw headers and body', async () => {
    const up = await httpUpstream((req, res, body) => {
      res.setHeader('X-Echo', `${req.headers['x-a']}|${req.headers.host}|${body}`)
      res.statusMessage = 'Fine Thanks'
      res.writeHead(201)
      res.end('created')
    })
    const pool = newPool(up.url)
    const outcome = await send(pool, {
      path: '/items?x=1',
      method: 'POST',
      headers: ['x-a', 'one'],
      body: Buffer.from('{"a":1}'),
    })
    expect(outcome.kind).toBe('complete')
    expect(outcome.statuses).toEqual([201])
    expect(outcome.statusText).toBe('Fine Thanks')
    expect(outcome.body.toString()).toBe('created')
    expect(outcome.trailers).toBeNull()
    const echo = outcome.headers[outcome.headers.indexOf('X-Echo') + 1]
    expect(echo).toBe(`one|${up.url.slice(7)}|{"a":1}`)
    expect(up.seen).toEqual([
      { line: 'POST /items?x=1', port: expect.any(Number), body: '{"a":1}' },
    ])
  })

  it('writes exactly the head it should: framing headers of the caller dropped, its Host kept', async () => {
    const up = await rawUpstream((socket) => socket.write('HTTP/1.1 204 No Content\r\n\r\n'))
    const pool = newPool(up.url)
    await send(
      pool,
      get('/a', {
        headers: [
          'Host',
          'front',
          'Content-Length',
          '99',
          'transfer-encoding',
          'chunked',
          'Connection',
          'close',
          'x-b',
          'v',
        ],
      }),
    )
    await send(pool, get('/b'))
    await send(pool, { path: '/c', method: 'PUT', headers: [], body: Buffer.from('xyz') })
    await send(pool, { path: '/d', method: 'DELETE', headers: [], body: Buffer.alloc(0) })
    await send(pool, { path: '/e', method: 'POST', headers: [], body: null })
    const host = `host: ${up.url.slice(7)}\r\n`
    expect(up.heads).toEqual([
      'GET /a HTTP/1.1\r\nHost: front\r\nx-b: v\r\n\r\n',
      `GET /b HTTP/1.1\r\n${host}\r\n`,
      `PUT /c HTTP/1.1\r\n${host}content-length: 3\r\n\r\n`,
      `DELETE /d HTTP/1.1\r\n${host}content-length: 0\r\n\r\n`,
      `POST /e HTTP/1.1\r\n${host}content-length: 0\r\n\r\n`,
    ])
    expect(up.received[0]).toContain('content-length: 3\r\n\r\nxyz')
  })

  it('sends a large body after its head', async () => {
    const up = await httpUpstream((_req, res, body) => res.end(String(body.length)))
    const pool = newPool(up.url)
    const body = Buffer.alloc(300_000, 'b')
    const outcome = await send(pool, { path: '/big', method: 'POST', headers: [], body })
    expect(outcome.body.toString()).toBe('300000')
    expect(up.seen[0]?.body).toBe(body.toString())
  })

  it('refuses CR, LF and NUL in headers, and malformed methods and paths, before any write', async () => {
    const up = await httpUpstream()
    const pool = newPool(up.url)
    const bad: Http1DispatchOptions[] = [
      get('/', { headers: ['x-a', 'v\r\nx-evil: 1'] }),
      get('/', { headers: ['x-a', 'v\nx'] }),
      get('/', { headers: ['x-a', 'v\0'] }),
      get('/', { headers: ['x a', 'v'] }),
      get('/', { headers: ['x-a:', 'v'] }),
      get('/', { headers: ['x-a', 'ok', 'x-b\r\n', 'v'] }),
      get('/a b'),
      get('/a\r\nx: y'),
      get(''),
      { path: '/', method: 'G ET', headers: [], body: null },
    ]
    for (const options of bad) {
      const outcome = await send(pool, options)
      expect(outcome.kind).toBe('error')
      expect(outcome.error?.code).toBe('UND_ERR_INVALID_ARG')
      expect(outcome.connected).toBe(false)
    }
    expect(pool.connected + pool.busy + pool.pending).toBe(0)
    expect(up.sockets).toHaveLength(0)
  })

  it('reuses one connection for sequential requests', async () => {
    const up = await httpUpstream((req, res) => res.end(req.url))
    const pool = newPool(up.url)
    for (let i = 0; i < 20; i++) {
      const outcome = await send(pool, get(`/${i}`))
      expect(outcome.body.toString()).toBe(`/${i}`)
    }
    expect(up.sockets).toHaveLength(1)
    expect(pool.connected).toBe(1)
    expect(pool.busy).toBe(0)
  })

  it('caps the sockets at `connections` and queues the rest in FIFO order', async () => {
    const held: ServerResponse[] = []
    const up = await httpUpstream((_req, res) => held.push(res))
    const pool = newPool(up.url, { connections: 2 })
    const outcomes = Array.from({ length: 6 }, (_, i) => {
      const rec = recorder()
      pool.dispatch(get(`/${i}`), rec.handler)
      return rec.outcome
    })
    expect(pool.pending).toBe(6)
    await eventually(() => held.length === 2)
    expect(pool.busy).toBe(2)
    expect(pool.pending).toBe(4)
    expect(pool.connected).toBe(2)
    // One at a time: each answer frees the socket for the next request in line.
    for (let answered = 0; answered < 6; answered++) {
      await eventually(() => held.length > answered)
      held[answered]?.end(`r${answered}`)
    }
    const done = await Promise.all(outcomes)
    expect(done.map((o) => o.body.toString())).toEqual(['r0', 'r1', 'r2', 'r3', 'r4', 'r5'])
    expect(up.seen.map((s) => s.line)).toEqual([0, 1, 2, 3, 4, 5].map((i) => `GET /${i}`))
    expect(up.sockets).toHaveLength(2)
    expect(pool.busy + pool.pending).toBe(0)
  })

  it('reuses the most recently idle socket first', async () => {
    const held = new Map<string, ServerResponse>()
    const up = await httpUpstream((req, res) => {
      if (req.url === '/probe') res.end()
      else held.set(req.url ?? '', res)
    })
    const pool = newPool(up.url, { connections: 2 })
    const a = send(pool, get('/a'))
    const b = send(pool, get('/b'))
    await eventually(() => held.size === 2)
    held.get('/a')?.end()
    await a
    held.get('/b')?.end()
    await b
    const portOf = (line: string) => up.seen.find((s) => s.line === line)?.port
    expect(portOf('GET /a')).not.toBe(portOf('GET /b'))
    await send(pool, get('/probe'))
    expect(portOf('GET /probe')).toBe(portOf('GET /b'))
  })

  it('reports a refused connection through onError, before onConnect', async () => {
    const pool = newPool(await refusedUrl())
    const outcome = await send(pool)
    expect(outcome.kind).toBe('error')
    expect(outcome.connected).toBe(false)
    expect(outcome.error?.code).toBe('ECONNREFUSED')
    expect(pool.connected + pool.busy + pool.pending).toBe(0)
  })

  it('fails the waiting request when a connect times out', async () => {
    const up = await httpUpstream()
    const clock = new HandClock()
    const pool = newPool(up.url, { clock, connectTimeoutMs: 500 })
    const rec = recorder()
    pool.dispatch(get(), rec.handler)
    expect([...clock.timers.values()].map((t) => t.delayMs)).toEqual([500])
    clock.fireAll()
    const outcome = await rec.outcome
    expect(outcome.error?.code).toBe('UND_ERR_CONNECT_TIMEOUT')
    expect(outcome.connected).toBe(false)
    expect(pool.pending + pool.busy + pool.connected).toBe(0)
    // A connect that succeeds clears its timer.
    await send(pool)
    expect([...clock.timers.values()].map((t) => t.delayMs)).toEqual([4_000])
  })
})

describe('Http1Pool requests aborted while they wait for a socket', () => {
  it('leave the queue at once, and the connect opened for them goes once no request needs it', async () => {
    const listener = await unacceptingListener()
    cleanups.push(() => listener.stop())
    const clock = new HandClock()
    const pool = newPool(`http://127.0.0.1:${listener.port}`, { clock, connections: 1 })
    const first = recorder()
    const second = recorder()
    pool.dispatch(get('/first'), first.handler)
    pool.dispatch(get('/second'), second.handler)
    expect(pool.pending).toBe(2)
    // One socket opening (the limit), its connect hanging: only its 10 s timer could end it.
    expect([...clock.timers.values()].map((t) => t.delayMs)).toEqual([10_000])

    const reason = new Error('client went away')
    first.queuedAbort?.(reason)
    const outcome = await first.outcome
    expect(outcome).toMatchObject({ kind: 'error', error: reason, connected: false })
    // The second request still waits on that connect: it stays.
    expect(pool.pending).toBe(1)
    expect(clock.timers.size).toBe(1)

    const closed = pool.close()
    second.queuedAbort?.()
    expect((await second.outcome).error?.code).toBe('UND_ERR_ABORTED')
    // Nobody waits any more: the connect is dropped and close() ends without the timer.
    await closed
    expect(clock.timers.size).toBe(0)
    // A stale abort changes nothing.
    first.queuedAbort?.()
    expect(first.late.concat(second.late)).toEqual([])
  })

  it('hears no onQueued when an idle socket takes the request at once', async () => {
    const up = await httpUpstream()
    const pool = newPool(up.url)
    await send(pool)
    const rec = recorder()
    pool.dispatch(get(), rec.handler)
    expect((await rec.outcome).kind).toBe('complete')
    expect(rec.queuedAbort).toBeUndefined()
  })
})

describe('Http1Pool response parsing', () => {
  const okResponse = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello'

  it('parses a head and body split at every byte', async () => {
    const bytes = latin1(okResponse)
    const up = await rawUpstream((socket) => writeInPieces(socket, bytes, everyByte(bytes)))
    const pool = newPool(up.url)
    const outcome = await send(pool)
    expect(outcome.kind).toBe('complete')
    expect(outcome.statuses).toEqual([200])
    expect(outcome.statusText).toBe('OK')
    expect(outcome.headers).toEqual(['Content-Type', 'text/plain', 'Content-Length', '5'])
    expect(outcome.body.toString()).toBe('hello')
    // Complete and nothing extra: the socket stays for the next request.
    await send(pool)
    expect(up.sockets).toHaveLength(1)
  })

  it('de-chunks a chunked body with extensions and delivers its trailers', async () => {
    const bytes = latin1(
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nTrailer: X-Sum\r\n\r\n' +
        '5;name=value\r\nhello\r\n' +
        'A ; a=b;c="d"\r\n and more!\r\n' +
        '1 \t ;x\r\n?\r\n' +
        '0;last\r\nX-Sum: 42\r\nX-Other:  two words \r\n\r\n',
    )
    const up = await rawUpstream((socket, _head, index) =>
      index === 0 ? socket.write(bytes) : writeInPieces(socket, bytes, everyByte(bytes)),
    )
    const pool = newPool(up.url)
    for (let i = 0; i < 2; i++) {
      const outcome = await send(pool)
      expect(outcome.body.toString()).toBe('hello and more!?')
      expect(outcome.trailers).toEqual(['X-Sum', '42', 'X-Other', 'two words'])
    }
    expect(up.sockets).toHaveLength(1)
  })

  it('delivers 1xx heads before the final response', async () => {
    const up = await rawUpstream((socket) =>
      writeInPieces(
        socket,
        latin1(
          'HTTP/1.1 100 Continue\r\n\r\n' +
            'HTTP/1.1 102 Processing\r\n\r\n' +
            'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n' +
            'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
        ),
        [10, 30, 60, 100],
      ),
    )
    const outcome = await send(newPool(up.url))
    expect(outcome.statuses).toEqual([100, 102, 103, 200])
    expect(outcome.headers).toEqual(['Content-Length', '2'])
    expect(outcome.body.toString()).toBe('ok')
  })

  it('does not reuse a socket after Connection: close', async () => {
    const up = await rawUpstream((socket) =>
      socket.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx'),
    )
    const pool = newPool(up.url)
    await send(pool)
    expect(pool.connected).toBe(0)
    await send(pool)
    expect(up.sockets).toHaveLength(2)
  })

  it('reuses an HTTP/1.0 socket only with Connection: keep-alive', async () => {
    let keepAlive = false
    const up = await rawUpstream((socket) =>
      socket.write(
        `HTTP/1.0 200 OK\r\n${keepAlive ? 'Connection: Keep-Alive\r\n' : ''}Content-Length: 2\r\n\r\nok`,
      ),
    )
    const pool = newPool(up.url)
    expect((await send(pool)).body.toString()).toBe('ok')
    expect(pool.connected).toBe(0)
    keepAlive = true
    await send(pool)
    await send(pool)
    expect(up.sockets).toHaveLength(2)
    expect(pool.connected).toBe(1)
  })

  it('reads a body without length until the server closes', async () => {
    const up = await rawUpstream(async (socket) => {
      await writeInPieces(socket, latin1('HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nsome bytes'), [20, 30])
      socket.end(' and the end')
    })
    const pool = newPool(up.url)
    const outcome = await send(pool)
    expect(outcome.kind).toBe('complete')
    expect(outcome.body.toString()).toBe('some bytes and the end')
    expect(pool.connected).toBe(0)
  })

  it('reads until close when chunked is not the final transfer coding', async () => {
    const up = await rawUpstream((socket) =>
      socket.end(
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      ),
    )
    const outcome = await send(newPool(up.url))
    expect(outcome.body.toString()).toBe('3\r\nabc\r\n0\r\n\r\n')
  })

  it('reads no body for HEAD, 204 and 304', async () => {
    const up = await rawUpstream((socket, head) => {
      if (head.startsWith('HEAD')) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n')
      else if (head.includes('/204')) socket.write('HTTP/1.1 204 No Content\r\n\r\n')
      else socket.write('HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n')
    })
    const pool = newPool(up.url)
    const head = await send(pool, { path: '/', method: 'HEAD', headers: [], body: null })
    expect(head.kind).toBe('complete')
    expect(head.body.length).toBe(0)
    for (const path of ['/204', '/304', '/204']) {
      const outcome = await send(pool, get(path))
      expect(outcome.kind).toBe('complete')
      expect(outcome.dataCalls).toBe(0)
    }
    // The socket closes after HEAD (as undici does); 204 and 304 keep theirs.
    expect(up.sockets).toHaveLength(2)
  })

  it('accepts repeated identical Content-Length values', async () => {
    const up = await rawUpstream((socket) =>
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc'),
    )
    expect((await send(newPool(up.url))).body.toString()).toBe('abc')
  })

  const malformed: ReadonlyArray<readonly [string, string, string]> = [
    ['a status code of four digits', 'HTTP/1.1 2000 OK\r\n\r\n', 'HPE_INVALID_STATUS'],
    ['a two-digit status code', 'HTTP/1.1 20 OK\r\n\r\n', 'HPE_INVALID_STATUS'],
    ['a truncated status line', 'HTTP/1.1 20\r\n\r\n', 'HPE_INVALID_CONSTANT'],
    ['another protocol', 'HTP/1.1 200 OK\r\n\r\n', 'HPE_INVALID_CONSTANT'],
    ['HTTP/2.0', 'HTTP/2.0 200 OK\r\n\r\n', 'HPE_INVALID_CONSTANT'],
    ['HTTP/1.2', 'HTTP/1.2 200 OK\r\n\r\n', 'HPE_INVALID_VERSION'],
    ['no space after the code', 'HTTP/1.1 200OK\r\n\r\n', 'HPE_INVALID_STATUS'],
    [
      'a bare LF after the status line',
      'HTTP/1.1 200 OK\nContent-Length: 0\n\n',
      'HPE_CR_EXPECTED',
    ],
    ['a bare LF after a header', 'HTTP/1.1 200 OK\r\nA: b\n\r\n', 'HPE_CR_EXPECTED'],
    ['a CR without LF', 'HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n', 'HPE_LF_EXPECTED'],
    [
      'obs-fold',
      // Read as its own line, the folded part would be a valid header.
      'HTTP/1.1 200 OK\r\nA: b\r\n\tX-C: d\r\nContent-Length: 0\r\n\r\n',
      'HPE_INVALID_HEADER_TOKEN',
    ],
    ['a space before the colon', 'HTTP/1.1 200 OK\r\nA : b\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
    [
      'a control character in a value',
      'HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n',
      'HPE_INVALID_HEADER_TOKEN',
    ],
    [
      'both Content-Length and Transfer-Encoding',
      'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'HPE_UNEXPECTED_CONTENT_LENGTH',
    ],
    [
      'differing Content-Length values',
      'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd',
      'HPE_INVALID_CONTENT_LENGTH',
    ],
    [
      'a Content-Length list',
      'HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc',
      'HPE_INVALID_CONTENT_LENGTH',
    ],
    [
      'a signed Content-Length',
      'HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc',
      'HPE_INVALID_CONTENT_LENGTH',
    ],
    [
      'a bad chunk size',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      'HPE_INVALID_CHUNK_SIZE',
    ],
    // After the size only `;` (extensions, with BWS before it) or CRLF, as llhttp: `5 6` was
    // read as a 5-byte chunk, anything after a space or tab taken for an extension.
    ...[
      ['a second number after the chunk size', '5 6'],
      ['a tab and a letter after the chunk size', '5\tx'],
      ['a space and a letter before an extension', '5 x;y'],
      ['trailing whitespace after the chunk size', '5 '],
    ].map(
      ([name, line]) =>
        [
          name as string,
          `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${line}\r\nhello\r\n0\r\n\r\n`,
          'HPE_INVALID_CHUNK_SIZE',
        ] as const,
    ),
    [
      'a huge chunk size',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\n',
      'HPE_INVALID_CHUNK_SIZE',
    ],
    [
      'chunk data without CRLF',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n',
      'HPE_CR_EXPECTED',
    ],
  ]

  it.each(malformed)('fails on %s', async (_name, response, code) => {
    const up = await rawUpstream((socket) => socket.write(response))
    const pool = newPool(up.url)
    const outcome = await send(pool)
    expect(outcome.kind).toBe('error')
    expect(outcome.connected).toBe(true)
    expect(outcome.error?.code).toBe(code)
    expect(pool.busy + pool.connected).toBe(0)
  })

  it('fails a head larger than maxHeaderBytes, whole or split', async () => {
    const big = `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(2_000)}\r\nContent-Length: 0\r\n\r\n`
    const up = await rawUpstream((socket, _head, index) =>
      index === 0
        ? socket.write(big)
        : writeInPieces(socket, latin1(big), [10, 100, 600, 1_200, 1_800]),
    )
    const pool = newPool(up.url, { maxHeaderBytes: 1_024 })
    for (let i = 0; i < 2; i++) {
      const outcome = await send(pool)
      expect(outcome.error?.code).toBe('UND_ERR_HEADERS_OVERFLOW')
      expect(outcome.statuses).toEqual([])
    }
    // The same head fits a larger limit.
    expect((await send(newPool(up.url, { maxHeaderBytes: 4_096 }))).kind).toBe('complete')
  })

  it('treats 101 as an upgrade it does not support', async () => {
    const up = await rawUpstream((socket) =>
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n'),
    )
    const pool = newPool(up.url)
    expect((await send(pool, get(), { upgrade: true })).kind).toBe('upgrade')
    const outcome = await send(pool)
    expect(outcome.kind).toBe('error')
    expect(outcome.error?.code).toBe('UND_ERR_SOCKET')
    expect(pool.connected).toBe(0)
  })

  it('destroys a socket that got bytes after its response', async () => {
    const up = await rawUpstream((socket, _head, index) => {
      if (index === 0) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA')
      else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
    })
    const pool = newPool(up.url)
    const first = await send(pool)
    expect(first.kind).toBe('complete')
    expect(first.body.toString()).toBe('ok')
    expect(pool.connected).toBe(0)
    expect((await send(pool)).kind).toBe('complete')
    expect(up.sockets).toHaveLength(2)
  })

  it('fails a response whose connection closes mid-body', async () => {
    const up = await rawUpstream(async (socket) => {
      await writeInPieces(
        socket,
        latin1('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart'),
        [10],
      )
      socket.end()
    })
    const pool = newPool(up.url)
    const outcome = await send(pool)
    expect(outcome.kind).toBe('error')
    expect(outcome.statuses).toEqual([200])
    expect(outcome.body.toString()).toBe('part')
    expect(outcome.error?.code).toBe('UND_ERR_SOCKET')
    expect(outcome.error?.message).toBe('other side closed')
    expect(pool.connected).toBe(0)
  })

  it('fails a request on a reused socket the server closes instead of answering', async () => {
    const up = await rawUpstream((socket, _head, index) => {
      if (index === 0) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')
      else socket.destroy()
    })
    const pool = newPool(up.url)
    expect((await send(pool)).kind).toBe('complete')
    const outcome = await send(pool)
    expect(outcome.kind).toBe('error')
    expect(outcome.connected).toBe(true)
    expect(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']).toContain(outcome.error?.code)
    expect(up.sockets).toHaveLength(1)
  })

  it('forgets an idle socket the server closed', async () => {
    const up = await rawUpstream((socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')
      setImmediate(() => socket.end())
    })
    const pool = newPool(up.url)
    await send(pool)
    await eventually(() => pool.connected === 0)
    expect((await send(pool)).kind).toBe('complete')
    expect(up.sockets).toHaveLength(2)
  })

  it('gives a random split of the response bytes the same body and one onComplete', async () => {
    let bytes = Buffer.alloc(0)
    let cuts: number[] = []
    const up = await rawUpstream((socket) => writeInPieces(socket, bytes, cuts))
    const pool = newPool(up.url, { connections: 1 })
    const bodyChunk = fc.uint8Array({ minLength: 1, maxLength: 40 })
    await fc.assert(
      fc.asyncProperty(
        fc.array(bodyChunk, { minLength: 0, maxLength: 6 }),
        fc.boolean(),
        fc.array(fc.nat(), { maxLength: 12 }),
        async (pieces, chunked, rawCuts) => {
          const body = Buffer.concat(pieces)
          const payload = chunked
            ? Buffer.concat([
                ...pieces.map((p) =>
                  Buffer.concat([latin1(`${p.length.toString(16)};x=y\r\n`), p, latin1('\r\n')]),
                ),
                latin1('0\r\nT: 1\r\n\r\n'),
              ])
            : body
          bytes = Buffer.concat([
            latin1(
              `HTTP/1.1 200 OK\r\nServer: prop\r\n${chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${body.length}`}\r\n\r\n`,
            ),
            payload,
          ])
          cuts = [...new Set(rawCuts.map((c) => c % bytes.length))].sort((a, b) => a - b)
          const outcome = await send(pool)
          expect(outcome.kind).toBe('complete')
          expect(outcome.body.equals(body)).toBe(true)
          expect(outcome.trailers).toEqual(chunked ? ['T', '1'] : null)
        },
      ),
      { numRuns: 60 },
    )
    // Every response was complete and exact: one socket served them all.
    expect(up.sockets).toHaveLength(1)
  })
})

describe('Http1Pool handler control', () => {
  it('stops delivering while paused and goes on after resume', async () => {
    const total = 2_000_000
    const up = await httpUpstream((_req, res) => {
      res.writeHead(200, { 'content-length': total })
      for (let sent = 0; sent < total; sent += 100_000) res.write(Buffer.alloc(100_000, 'p'))
      res.end()
    })
    const pool = newPool(up.url)
    let paused = true
    const rec = recorder({ onData: (_chunk, calls) => calls > 1 || !paused })
    pool.dispatch(get(), rec.handler)
    await eventually(() => rec.chunks.length === 1)
    // Many event-loop turns with the rest of the body on its way: nothing is delivered.
    for (let i = 0; i < 20; i++) await turn()
    await new Promise((resolve) => setTimeout(resolve, 30))
    expect(rec.chunks).toHaveLength(1)
    paused = false
    rec.resume?.()
    const outcome = await rec.outcome
    expect(outcome.kind).toBe('complete')
    expect(outcome.body.length).toBe(total)
  })

  it('holds even the completion of a paused response until resume', async () => {
    const up = await rawUpstream((socket) =>
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody'),
    )
    const pool = newPool(up.url)
    const rec = recorder({ onHeaders: () => false })
    pool.dispatch(get(), rec.handler)
    let ended = false
    void rec.outcome.then(() => {
      ended = true
    })
    await eventually(() => rec.resume !== undefined)
    for (let i = 0; i < 10; i++) await turn()
    expect(rec.chunks).toHaveLength(0)
    expect(ended).toBe(false)
    rec.resume?.()
    const outcome = await rec.outcome
    expect(outcome.body.toString()).toBe('body')
    // Resumed and reused.
    await send(pool)
    expect(up.sockets).toHaveLength(1)
  })

  it('abort() on a request that gets no answer: onError with the reason, socket gone, slot freed', async () => {
    const up = await rawUpstream((socket, head) => {
      if (head.includes('/second')) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')
    })
    const pool = newPool(up.url, { connections: 1 })
    const hanging = recorder()
    pool.dispatch(get('/hang'), hanging.handler)
    const second = recorder()
    pool.dispatch(get('/second'), second.handler)
    await eventually(() => up.heads.length === 1)
    expect(pool.pending).toBe(1)
    const reason = new Error('read timeout')
    hanging.abort?.(reason)
    const outcome = await hanging.outcome
    expect(outcome.error).toBe(reason)
    expect((await second.outcome).kind).toBe('complete')
    expect(up.sockets).toHaveLength(2)
    await eventually(
      () => up.sockets[0]?.destroyed === true || up.sockets[0]?.readableEnded === true,
    )
    hanging.abort?.(new Error('again'))
    expect(hanging.late).toEqual([])
  })

  it('abort() inside onConnect writes nothing and ends with onError', async () => {
    const up = await rawUpstream((socket) =>
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'),
    )
    const pool = newPool(up.url, { connections: 1 })
    const reason = new Error('gave up while queued')
    const outcome = await send(pool, get('/no'), { onConnect: (abort) => abort(reason) })
    expect(outcome.error).toBe(reason)
    expect(outcome.statuses).toEqual([])
    expect((await send(pool, get('/yes'))).kind).toBe('complete')
    expect(up.heads.map((h) => h.split(' ')[1])).toEqual(['/yes'])
  })

  it('keeps the socket of a queued request aborted in onConnect (nothing was written) for the next one', async () => {
    const held: ServerResponse[] = []
    const up = await httpUpstream((req, res) => {
      if (req.url === '/held') held.push(res)
      else res.end(req.url)
    })
    const pool = newPool(up.url, { connections: 1 })
    const first = send(pool, get('/held'))
    await eventually(() => held.length === 1)
    // Two requests given up on while they waited for the socket (their attempt timed out),
    // then one still wanted.
    const reason = new Error('gave up while queued')
    const abandoned = [0, 1].map(() => {
      const rec = recorder({ onConnect: (abort) => abort(reason) })
      pool.dispatch(get('/abandoned'), rec.handler)
      return rec.outcome
    })
    const next = send(pool, get('/next'))
    held[0]?.end('held')
    expect((await first).body.toString()).toBe('held')
    for (const outcome of await Promise.all(abandoned)) expect(outcome.error).toBe(reason)
    expect((await next).body.toString()).toBe('/next')
    expect(up.seen.map((s) => s.line)).toEqual(['GET /held', 'GET /next'])
    expect(up.sockets).toHaveLength(1)
    expect(pool.connected).toBe(1)
  })

  it('ignores a stale abort or resume from an earlier request on the same socket', async () => {
    const up = await rawUpstream((socket) =>
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc'),
    )
    const pool = newPool(up.url, { connections: 1 })
    const first = recorder()
    pool.dispatch(get('/1'), first.handler)
    await first.outcome
    // The second request on the same socket pauses at its head.
    const second = recorder({ onHeaders: () => false })
    pool.dispatch(get('/2'), second.handler)
    await eventually(() => second.resume !== undefined)
    first.resume?.()
    first.abort?.(new Error('stale'))
    for (let i = 0; i < 10; i++) await turn()
    expect(second.chunks).toHaveLength(0)
    expect(pool.busy).toBe(1)
    second.resume?.()
    const outcome = await second.outcome
    expect(outcome.kind).toBe('complete')
    expect(outcome.body.toString()).toBe('abc')
    expect(first.late).toEqual([])
    expect(up.sockets).toHaveLength(1)
  })

  it('fails a request whose handler throws, once', async () => {
    const up = await httpUpstream((_req, res) => res.end('data'))
    const pool = newPool(up.url)
    const boom = new Error('handler bug')
    const outcome = await send(pool, get(), {
      onData: () => {
        throw boom
      },
    })
    expect(outcome.kind).toBe('error')
    expect(outcome.error).toBe(boom)
    expect(pool.busy).toBe(0)
  })
})

describe('Http1Pool lifecycle', () => {
  it('close() lets running and queued requests finish, then closes the sockets', async () => {
    const held: ServerResponse[] = []
    const up = await httpUpstream((_req, res) => held.push(res))
    const pool = newPool(up.url, { connections: 1 })
    const running = recorder()
    const queued = recorder()
    pool.dispatch(get('/1'), running.handler)
    pool.dispatch(get('/2'), queued.handler)
    await eventually(() => held.length === 1)
    let closed = false
    const closing = pool.close().then(() => {
      closed = true
    })
    expect(() => pool.dispatch(get('/3'), recorder().handler)).toThrow(
      expect.objectContaining({ code: 'UND_ERR_CLOSED' }),
    )
    held[0]?.end('one')
    await eventually(() => held.length === 2)
    expect(closed).toBe(false)
    held[1]?.end('two')
    await closing
    expect((await running.outcome).body.toString()).toBe('one')
    expect((await queued.outcome).body.toString()).toBe('two')
    expect(pool.connected).toBe(0)
    await eventually(() => up.sockets.every((s) => s.destroyed))
  })

  it('destroy() fails running and queued requests and closes every socket', async () => {
    const up = await httpUpstream(() => {})
    const pool = newPool(up.url, { connections: 1 })
    const running = recorder()
    const queued = recorder()
    pool.dispatch(get('/1'), running.handler)
    pool.dispatch(get('/2'), queued.handler)
    await eventually(() => up.seen.length === 1)
    await pool.destroy()
    for (const rec of [running, queued]) {
      const outcome = await rec.outcome
      expect(outcome.kind).toBe('error')
      expect(outcome.error?.code).toBe('UND_ERR_DESTROYED')
    }
    expect((await running.outcome).connected).toBe(true)
    expect((await queued.outcome).connected).toBe(false)
    expect(pool.connected + pool.busy + pool.pending).toBe(0)
    expect(() => pool.dispatch(get(), recorder().handler)).toThrow(
      expect.objectContaining({ code: 'UND_ERR_DESTROYED' }),
    )
    await eventually(() => up.sockets.every((s) => s.destroyed))
    await pool.close()
  })

  it('closes idle sockets after keepAliveTimeoutMs on its clock', async () => {
    const up = await httpUpstream(undefined, (server) => {
      server.keepAliveTimeout = 60_000
    })
    const clock = new ManualClock(1_000)
    const pool = newPool(up.url, { clock, keepAliveTimeoutMs: 4_000 })
    await send(pool)
    expect(pool.connected).toBe(1)
    await clock.advance(3_999)
    expect(pool.connected).toBe(1)
    // Used again in time: its idle time starts over.
    await send(pool)
    await clock.advance(3_999)
    expect(pool.connected).toBe(1)
    await clock.advance(1)
    expect(pool.connected).toBe(0)
    await eventually(() => up.sockets[0]?.destroyed === true)
    expect(clock.pendingTimers).toBe(0)
  })

  it("closes idle sockets 1 s before the server's Keep-Alive timeout, and does not reuse at 1 s", async () => {
    let hint = 'timeout=3'
    const up = await rawUpstream((socket) =>
      socket.write(`HTTP/1.1 200 OK\r\nKeep-Alive: max=100, ${hint}\r\nContent-Length: 0\r\n\r\n`),
    )
    const clock = new ManualClock(1_000)
    const pool = newPool(up.url, { clock, keepAliveTimeoutMs: 4_000 })
    await send(pool)
    await clock.advance(1_999)
    expect(pool.connected).toBe(1)
    await clock.advance(1)
    expect(pool.connected).toBe(0)
    hint = 'TIMEOUT = 1'
    await send(pool)
    expect(pool.connected).toBe(0)
    hint = 'timeout=60'
    await send(pool)
    await clock.advance(3_999)
    expect(pool.connected).toBe(1)
    await clock.advance(1)
    expect(pool.connected).toBe(0)
  })
})
