// A handler still running when its lease runs out, under each HTTP adapter. Its ctx.tx was
// rolled back then, but the client heard nothing until the handler ended (for one that never
// ends, until the server's own request timeout, 5 minutes by default) while a retry could
// already take the key over. The client is now answered at the lease's end: the lease-lost 409
// problem, or a destroyed connection when the response had already started past the adapter.
// Real SQLite, real sockets; the lease runs out on a ManualClock.
import { randomUUID } from 'node:crypto'
import { createServer, type Server, ServerResponse } from 'node:http'
import { Readable } from 'node:stream'
import { createAdaptorServer } from '@hono/node-server'
import express from 'express'
import Fastify from 'fastify'
import { Hono } from 'hono'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  expressIdempotency,
  fastifyIdempotency,
  honoIdempotency,
  type Idempotency,
  type IdempotencyContext,
  idempotencyContextOf,
  idempotencyTable,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { until } from '../support/until.js'
import { sqliteDb, type TestDb } from './databases.js'
import { agent, gate, type Listening, listenServer, send } from './servers.js'

/** A handler's outcome that sends a 200 head past the adapter, then never ends the response. */
const headPastAdapter = Symbol('head past the adapter')

/** What a handler does with its context: the text of a 201, a never-ending body, or the head. */
type Work = (ctx: IdempotencyContext) => Promise<string | Readable | typeof headPastAdapter>

interface Adapter {
  readonly name: string
  /** Whether a stale handler's later failure reaches the framework's error handling. */
  readonly reportsStaleFailure: boolean
  start(idempotency: Idempotency, work: Work, errors: unknown[]): Promise<Server>
}

// Sends the head on the socket as a layer holding node's own writeHead would.
function sendHeadPast(res: ServerResponse): Promise<never> {
  // Through the prototype: the adapters refuse (Fastify) or capture these on the response.
  ServerResponse.prototype.writeHead.call(res, 200, { 'content-type': 'text/plain' })
  ServerResponse.prototype.flushHeaders.call(res)
  return new Promise<never>(() => {})
}

// node:http and Express write the same way to their ServerResponse.
async function writeOut(res: ServerResponse, out: Awaited<ReturnType<Work>>): Promise<void> {
  if (out === headPastAdapter) await sendHeadPast(res)
  else if (typeof out === 'string') res.writeHead(201, { 'content-type': 'text/plain' }).end(out)
  else out.pipe(res.writeHead(201, { 'content-type': 'text/plain' }))
}

const adapters: Adapter[] = [
  {
    name: 'node:http',
    reportsStaleFailure: false,
    async start(idempotency, work, errors) {
      return createServer(
        idempotentHandler(
          { idempotency, onError: (e) => errors.push(e) },
          async (_req, res, { idempotency: ctx }) => writeOut(res, await work(ctx!)),
        ),
      )
    },
  },
  {
    name: 'express',
    reportsStaleFailure: true,
    async start(idempotency, work, errors) {
      const app = express()
      app.post(
        '/',
        expressIdempotency(idempotency, { onError: (e) => errors.push(e) }),
        async (req, res) => {
          const out = await work(idempotencyContextOf(req)!)
          // res.send sets headers (Content-Type, ETag) before it ends the response.
          if (typeof out === 'string') res.status(201).type('text/plain').send(out)
          else await writeOut(res, out)
        },
      )
      app.use(
        (
          error: Error,
          _req: express.Request,
          res: express.Response,
          next: express.NextFunction,
        ) => {
          errors.push(error)
          if (res.headersSent) next(error)
          else res.status(500).send('failed')
        },
      )
      return createServer(app)
    },
  },
  {
    name: 'fastify',
    reportsStaleFailure: false,
    async start(idempotency, work, errors) {
      const app = Fastify()
      await app.register(fastifyIdempotency(idempotency))
      app.setErrorHandler((error, _request, reply) => {
        errors.push(error)
        return reply.code(500).send('failed')
      })
      app.post('/', async (request, reply) => {
        const out = await work(idempotencyContextOf(request)!)
        if (out === headPastAdapter) return sendHeadPast(reply.raw)
        return reply.code(201).type('text/plain').send(out)
      })
      await app.ready()
      return app.server
    },
  },
  {
    name: 'hono',
    reportsStaleFailure: true,
    async start(idempotency, work, errors) {
      const app = new Hono()
      app.post('/', honoIdempotency(idempotency), async (c) => {
        const out = await work(idempotencyContextOf(c)!)
        if (out === headPastAdapter)
          throw new Error('a Hono handler cannot write past its Response')
        if (typeof out === 'string') return c.text(out, 201)
        return new Response(Readable.toWeb(out) as ReadableStream<Uint8Array>, { status: 201 })
      })
      app.onError((error, c) => {
        errors.push(error)
        return c.text('failed', 500)
      })
      return createAdaptorServer({ fetch: app.fetch }) as Server
    },
  },
]

