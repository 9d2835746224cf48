// Each framework adapter on a real server (127.0.0.1:0), over real SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
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
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { countRows, createChargesTable, dbTargets, type TestDb } from './databases.js'
import { gate, type Listening, listenServer, type Reply, send } from './servers.js'

/** What every app does for POST /charges, whatever the framework. */
interface Behaviour {
  /** Awaited before the business write. */
  hold: () => Promise<void>
  runs: number
  contexts: IdempotencyContext[]
}

/**
 * The shared handler body: writes one charge in ctx.tx and answers 201 JSON; amount 503 answers
 * 503; a negative amount throws after the write (the framework renders a 500).
 */
async function charge(
  ctx: IdempotencyContext,
  body: { amount: number },
  behaviour: Behaviour,
): Promise<{ status: number; json: unknown }> {
  behaviour.runs++
  behaviour.contexts.push(ctx)
  await behaviour.hold()
  const id = randomUUID()
  await ctx.tx.execute('INSERT INTO charges (id, tenant, amount) VALUES ($1, $2, $3)', [
    id,
    ctx.scope,
    body.amount,
  ])
  if (body.amount < 0) throw new Error('refused after the business write')
  if (body.amount === 503) return { status: 503, json: { error: 'unavailable' } }
  if (body.amount === 204) return { status: 204, json: undefined }
  return { status: 201, json: { id, amount: body.amount } }
}

interface AdapterTarget {
  readonly name: string
  start(idempotency: Idempotency, behaviour: Behaviour): Promise<Server>
}

const adapters: AdapterTarget[] = [
  {
    name: 'node:http',
    async start(idempotency, behaviour) {
      return createServer(
        idempotentHandler(
          { idempotency, onError: () => {} },
          async (req, res, { body, idempotency: ctx }) => {
            if (req.method === 'GET') {
              res
                .writeHead(200, { 'content-type': 'text/plain' })
                .end(`guarded=${ctx !== undefined}`)
              return
            }
            expect(idempotencyContextOf(req)).toBe(ctx)
            const out = await charge(ctx!, JSON.parse(body.toString('utf8')), behaviour)
            if (out.status === 204) {
              res.writeHead(204).end()
              return
            }
            res.writeHead(out.status, { 'content-type': 'application/json' })
            res.end(JSON.stringify(out.json))
          },
        ),
      )
    },
  },
  {
    name: 'express',
    async start(idempotency, behaviour) {
      const app = express()
      app.use(express.json())
      app.use(expressIdempotency(idempotency))
      app.get('/charges', (req, res) => {
        res.type('text/plain').send(`guarded=${idempotencyContextOf(req) !== undefined}`)
      })
      app.post('/charges', async (req, res) => {
        const ctx = idempotencyContextOf(req)!
        expect(res.locals.idempotency).toBe(ctx)
        const out = await charge(ctx, req.body, behaviour)
        if (out.status === 204) res.status(204).end()
        else res.status(out.status).json(out.json)
      })
      // Keep Express from logging the deliberate failures.
      app.use(
        (
          error: Error,
          _req: express.Request,
          res: express.Response,
          _next: express.NextFunction,
        ) => {
          res.status(500).type('text/plain').send(`failed: ${error.message}`)
        },
      )
      return createServer(app)
    },
  },
  {
    name: 'fastify',
    async start(idempotency, behaviour) {
      const app = Fastify()
      await app.register(fastifyIdempotency(idempotency))
      app.get(
        '/charges',
        async (request) => `guarded=${idempotencyContextOf(request) !== undefined}`,
      )
      app.post('/charges', async (request, reply) => {
        const out = await charge(
          idempotencyContextOf(request)!,
          request.body as { amount: number },
          behaviour,
        )
        return out.status === 204 ? reply.code(204).send() : reply.code(out.status).send(out.json)
      })
      await app.ready()
      return app.server
    },
  },
  {
    name: 'hono',
    async start(idempotency, behaviour) {
      const app = new Hono<{ Variables: { idempotency: IdempotencyContext } }>()
      app.get('/charges', (c) => c.text(`guarded=${idempotencyContextOf(c) !== undefined}`))
      app.post('/charges', honoIdempotency(idempotency), async (c) => {
        const ctx = idempotencyContextOf(c)!
        expect(c.get('idempotency')).toBe(ctx)
        const out = await charge(ctx, await c.req.json(), behaviour)
        if (out.status === 204) return c.body(null, 204)
        return c.json(out.json, out.status as 201)
      })
      // Hono's default error handler logs; the deliberate failures need no log.
      app.onError((error, c) => c.text(`failed: ${error.message}`, 500))
      return createAdaptorServer({ fetch: app.fetch }) as Server
    },
  },
]

const cases = dbTargets.flatMap((db) => adapters.map((adapter) => ({ db, adapter })))

