// An Express handler that starts its body (res.write) and then fails: Express routes the error to
// its error handler, which renders it on the same response (res.status(422).json(...)). On a
// plain server that response could not exist: node sends status and headers with the first body
// chunk, and a later setHeader throws ERR_HTTP_HEADERS_SENT. Under the capture it was recorded as
// the partial body and the error's JSON in one response, and replayed for the key's retention.
// The adapter now fails such an execution as node:http does a handler that throws after a
// partial write: 500 problem, ctx.tx rolled back, key released, onError told.
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import express, { type NextFunction, type Request, type Response } from 'express'
import { describe, expect, it } from 'vitest'
import {
  createIdempotency,
  expressIdempotency,
  idempotencyContextOf,
} from '../../src/idempotency/index.js'
import { countRows, dbTargets, insertCharge } from './databases.js'
import { listenServer, send } from './servers.js'
import { useServerSuite } from './suite.js'

describe.each(dbTargets)('express: a handler that fails after res.write, on $dialect', (db) => {
  const suite = useServerSuite(db, 'idem_express_write_fail')

  function errorHandler(
    error: { status?: number; message: string },
    _req: Request,
    res: Response,
    _next: NextFunction,
  ) {
    res.status(error.status ?? 500).json({ error: error.message })
  }

  it('answers the 500 problem, records nothing, and runs the retry again', async () => {
    const idempotency = createIdempotency({ store: suite.db })
    const errors: unknown[] = []
    let runs = 0
    const app = express()
    app.use((_req, res, next) => {
      res.setHeader('access-control-allow-origin', '*')
      next()
    })
    app.post(
      '/export',
      expressIdempotency(idempotency, { onError: (error) => errors.push(error) }),
      async (req, res) => {
        runs++
        const ctx = idempotencyContextOf(req)!
        await ctx.tx.execute(insertCharge, [ctx.key, 'export', 10])
        res.type('text/csv')
        res.write('id,amount\n')
        res.write('1,10\n')
        throw Object.assign(new Error('row 2 invalid'), { status: 422 })
      },
    )
    app.use(errorHandler)
    const listening = suite.keep(await listenServer(createServer(app)))
    const key = randomUUID()

    const first = await send(`${listening.url}/export`, { key, body: '{}' })
    expect(first.status).toBe(500)
    expect(first.headers['content-type']).toBe('application/problem+json')
    expect(first.text).not.toContain('id,amount')
    expect(first.text).not.toContain('row 2 invalid')
    // The earlier layer's header goes out with the answer that replaces the handler's.
    expect(first.headers['access-control-allow-origin']).toBe('*')
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatchObject({ code: 'ERR_HTTP_HEADERS_SENT' })
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
    expect(await countRows(suite.db, 'charges', `WHERE tenant = 'export'`)).toBe(0)

    const retry = await send(`${listening.url}/export`, { key, body: '{}' })
    expect(retry.status).toBe(500)
    expect(retry.headers['idempotent-replayed']).toBeUndefined()
    expect(runs).toBe(2)
    expect(errors).toHaveLength(2)
  })

  it("fails the same way under Express's default error handler", async () => {
    const idempotency = createIdempotency({ store: suite.db })
    const errors: unknown[] = []
    const app = express()
    app.post(
      '/export',
      expressIdempotency(idempotency, { onError: (error) => errors.push(error) }),
      (_req, res) => {
        res.write('partial')
        throw new Error('broken')
      },
    )
    const listening = suite.keep(await listenServer(createServer(app)))
    const key = randomUUID()
    const reply = await send(`${listening.url}/export`, { key, body: '{}' })
    expect(reply.status).toBe(500)
    expect(reply.headers['content-type']).toBe('application/problem+json')
    expect(reply.text).not.toContain('partial')
    expect(errors).toHaveLength(1)
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
  })

  it('still records a streamed response (write, write, end) and replays it byte for byte', async () => {
    const idempotency = createIdempotency({ store: suite.db })
    const errors: unknown[] = []
    let runs = 0
    const app = express()
    app.post(
      '/export',
      expressIdempotency(idempotency, { onError: (error) => errors.push(error) }),
      (_req, res) => {
        runs++
        res.status(201).type('text/csv')
        res.setHeader('x-rows', ['1', '2'])
        res.write('id,amount\n')
        res.write(Buffer.from('1,10\n'))
        res.end('2,\u00e9\n', 'utf8')
      },
    )
    const listening = suite.keep(await listenServer(createServer(app)))
    const key = randomUUID()
    const first = await send(`${listening.url}/export`, { key, body: '{}' })
    expect(first.status).toBe(201)
    expect(first.text).toBe('id,amount\n1,10\n2,\u00e9\n')
    expect(first.headers['content-type']).toBe('text/csv; charset=utf-8')
    expect(first.headers['x-rows']).toBe('1, 2')
    const second = await send(`${listening.url}/export`, { key, body: '{}' })
    expect(second.status).toBe(201)
    expect(second.headers['idempotent-replayed']).toBe('true')
    expect(second.body.equals(first.body)).toBe(true)
    expect(second.headers['content-type']).toBe('text/csv; charset=utf-8')
    expect(runs).toBe(1)
    expect(errors).toEqual([])
  })
})
