// The Hono middleware counting a chunked body over maxBodyBytes that the client has not finished
// sending: the 413 (with Connection: close) must go out at once. Before, the count's copy of the
// body was cancelled with `await`, and cancelling one branch of a tee'd stream settles only once
// the other branch (the request's own body, never read) is cancelled too: no answer ever came.
import { randomUUID } from 'node:crypto'
import { request as httpRequest, type IncomingMessage, type Server } from 'node:http'
import { createAdaptorServer } from '@hono/node-server'
import { Hono } from 'hono'
import { describe, expect, it } from 'vitest'
import { createIdempotency, honoIdempotency } from '../../src/idempotency/index.js'
import { sqliteDb } from './databases.js'
import { listenServer } from './servers.js'
import { useServerSuite } from './suite.js'

describe('hono: a chunked body over the limit, still arriving', () => {
  const suite = useServerSuite(sqliteDb, 'idem_hono_unfinished_body', false)

  it('is answered 413 with connection: close before the client ends it', async () => {
    const idempotency = createIdempotency({ store: suite.db })
    let runs = 0
    const app = new Hono()
    app.post('/charges', honoIdempotency(idempotency, { maxBodyBytes: 1000 }), (c) => {
      runs++
      return c.text('ok')
    })
    const listening = suite.keep(
      await listenServer(createAdaptorServer({ fetch: app.fetch }) as Server),
    )
    const { port } = new URL(listening.url)
    const key = randomUUID()
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: Number(port),
          method: 'POST',
          path: '/charges',
          agent: false,
          headers: { 'idempotency-key': key, 'transfer-encoding': 'chunked' },
        },
        resolve,
      )
      req.on('error', reject)
      // Over the limit, and the body is never ended.
      req.write('a'.repeat(3000))
    })
    response.resume()
    expect(response.statusCode).toBe(413)
    expect(response.headers.connection).toBe('close')
    response.destroy()
    expect(runs).toBe(0)
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
  }, 5_000)
})