describe.each(cases)('$adapter.name adapter on $db.dialect', ({ db, adapter }) => {
  let testDb: TestDb
  let listening: Listening | undefined
  let behaviour: Behaviour
  let idempotency: Idempotency

  beforeAll(async () => {
    testDb = await db.open(`idem_${adapter.name.replace(/\W/g, '')}`)
    await createChargesTable(testDb.db)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  async function start(
    hold: () => Promise<void> = async () => {},
    onConcurrent: 'reject' | 'wait' = 'reject',
  ) {
    behaviour = { hold, runs: 0, contexts: [] }
    idempotency = createIdempotency({ store: testDb.db, onConcurrent })
    const server = await adapter.start(idempotency, behaviour)
    listening = await listenServer(server)
    return { url: `${listening.url}/charges`, server }
  }

  const isProblem = (reply: Reply, status: number, type: string) =>
    reply.status === status &&
    reply.headers['content-type'] === 'application/problem+json' &&
    JSON.parse(reply.text).type === `https://breakwater.dev/problems/${type}`

  it('runs the handler once and replays the response byte for byte', async () => {
    const { url } = await start()
    const key = randomUUID()
    const before = await countRows(testDb.db, 'charges')
    const first = await send(url, { key, body: '{"amount":10}' })
    const second = await send(url, { key, body: '{"amount":10}' })
    expect(first.status).toBe(201)
    expect(first.headers['idempotent-replayed']).toBeUndefined()
    expect(second.status).toBe(201)
    expect(second.headers['idempotent-replayed']).toBe('true')
    expect(second.headers['content-type']).toBe(first.headers['content-type'])
    expect(second.body.equals(first.body)).toBe(true)
    expect(JSON.parse(first.text).amount).toBe(10)
    expect(behaviour.runs).toBe(1)
    expect(behaviour.contexts[0]?.key).toBe(key)
    expect((await countRows(testDb.db, 'charges')) - before).toBe(1)
  })

  // RFC 9110 8.6: no Content-Length in a 204 (a 304 would need the 200's length). The node:http
  // and Express adapters wrote Content-Length: 0 on a 204 the handler sent without one.
  it('answers a 204 without Content-Length, first and replayed', async () => {
    const { url } = await start()
    const key = randomUUID()
    const first = await send(url, { key, body: '{"amount":204}' })
    const second = await send(url, { key, body: '{"amount":204}' })
    expect([first.status, second.status]).toEqual([204, 204])
    expect(second.headers['idempotent-replayed']).toBe('true')
    expect([first.headers['content-length'], second.headers['content-length']]).toEqual([
      undefined,
      undefined,
    ])
    expect(behaviour.runs).toBe(1)
  })

  it('answers 409 to concurrent requests while the first is in flight', async () => {
    const total = 20
    const othersAnswered = gate()
    let answered = 0
    const { url, server } = await start(() => othersAnswered.promise)
    server.on('request', (_req, res) => {
      res.once('finish', () => {
        if (++answered === total - 1) othersAnswered.open()
      })
    })
    const key = randomUUID()
    const replies = await Promise.all(
      Array.from({ length: total }, () => send(url, { key, body: '{"amount":1}' })),
    )
    expect(replies.filter((r) => r.status === 201)).toHaveLength(1)
    const conflicts = replies.filter((r) => isProblem(r, 409, 'idempotency-key-in-progress'))
    expect(conflicts).toHaveLength(total - 1)
    expect(conflicts[0]?.headers['retry-after']).toBe('1')
    expect(behaviour.runs).toBe(1)
  })

  it("in 'wait' mode answers concurrent requests with the first response", async () => {
    const total = 10
    const arrived = gate()
    let arrivals = 0
    const { url, server } = await start(() => arrived.promise, 'wait')
    server.on('request', () => {
      if (++arrivals === total) arrived.open()
    })
    const key = randomUUID()
    const replies = await Promise.all(
      Array.from({ length: total }, () => send(url, { key, body: '{"amount":2}' })),
    )
    expect(behaviour.runs).toBe(1)
    for (const reply of replies) {
      expect(reply.status).toBe(201)
      expect(reply.body.equals(replies[0]!.body)).toBe(true)
    }
    expect(replies.filter((r) => r.headers['idempotent-replayed'] === 'true')).toHaveLength(
      total - 1,
    )
  })

  it('answers 400 and 422 with problem+json without running the handler', async () => {
    const { url } = await start()
    const missing = await send(url, { body: '{"amount":1}' })
    expect(isProblem(missing, 400, 'idempotency-key-missing')).toBe(true)
    const long = await send(url, { key: 'x'.repeat(300), body: '{"amount":1}' })
    expect(isProblem(long, 400, 'idempotency-key-too-long')).toBe(true)
    const key = randomUUID()
    await send(url, { key, body: '{"amount":1}' })
    const mismatch = await send(url, { key, body: '{"amount":2}' })
    expect(isProblem(mismatch, 422, 'idempotency-key-mismatch')).toBe(true)
    expect(behaviour.runs).toBe(1)
  })

  it('answers 400 idempotency-key-repeated to a key sent on two header lines', async () => {
    const { url } = await start()
    const body = '{"amount":1}'
    for (const keys of [
      [randomUUID(), randomUUID()],
      ['same', 'same'],
      ['"a"', 'b'],
    ]) {
      const reply = await send(url, { headers: { 'idempotency-key': keys }, body })
      expect(isProblem(reply, 400, 'idempotency-key-repeated'), keys.join(' / ')).toBe(true)
      expect(JSON.parse(reply.text)).toMatchObject({
        title: 'Idempotency-Key sent more than once',
        status: 400,
        code: 'IDEMPOTENCY_KEY_INVALID',
        rule: 'repeated',
        detail: expect.stringMatching(/sent more than once/),
      })
    }
    // One line with a comma in it is a bad character, not a repeat.
    const comma = await send(url, { key: 'a,b', body })
    expect(isProblem(comma, 400, 'idempotency-key-malformed')).toBe(true)
    // One line with ", " in it: the node frameworks count the lines; Fetch's Headers (Hono) has
    // only the joined value, which reads as two lines.
    const spaced = await send(url, { key: 'a, b', body })
    const expected =
      adapter.name === 'hono' ? 'idempotency-key-repeated' : 'idempotency-key-malformed'
    expect(isProblem(spaced, 400, expected)).toBe(true)
    expect(behaviour.runs).toBe(0)
  })

  it('rolls back the write and releases the key when the handler fails or answers 5xx', async () => {
    const { url } = await start()
    const key = randomUUID()
    const before = await countRows(testDb.db, 'charges')
    const failed = await send(url, { key, body: '{"amount":-1}' })
    expect(failed.status).toBe(500)
    const unavailable = await send(url, { key, body: '{"amount":503}' })
    expect(unavailable.status).toBe(503)
    expect(await countRows(testDb.db, 'charges')).toBe(before)
    const ok = await send(url, { key, body: '{"amount":503}' })
    expect(ok.status).toBe(503)
    expect(behaviour.runs).toBe(3)
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
  })

  it('lets unguarded methods through without a key', async () => {
    const { url } = await start()
    const reply = await send(url, { method: 'GET' })
    expect(reply.status).toBe(200)
    expect(reply.text).toBe('guarded=false')
  })
})

// A handler that ends its response and then fails (an error after res.json(), a second end()):
// the client must get the response that was recorded, as it would get the response already
// sent without the middleware, never an error page rendered afterwards over a committed result.
describe.each(dbTargets)('a response ended before the handler failed, on $dialect', (db) => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await db.open('idem_after_end')
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  async function check(server: Server, idempotency: Idempotency) {
    listening = await listenServer(server)
    const key = randomUUID()
    const first = await send(`${listening.url}/charges`, { key, body: '{"amount":1}' })
    expect(first.status).toBe(201)
    expect(first.text).toBe('{"charged":1}')
    expect(await idempotency.store.get('anonymous', key)).toMatchObject({
      state: 'completed',
      result: { status: 201 },
    })
    const replay = await send(`${listening.url}/charges`, { key, body: '{"amount":1}' })
    expect(replay.status).toBe(201)
    expect(replay.body.equals(first.body)).toBe(true)
  }

  it('express: an error thrown after res.json() does not replace the recorded response', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const app = express()
    app.use(express.json())
    app.use(expressIdempotency(idempotency))
    app.post('/charges', async (_req, res) => {
      res.status(201).json({ charged: 1 })
      throw new Error('audit log down')
    })
    app.use(
      (
        _error: Error,
        _req: express.Request,
        res: express.Response,
        _next: express.NextFunction,
      ) => {
        res.status(500).type('text/plain').send('failed')
      },
    )
    await check(createServer(app), idempotency)
  })

  it('node:http: a second end() does not send the response early, without its body', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const server = createServer(
      idempotentHandler({ idempotency, onError: () => {} }, async (_req, res) => {
        res.writeHead(201, { 'content-type': 'application/json' }).end('{"charged":1}')
        res.end()
      }),
    )
    await check(server, idempotency)
  })
})

