// A guarded HEAD request (HEAD is not guarded by default; `methods` can opt in). Its response
// carries the headers a GET would, Content-Length included: the length of the body it does not
// send (RFC 9110 section 9.3.2), on the first execution and on every replay. Each framework
// handles HEAD in its own way: Express's res.send ends without a body, Fastify's HEAD route
// sends the GET's headers, and a node:http
// handler writes its body, which node does not send, or declares its length and writes none.
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import express from 'express'
import Fastify from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  expressIdempotency,
  fastifyIdempotency,
  type Idempotency,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer, send } from './servers.js'

const payload = '{"status":"charged"}'

const targets: { name: string; start(idempotency: Idempotency): Promise<Server> }[] = [
  {
    name: 'node:http',
    start: async (idempotency) =>
      createServer(
        idempotentHandler({ idempotency }, (_req, res) => {
          res.writeHead(200, { 'content-type': 'application/json' }).end(payload)
        }),
      ),
  },
  {
    // Node's idiom for a HEAD: the length declared, no body written.
    name: 'node:http, headers only',
    start: async (idempotency) =>
      createServer(
        idempotentHandler({ idempotency }, (_req, res) => {
          res
            .writeHead(200, {
              'content-type': 'application/json',
              'content-length': Buffer.byteLength(payload),
            })
            .end()
        }),
      ),
  },
  {
    name: 'express',
    async start(idempotency) {
      const app = express()
      app.get('/', expressIdempotency(idempotency), (_req, res) => {
        res.type('application/json').send(payload)
      })
      return createServer(app)
    },
  },
  {
    name: 'fastify',
    async start(idempotency) {
      const app = Fastify()
      await app.register(fastifyIdempotency(idempotency))
      app.get('/', async (_request, reply) => {
        reply.type('application/json').send(payload)
      })
      await app.ready()
      return app.server
    },
  },
]

describe.each(targets)('$name adapter, a guarded HEAD request', (target) => {
  let listening: Listening | undefined

  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it("sends the GET's Content-Length and no body, first and on replay", async () => {
    const idempotency = createIdempotency({
      store: createMemoryIdempotencyStore(),
      methods: ['HEAD'],
    })
    listening = await listenServer(await target.start(idempotency))
    const key = randomUUID()
    const first = await send(`${listening.url}/`, { method: 'HEAD', key })
    expect(first.status).toBe(200)
    expect(first.headers['content-length']).toBe(String(Buffer.byteLength(payload)))
    expect(first.headers['content-type']).toMatch(/^application\/json/)
    expect(first.body.byteLength).toBe(0)

    const replay = await send(`${listening.url}/`, { method: 'HEAD', key })
    expect(replay.status).toBe(200)
    expect(replay.headers['idempotent-replayed']).toBe('true')
    expect(replay.headers['content-length']).toBe(String(Buffer.byteLength(payload)))
    expect(replay.body.byteLength).toBe(0)
  })
})
