// Trailers under the node:http and Express adapters: a recorded response is sent whole, with a
// Content-Length, so it cannot carry trailers. Before, a handler that declared `Trailer` and
// called addTrailers had its result committed, then node's writeHead threw
// ERR_HTTP_TRAILER_INVALID: the client got a 500 and its retry the replayed 201. Such a response
// now fails the execution before the commit: 500, ctx.tx rolled back, the key released.
import { randomUUID } from 'node:crypto'
import { createServer, type ServerResponse } from 'node:http'
import express from 'express'
import { describe, expect, it } from 'vitest'
import {
  createIdempotency,
  expressIdempotency,
  idempotencyContextOf,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { sqliteDb } from './databases.js'
import { listen, listenServer, send } from './servers.js'
import { useServerSuite } from './suite.js'

const trailerResponses: Record<string, (res: ServerResponse) => void> = {
  'a Trailer header and addTrailers': (res) => {
    res.writeHead(201, { 'content-type': 'text/plain', trailer: 'x-checksum' })
    res.write('charged')
    res.addTrailers({ 'x-checksum': 'abc' })
    res.end()
  },
  'addTrailers alone': (res) => {
    res.statusCode = 201
    res.write('charged')
    res.addTrailers({ 'x-checksum': 'abc' })
    res.end()
  },
  'a Trailer header alone': (res) => {
    res.setHeader('trailer', 'x-checksum')
    res.statusCode = 201
    res.end('charged')
  },
}

const unsupported = expect.objectContaining({
  code: 'IDEMPOTENCY_RESPONSE_UNSUPPORTED',
  rule: 'trailers',
})

describe('node:http and Express: a response with trailers', () => {
  const suite = useServerSuite(sqliteDb, 'idem_node_trailers')

  const charge = (ctx: {
    tx: { execute(sql: string, params: unknown[]): Promise<unknown> }
    key: string
  }) =>
    ctx.tx.execute('INSERT INTO charges (id, tenant, amount) VALUES ($1, $2, $3)', [
      ctx.key,
      't',
      1,
    ])

  it.each(Object.keys(trailerResponses))(
    'node:http: %s fails before the commit; 500, key released, nothing written',
    async (name) => {
      const idempotency = createIdempotency({ store: suite.db })
      const errors: unknown[] = []
      let runs = 0
      const listening = suite.keep(
        await listen(
          idempotentHandler(
            { idempotency, onError: (error) => errors.push(error) },
            async (_, res, { idempotency: ctx }) => {
              runs++
              await charge(ctx!)
              trailerResponses[name]!(res)
            },
          ),
        ),
      )
      const key = randomUUID()
      for (const attempt of [1, 2]) {
        const reply = await send(`${listening.url}/`, { key, body: '{}' })
        expect(reply.status).toBe(500)
        expect(reply.headers['content-type']).toBe('application/problem+json')
        expect(reply.headers.trailer).toBeUndefined()
        expect(reply.headers['idempotent-replayed']).toBeUndefined()
        expect(runs).toBe(attempt)
      }
      expect(errors).toEqual([unsupported, unsupported])
      expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
      expect(await suite.db.query('SELECT id FROM charges WHERE id = $1', [key])).toEqual([])
    },
  )

  it('Express: a Trailer header and addTrailers fail before the commit', async () => {
    const idempotency = createIdempotency({ store: suite.db })
    const errors: unknown[] = []
    const app = express()
    app.post(
      '/',
      expressIdempotency(idempotency, { onError: (e) => errors.push(e) }),
      async (req, res) => {
        await charge(idempotencyContextOf(req)!)
        trailerResponses['a Trailer header and addTrailers']!(res)
      },
    )
    const listening = suite.keep(await listenServer(createServer(app)))
    const key = randomUUID()
    const reply = await send(`${listening.url}/`, { key, body: '{}' })
    expect(reply.status).toBe(500)
    expect(reply.headers.trailer).toBeUndefined()
    expect(errors).toEqual([unsupported])
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
    expect(await suite.db.query('SELECT id FROM charges WHERE id = $1', [key])).toEqual([])
  })
})

// The same rule for what node's writeHead checks: a reason phrase it refuses threw when the
// recorded response was written, after the commit, and the client got no answer at all.
describe('node:http: a reason phrase node refuses', () => {
  const suite = useServerSuite(sqliteDb, 'idem_node_status_message', false)

  it.each([
    ['writeHead(201, reason)', (res: ServerResponse) => res.writeHead(201, 'bad\u0001').end('x')],
    [
      'res.statusMessage',
      (res: ServerResponse) => {
        res.statusMessage = 'bad\u0001'
        res.end('x')
      },
    ],
  ])('%s throws ERR_INVALID_CHAR at the call, before the commit', async (_, write) => {
    const idempotency = createIdempotency({ store: suite.db })
    const errors: unknown[] = []
    const listening = suite.keep(
      await listen(
        idempotentHandler({ idempotency, onError: (error) => errors.push(error) }, (_req, res) =>
          write(res),
        ),
      ),
    )
    const key = randomUUID()
    const reply = await send(`${listening.url}/`, { key, body: '{}' })
    expect(reply.status).toBe(500)
    expect(errors).toEqual([expect.objectContaining({ code: 'ERR_INVALID_CHAR' })])
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
  })
})
