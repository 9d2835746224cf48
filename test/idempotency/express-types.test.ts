// The documented Express pattern must compile under strict settings (`npm test` typechecks this
// file with the rest of test/). Express infers a route's request type from all its handlers;
// the middleware's parameter once declared `body?: unknown`, which made `req.body` unknown in
// the handler after it (TS18046 on `req.body.amount`), where without the middleware it is any.
import { createServer } from 'node:http'
import express, { type Express } from 'express'
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  expressIdempotency,
  type Idempotency,
  idempotencyContextOf,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer, send } from './servers.js'

// The TSDoc example of expressIdempotency (and docs/idempotency.md's table row), as written.
function documentedRoute(app: Express, idempotency: Idempotency): void {
  app.post('/charges', express.json(), expressIdempotency(idempotency), async (req, res) => {
    const ctx = idempotencyContextOf(req)!
    await ctx.tx.execute('INSERT INTO charges (id, amount) VALUES ($1, $2)', [
      ctx.key,
      req.body.amount,
    ])
    res.status(201).json({ charged: req.body.amount })
  })
}

describe('express: types of a route behind expressIdempotency', () => {
  let listening: Listening | undefined

  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('leaves req.body as Express types it without the middleware', async () => {
    const idempotency = createIdempotency({ store: createMemoryIdempotencyStore() })
    const app = express()
    documentedRoute(app, idempotency)
    app.post('/c', express.json(), expressIdempotency(idempotency), async (req, res) => {
      expectTypeOf(req.body).toBeAny()
      res.json(req.body.amount)
    })
    app.post('/plain', express.json(), async (req, res) => {
      expectTypeOf(req.body).toBeAny()
      res.json(req.body.amount)
    })
    listening = await listenServer(createServer(app))
    const reply = await send(`${listening.url}/c`, { key: 'k-1', body: '{"amount":12}' })
    expect(reply.status).toBe(200)
    expect(reply.text).toBe('12')
  })
})
