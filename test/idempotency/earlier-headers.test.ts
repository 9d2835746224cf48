// Headers that a layer before the adapter set on the response (CORS, a request id) go out with
// every answer the adapter gives without running the handler: replays, problems (400, 409, 422)
// and 413. A browser client retrying a POST reads a replay only with its CORS headers.
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { createAdaptorServer } from '@hono/node-server'
import express from 'express'
import Fastify from 'fastify'
import { Hono } from 'hono'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  expressIdempotency,
  fastifyIdempotency,
  honoIdempotency,
  type Idempotency,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer, send } from './servers.js'

const origin = 'https://app.example'

interface Target {
  readonly name: string
  start(idempotency: Idempotency): Promise<Server>
}

const targets: Target[] = [
  {
    name: 'node:http',
    async start(idempotency) {
      const guarded = idempotentHandler(
        { idempotency, maxBodyBytes: 64, onError: () => {} },
        (_req, res) => {
          res.writeHead(201, { 'content-type': 'application/json' }).end('{"ok":true}')
        },
      )
      return createServer((req, res) => {
        res.setHeader('access-control-allow-origin', origin)
        guarded(req, res)
      })
    },
  },
  {
    name: 'express',
    async start(idempotency) {
      const app = express()
      app.use((_req, res, next) => {
        res.setHeader('access-control-allow-origin', origin)
        next()
      })
      app.use(expressIdempotency(idempotency, { maxBodyBytes: 64, onError: () => {} }))
      app.post('/charges', (_req, res) => {
        res.status(201).json({ ok: true })
      })
      return createServer(app)
    },
  },
  {
    name: 'fastify',
    async start(idempotency) {
      const app = Fastify({ bodyLimit: 64 })
      app.addHook('onRequest', async (_request, reply) => {
        reply.header('access-control-allow-origin', origin)
      })
      await app.register(fastifyIdempotency(idempotency))
      app.post('/charges', async (_request, reply) => reply.code(201).send({ ok: true }))
      await app.ready()
      return app.server
    },
  },
  {
    name: 'hono',
    async start(idempotency) {
      const app = new Hono()
      app.use('*', async (c, next) => {
        c.header('access-control-allow-origin', origin)
        await next()
      })
      app.post('/charges', honoIdempotency(idempotency, { maxBodyBytes: 64 }), (c) =>
        c.json({ ok: true }, 201),
      )
      return createAdaptorServer({ fetch: app.fetch }) as Server
    },
  },
]

describe.each(targets)('$name adapter', (target) => {
  let listening: Listening | undefined

  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  async function start(): Promise<string> {
    const idempotency = createIdempotency({ store: createMemoryIdempotencyStore() })
    listening = await listenServer(await target.start(idempotency))
    return `${listening.url}/charges`
  }

  it('keeps the headers of earlier layers on a replay', async () => {
    const url = await start()
    const key = randomUUID()
    const first = await send(url, { key, body: '{"a":1}' })
    const replay = await send(url, { key, body: '{"a":1}' })
    expect(first.status).toBe(201)
    expect(first.headers['access-control-allow-origin']).toBe(origin)
    expect(replay.status).toBe(201)
    expect(replay.headers['idempotent-replayed']).toBe('true')
    expect(replay.text).toBe(first.text)
    expect(replay.headers['access-control-allow-origin']).toBe(origin)
  })

  it('keeps the headers of earlier layers on problem responses', async () => {
    const url = await start()
    const missing = await send(url, { body: '{"a":1}' })
    expect(missing.status).toBe(400)
    expect(missing.headers['content-type']).toBe('application/problem+json')
    expect(missing.headers['access-control-allow-origin']).toBe(origin)
    const key = randomUUID()
    await send(url, { key, body: '{"a":1}' })
    const mismatch = await send(url, { key, body: '{"a":2}' })
    expect(mismatch.status).toBe(422)
    expect(mismatch.headers['access-control-allow-origin']).toBe(origin)
  })
})

describe.each(targets.filter((t) => t.name !== 'fastify'))('$name adapter, 413', (target) => {
  it('keeps the headers of earlier layers and closes the connection', async () => {
    const idempotency = createIdempotency({
      store: createMemoryIdempotencyStore(),
      problemTypeBase: 'https://api.example/problems/',
    })
    const listening = await listenServer(await target.start(idempotency))
    try {
      const big = JSON.stringify({ pad: 'x'.repeat(100) })
      const reply = await send(`${listening.url}/charges`, { key: randomUUID(), body: big })
      expect(reply.status).toBe(413)
      expect(reply.headers['access-control-allow-origin']).toBe(origin)
      // The rest of the body is not read: the connection cannot carry another request.
      expect(reply.headers.connection).toBe('close')
      // A problem naming the limit broken, as every other refusal of the middleware is.
      expect(reply.headers['content-type']).toBe('application/problem+json')
      expect(JSON.parse(reply.text)).toMatchObject({
        type: 'https://api.example/problems/request-body-too-large',
        status: 413,
        code: 'IDEMPOTENCY_BODY_TOO_LARGE',
        detail: expect.stringMatching(/maxBodyBytes/),
      })
    } finally {
      await listening.close()
    }
  })
})

describe.each(targets)('$name adapter, a store failing before the handler runs', (target) => {
  it('keeps the headers of earlier layers on its 500', async () => {
    const store = createMemoryIdempotencyStore()
    // The claim fails (a database down): begin() rejects before the handler could run.
    const failing = Object.assign(Object.create(store) as typeof store, {
      claim: () => Promise.reject(new Error('store down')),
    })
    const idempotency = createIdempotency({ store: failing })
    const listening = await listenServer(await target.start(idempotency))
    try {
      const reply = await send(`${listening.url}/charges`, { key: randomUUID(), body: '{"a":1}' })
      expect(reply.status).toBe(500)
      expect(reply.headers['access-control-allow-origin']).toBe(origin)
    } finally {
      await listening.close()
    }
  })
})
