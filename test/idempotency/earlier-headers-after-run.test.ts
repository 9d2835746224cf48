// The answers each adapter gives in place of a handler's response after the handler ran: the
// lease-lost 409 (the lease ran out while it ran, or was taken over before its result was
// recorded) and the 500 for a result that could not be recorded. They dropped every header on
// the response, the handler's and, with them, those of the layers before the adapter (CORS, a
// request id), so a browser could not even read the 409 that tells it to retry. The handler's
// are dropped; the earlier layers' go out as they were when the adapter took over (a handler
// that overwrote one does not leak its value). Real SQLite, real sockets, a ManualClock.
import { randomUUID } from 'node:crypto'
import { createServer, type Server, type ServerResponse } from 'node:http'
import { createAdaptorServer } from '@hono/node-server'
import express from 'express'
import Fastify from 'fastify'
import { Hono } from 'hono'
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
import { gate, type Listening, listenServer, send } from './servers.js'

const origin = 'https://app.example'

/** The handler's work before it answers 201 with its own headers (and an overwritten one). */
type Work = (ctx: IdempotencyContext) => Promise<void>

interface Adapter {
  readonly name: string
  start(idempotency: Idempotency, work: Work): Promise<Server>
}

// What every handler does to the response: a header of its own, and the earlier layer's
// request id overwritten (a handler may do that; its value must not reach the error answer).
const handlerHeaders = { 'x-handler': 'set', 'x-request-id': 'from-handler' }

function earlierNode(res: ServerResponse): void {
  res.setHeader('access-control-allow-origin', origin)
  res.setHeader('x-request-id', 'from-earlier')
}

const adapters: Adapter[] = [
  {
    name: 'node:http',
    async start(idempotency, work) {
      const guarded = idempotentHandler(
        { idempotency, onError: () => {} },
        async (_req, res, { idempotency: ctx }) => {
          for (const [name, value] of Object.entries(handlerHeaders)) res.setHeader(name, value)
          await work(ctx!)
          res.writeHead(201, { 'content-type': 'text/plain' }).end('created')
        },
      )
      return createServer((req, res) => {
        earlierNode(res)
        guarded(req, res)
      })
    },
  },
  {
    name: 'express',
    async start(idempotency, work) {
      const app = express()
      app.use((_req, res, next) => {
        earlierNode(res)
        next()
      })
      app.post('/', expressIdempotency(idempotency, { onError: () => {} }), async (req, res) => {
        res.set(handlerHeaders)
        await work(idempotencyContextOf(req)!)
        res.status(201).type('text/plain').send('created')
      })
      return createServer(app)
    },
  },
  {
    name: 'fastify',
    async start(idempotency, work) {
      const app = Fastify()
      app.addHook('onRequest', async (_request, reply) => {
        // One on the reply, one on the raw response: Fastify sends both.
        reply.header('access-control-allow-origin', origin)
        reply.raw.setHeader('x-request-id', 'from-earlier')
      })
      await app.register(fastifyIdempotency(idempotency))
      app.post('/', async (request, reply) => {
        reply.headers(handlerHeaders)
        await work(idempotencyContextOf(request)!)
        return reply.code(201).type('text/plain').send('created')
      })
      await app.ready()
      return app.server
    },
  },
  {
    name: 'hono',
    async start(idempotency, work) {
      const app = new Hono()
      app.use('*', async (c, next) => {
        c.header('access-control-allow-origin', origin)
        c.header('x-request-id', 'from-earlier')
        await next()
      })
      app.post('/', honoIdempotency(idempotency), async (c) => {
        for (const [name, value] of Object.entries(handlerHeaders)) c.header(name, value)
        await work(idempotencyContextOf(c)!)
        return c.text('created', 201)
      })
      return createAdaptorServer({ fetch: app.fetch }) as Server
    },
  },
]

describe.each(adapters)('$name: error answers after the handler ran', (adapter) => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await sqliteDb.open(`idem_earlier_after_${adapter.name.replace(':', '_')}`)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  async function start(work: Work) {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({ store: testDb.db, clock, leaseMs: 10_000 })
    listening = await listenServer(await adapter.start(idempotency, work))
    return { clock, url: `${listening.url}/` }
  }

  function expectEarlierOnly(headers: Record<string, string | string[] | undefined>): void {
    expect(headers['access-control-allow-origin']).toBe(origin)
    expect(headers['x-request-id']).toBe('from-earlier')
    expect(headers['x-handler']).toBeUndefined()
  }

  it('keeps the earlier layers’ headers, not the handler’s, on the lease-lost 409', async () => {
    const hold = gate()
    let started = false
    const { clock, url } = await start(async () => {
      started = true
      await hold.promise
    })
    const answer = send(url, { key: randomUUID(), body: '{}' })
    await until(() => started, 'the handler to start')
    await clock.advance(10_000)
    const lost = await answer
    hold.open()
    expect(lost.status).toBe(409)
    expect(lost.headers['content-type']).toBe('application/problem+json')
    expectEarlierOnly(lost.headers)
  })

  it('keeps them on the 409 for a lease taken over before the result was recorded', async () => {
    const { url } = await start(async (ctx) => {
      // Another process took the expired key over: the result is fenced off at its record.
      await testDb.db.query(
        `UPDATE ${idempotencyTable} SET lease_token = 'taken-over' WHERE idem_key = $1`,
        [ctx.key],
      )
    })
    const lost = await send(url, { key: randomUUID(), body: '{}' })
    expect(lost.status).toBe(409)
    expect(lost.headers['content-type']).toBe('application/problem+json')
    expectEarlierOnly(lost.headers)
  })

  it('keeps them on the 500 for a result that cannot be recorded', async () => {
    const { url } = await start(async (ctx) => {
      ctx.deferWrite('INSERT INTO no_such_table (id) VALUES ($1)', [1])
    })
    const failed = await send(url, { key: randomUUID(), body: '{}' })
    expect(failed.status).toBe(500)
    expect(failed.text).not.toBe('created')
    expectEarlierOnly(failed.headers)
  })

  it.runIf(adapter.name === 'node:http')(
    'keeps them on the 500 for a handler that throws before ending its response',
    async () => {
      const { url } = await start(async () => {
        throw new Error('handler failed')
      })
      const failed = await send(url, { key: randomUUID(), body: '{}' })
      expect(failed.status).toBe(500)
      expectEarlierOnly(failed.headers)
    },
  )
})

describe('hono: reading the earlier headers', () => {
  it('leaves a Response the handler returns as Hono would send it', async () => {
    const testDb = await sqliteDb.open('idem_earlier_after_hono_raw')
    const app = new Hono()
    app.use('*', async (c, next) => {
      c.header('x-request-id', 'from-earlier')
      await next()
    })
    app.post('/', honoIdempotency(createIdempotency({ store: testDb.db })), () => {
      return new Response('created', { status: 201, headers: { 'x-request-id': 'from-handler' } })
    })
    const listening = await listenServer(createAdaptorServer({ fetch: app.fetch }) as Server)
    try {
      const created = await send(`${listening.url}/`, { key: randomUUID(), body: '{}' })
      expect(created.status).toBe(201)
      // Not merged over by what c.header() set: the middleware did not make Hono create c.res.
      expect(created.headers['x-request-id']).toBe('from-handler')
    } finally {
      await listening.close()
      await testDb.close()
    }
  })
})