describe.each(dbTargets)('hono: a body larger than maxBodyBytes, on $dialect', (db) => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await db.open('idem_hono_limit')
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('is answered 413 before anything is stored, declared or chunked; a body within it passes', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    let runs = 0
    const app = new Hono()
    app.post('/charges', honoIdempotency(idempotency, { maxBodyBytes: 64 }), async (c) => {
      runs++
      return c.json(await c.req.json(), 201)
    })
    listening = await listenServer(createAdaptorServer({ fetch: app.fetch }) as Server)
    const url = `${listening.url}/charges`
    const big = JSON.stringify({ pad: 'x'.repeat(100) })
    const declared = await send(url, { key: 'declared', body: big })
    expect(declared.status).toBe(413)
    expect(declared.headers['content-type']).toBe('application/problem+json')
    const chunked = await request(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': 'chunked' },
      body: Readable.from([big.slice(0, 50), big.slice(50)]),
    })
    await chunked.body.dump()
    expect(chunked.statusCode).toBe(413)
    expect(runs).toBe(0)
    expect(await idempotency.store.get('anonymous', 'declared')).toBeUndefined()
    expect(await idempotency.store.get('anonymous', 'chunked')).toBeUndefined()
    const small = await request(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': 'small' },
      body: Readable.from(['{"a":', '1}']),
    })
    expect(small.statusCode).toBe(201)
    expect(await small.body.json()).toEqual({ a: 1 })
    expect(runs).toBe(1)
  })
})
