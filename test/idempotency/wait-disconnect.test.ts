// A duplicate waiting ('wait' mode) for the first request's result stops waiting when its client
// disconnects, under every framework adapter: it must not poll until waitTimeoutMs for nobody.
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
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
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { gate } from '../support/gate.js'
import { until } from '../support/until.js'
import { sqliteDb, type TestDb } from './databases.js'
import { agent, type Listening, listenServer, send } from './servers.js'

type Handler = () => Promise<void>

const adapters: Record<string, (idempotency: Idempotency, hold: Handler) => Promise<Server>> = {
  express: async (idempotency, hold) => {
    const app = express()
    app.use(express.json())
    app.post('/charges', expressIdempotency(idempotency), async (_req, res) => {
      await hold()
      res.status(201).json({ ok: true })
    })
    return createServer(app)
  },
  fastify: async (idempotency, hold) => {
    const app = Fastify()
    await app.register(fastifyIdempotency(idempotency))
    app.post('/charges', async (_request, reply) => {
      await hold()
      return reply.code(201).send({ ok: true })
    })
    await app.ready()
    return app.server
  },
  hono: async (idempotency, hold) => {
    const app = new Hono()
    app.post('/charges', honoIdempotency(idempotency), async (c) => {
      await hold()
      return c.json({ ok: true }, 201)
    })
    app.onError((_error, c) => c.text('failed', 500))
    return createAdaptorServer({ fetch: app.fetch }) as Server
  },
}

describe.each(Object.keys(adapters))('%s: a waiting duplicate whose client disconnects', (name) => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await sqliteDb.open(`idem_wait_disconnect_${name}`)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('stops waiting', async () => {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({
      store: testDb.db,
      onConcurrent: 'wait',
      waitTimeoutMs: 60_000,
      clock,
    })
    const holding = gate()
    const release = gate()
    listening = await listenServer(
      await adapters[name]!(idempotency, () => {
        holding.open()
        return release.promise
      }),
    )
    const url = `${listening.url}/charges`
    const key = randomUUID()
    const first = send(url, { key, body: '{"amount":3}' })
    try {
      await holding.promise
      const leaseTimers = clock.pendingTimers
      const client = new AbortController()
      const waiting = request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
        body: '{"amount":3}',
        dispatcher: agent,
        signal: client.signal,
      }).catch((error: unknown) => error)
      await until(() => clock.pendingTimers > leaseTimers, 'the duplicate to sleep', 5_000)
      client.abort()
      await waiting
      await until(() => clock.pendingTimers === leaseTimers, 'the wait to end', 5_000)
    } finally {
      release.open()
    }
    expect((await first).status).toBe(201)
  })
})