describe.each(adapters)('$name: a handler still running when its lease runs out', (adapter) => {
  let testDb: TestDb
  let listening: Listening | undefined
  const errors: unknown[] = []

  beforeAll(async () => {
    testDb = await sqliteDb.open(`idem_lease_${adapter.name}`)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
    errors.length = 0
  })

  async function start(work: Work) {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({
      store: testDb.db,
      clock,
      leaseMs: 10_000,
      retryAfterMs: 3_000,
    })
    listening = await listenServer(await adapter.start(idempotency, work, errors))
    return { clock, url: `${listening.url}/` }
  }

  async function stateOf(key: string): Promise<string | undefined> {
    const rows = await testDb.db.query<{ state: string }>(
      `SELECT state FROM ${idempotencyTable} WHERE idem_key = $1`,
      [key],
    )
    return rows[0]?.state
  }

  it('answers the waiting client 409 lease-lost at once, and a retry takes the key over', async () => {
    const hold = gate()
    const attempts: number[] = []
    const { clock, url } = await start(async (ctx) => {
      attempts.push(ctx.attempt)
      if (ctx.attempt === 1) await hold.promise // hangs past its lease
      return `attempt ${ctx.attempt}`
    })
    const key = randomUUID()
    let answered = false
    const first = send(url, { key, body: '{}' }).finally(() => {
      answered = true
    })
    await until(() => attempts.length === 1, 'the handler to start')
    await clock.advance(9_999)
    expect(answered).toBe(false)
    await clock.advance(1)
    await until(() => answered, 'the answer at the lease end', 5_000)
    const lost = await first
    expect(lost.status).toBe(409)
    expect(lost.headers['content-type']).toBe('application/problem+json')
    expect(lost.headers['retry-after']).toBe('3')
    expect(JSON.parse(lost.text)).toMatchObject({
      type: expect.stringMatching(/idempotency-key-in-progress$/),
      status: 409,
      detail: expect.stringMatching(/expired/),
    })
    // Express hands the stale handler's later errors to its error handling, which destroys the
    // socket when headers were sent: the connection must not carry the retry by then.
    if (adapter.name === 'express') expect(lost.headers.connection).toBe('close')
    // The in-progress record stays (with any committed phases) for the retry to take over.
    expect(await stateOf(key)).toBe('in_progress')
    const retry = await send(url, { key, body: '{}' })
    expect(retry.status).toBe(201)
    expect(retry.text).toBe('attempt 2')

    // The stale handler ends its response later: nothing more reaches anyone.
    hold.open()
    await until(async () => (await send(url, { key, body: '{}' })).text === 'attempt 2', 'replay')
    expect(attempts).toEqual([1, 2])
    expect(errors).toEqual([])
  })

  it("answers 409 though the stale handler's statement on ctx.tx fails later", async () => {
    const hold = gate()
    let failed: unknown
    const { clock, url } = await start(async (ctx) => {
      await hold.promise
      try {
        await ctx.tx.execute('SELECT 1')
      } catch (error) {
        failed = error
        throw error
      }
      return 'never'
    })
    const key = randomUUID()
    let answered = false
    const first = send(url, { key, body: '{}' }).finally(() => {
      answered = true
    })
    await until(async () => (await stateOf(key)) === 'in_progress', 'the claim')
    await clock.advance(10_000)
    await until(() => answered, 'the answer at the lease end', 5_000)
    expect((await first).status).toBe(409)
    hold.open()
    await until(() => failed !== undefined, 'the stale statement to fail')
    expect(failed).toMatchObject({ code: 'IDEMPOTENCY_IN_PROGRESS', reason: 'lease-lost' })
    await new Promise((resolve) => setImmediate(resolve))
    // node:http keeps it from onError (the client was answered); Fastify only logs it. Express
    // and Hono hand it to their error handling, whose answer goes nowhere.
    expect(errors).toEqual(adapter.reportsStaleFailure ? [failed] : [])
    // The retry is served and takes the key over.
    const retry = await send(url, { key, body: '{}' })
    expect(retry.status).toBe(201)
    expect(retry.text).toBe('never')
  })

  it('answers 409 at the lease end when the response body never ends', async () => {
    let streaming: Readable | undefined
    const { clock, url } = await start(async () => {
      streaming = new Readable({ read() {} })
      streaming.push('partial')
      return streaming
    })
    const key = randomUUID()
    const answer = send(url, { key, body: '{}' })
    await until(() => streaming !== undefined, 'the handler to stream')
    await clock.advance(10_000)
    // Nothing of the body went out before it was recorded: the answer is the 409 problem.
    const lost = await answer
    expect(lost.status).toBe(409)
    expect(JSON.parse(lost.text)).toMatchObject({
      status: 409,
      detail: expect.stringMatching(/expired/),
    })
    expect(await stateOf(key)).toBe('in_progress')
    // Fastify and Hono read the body themselves to record it: they give the stream up.
    const piped = adapter.name === 'node:http' || adapter.name === 'express'
    if (!piped) await until(() => streaming!.destroyed, 'the stream to end')
  })

  it.skipIf(adapter.name === 'hono')(
    'destroys the connection when the handler had already sent its head',
    async () => {
      let started = false
      const { clock, url } = await start(async () => {
        started = true
        return headPastAdapter
      })
      const key = randomUUID()
      const response = await request(url, {
        method: 'POST',
        headers: { 'idempotency-key': key, 'content-type': 'application/json' },
        body: '{}',
        dispatcher: agent,
      })
      expect(started).toBe(true)
      expect(response.statusCode).toBe(200)
      let failure: unknown
      const reading = response.body.text().catch((error: unknown) => {
        failure = error
      })
      await clock.advance(10_000)
      await until(() => failure !== undefined, 'the connection to be destroyed', 5_000)
      await reading
      expect(failure).toBeInstanceOf(Error)
      expect(await stateOf(key)).toBe('in_progress')
      expect(errors).toEqual([])
    },
  )
})
