// An adapter's own `scope` option that returns no scope (a tenant missing from the request, as
// `req.user?.tenantId` gives) must fail the request (500, INVALID_OPTION naming scope), as the
// docs promise, never fall back silently to the core's credential scope: requests without a
// credential would all share the scope 'anonymous', and one tenant would be replayed another
// tenant's response for the same key.
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:http'
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
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { sqliteDb, type TestDb } from './databases.js'
import { type Listening, listenServer, send } from './servers.js'

type Scope = () => string

/** Starts an app whose adapter's scope is `scope`; errors go to `errors`. */
const adapters: Record<
  string,
  (idempotency: Idempotency, scope: Scope, errors: unknown[], runs: () => void) => Promise<Server>
> = {
  'node:http': async (idempotency, scope, errors, ran) =>
    createServer(
      idempotentHandler(
        { idempotency, scope, onError: (error) => errors.push(error) },
        async (_req, res) => {
          ran()
          res.writeHead(201).end('ok')
        },
      ),
    ),
  express: async (idempotency, scope, errors, ran) => {
    const app = express()
    app.use(express.json())
    app.post('/', expressIdempotency(idempotency, { scope }), (_req, res) => {
      ran()
      res.status(201).send('ok')
    })
    app.use(
      (error: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
        errors.push(error)
        res.status(500).send('failed')
      },
    )
    return createServer(app)
  },
  fastify: async (idempotency, scope, errors, ran) => {
    const app = Fastify()
    app.setErrorHandler((error, _request, reply) => {
      errors.push(error)
      return reply.code(500).send('failed')
    })
    await app.register(fastifyIdempotency(idempotency, { scope }))
    app.post('/', async (_request, reply) => {
      ran()
      return reply.code(201).send('ok')
    })
    await app.ready()
    return app.server
  },
  hono: async (idempotency, scope, errors, ran) => {
    const app = new Hono()
    app.post('/', honoIdempotency(idempotency, { scope }), (c) => {
      ran()
      return c.text('ok', 201)
    })
    app.onError((error, c) => {
      errors.push(error)
      return c.text('failed', 500)
    })
    return createAdaptorServer({ fetch: app.fetch }) as Server
  },
}

describe.each(Object.keys(adapters))('%s: an adapter scope that returns no scope', (name) => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await sqliteDb.open(`idem_adapter_scope_${name.replace(':', '_')}`)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('fails the request with INVALID_OPTION naming scope, before the key is stored', async () => {
    for (const missing of [undefined, null]) {
      const idempotency = createIdempotency({ store: testDb.db })
      const errors: unknown[] = []
      let runs = 0
      listening = await listenServer(
        await adapters[name]!(
          idempotency,
          () => missing as unknown as string,
          errors,
          () => {
            runs++
          },
        ),
      )
      const key = randomUUID()
      const reply = await send(`${listening.url}/`, { key, body: '{}' })
      expect(reply.status).toBe(500)
      expect(runs).toBe(0)
      expect(errors).toMatchObject([{ code: 'INVALID_OPTION', option: 'scope' }])
      expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
      await listening.close()
      listening = undefined
    }
  })
})
