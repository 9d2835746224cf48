// A body an earlier layer already read (and did not leave in req.body) cannot be fingerprinted:
// hashing it as empty would replay a stored response to the same key sent with another body
// instead of answering 422. The adapters refuse such a request (500, IDEMPOTENCY_BODY_UNAVAILABLE
// to onError) and run nothing; a request whose framing says it has no body is still fine.
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage } from 'node:http'
import express from 'express'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  expressIdempotency,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listen, listenServer, send } from './servers.js'

// A layer that drains the request body and keeps it to itself (a logger, a signature check).
function drain(req: IncomingMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    req.on('data', () => {})
    req.on('end', resolve)
    req.on('error', reject)
  })
}

describe('a body read before the idempotency adapter', () => {
  let listening: Listening | undefined
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('node:http: is refused with 500 and reported, the handler does not run', async () => {
    const errors: unknown[] = []
    let runs = 0
    const handle = idempotentHandler(
      {
        idempotency: createIdempotency({ store: createMemoryIdempotencyStore() }),
        onError: (error) => errors.push(error),
      },
      (_req, res) => {
        runs++
        res.writeHead(201).end('made')
      },
    )
    listening = await listen((req, res) => {
      void drain(req).then(() => handle(req, res))
    })
    const key = randomUUID()
    const first = await send(listening.url, { key, body: '{"amount":1}' })
    const second = await send(listening.url, { key, body: '{"amount":2}' })
    expect([first.status, second.status]).toEqual([500, 500])
    expect(runs).toBe(0)
    expect(errors).toEqual([
      expect.objectContaining({ code: 'IDEMPOTENCY_BODY_UNAVAILABLE' }),
      expect.objectContaining({ code: 'IDEMPOTENCY_BODY_UNAVAILABLE' }),
    ])
  })

  it('node:http: a request without a body (no Content-Length, no Transfer-Encoding) still runs', async () => {
    let runs = 0
    const handle = idempotentHandler(
      { idempotency: createIdempotency({ store: createMemoryIdempotencyStore() }) },
      (_req, res) => {
        runs++
        res.writeHead(201).end('made')
      },
    )
    listening = await listen((req, res) => {
      void drain(req).then(() => handle(req, res))
    })
    const key = randomUUID()
    expect((await send(listening.url, { key })).status).toBe(201)
    expect((await send(listening.url, { key })).status).toBe(201)
    expect(runs).toBe(1)
  })

  it('express: is refused with 500 and reported, the route does not run', async () => {
    const errors: unknown[] = []
    let runs = 0
    const app = express()
    app.use((req, _res, next) => {
      drain(req).then(() => next(), next)
    })
    app.post(
      '/',
      expressIdempotency(createIdempotency({ store: createMemoryIdempotencyStore() }), {
        onError: (error) => errors.push(error),
      }),
      (_req, res) => {
        runs++
        res.status(201).send('made')
      },
    )
    app.use(
      (
        error: unknown,
        _req: express.Request,
        res: express.Response,
        _next: express.NextFunction,
      ) => {
        errors.push(error)
        res.status(500).end()
      },
    )
    listening = await listenServer(createServer(app))
    const key = randomUUID()
    const first = await send(`${listening.url}/`, { key, body: '{"amount":1}' })
    const second = await send(`${listening.url}/`, { key, body: '{"amount":2}' })
    expect([first.status, second.status]).toEqual([500, 500])
    expect(runs).toBe(0)
    expect(errors).toEqual([
      expect.objectContaining({ code: 'IDEMPOTENCY_BODY_UNAVAILABLE' }),
      expect.objectContaining({ code: 'IDEMPOTENCY_BODY_UNAVAILABLE' }),
    ])
  })
})
