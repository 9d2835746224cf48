// Hono's streaming helpers (streamText, streamSSE) set `Transfer-Encoding: chunked` on their
// response. The middleware records the body whole and sends it with a Content-Length: the
// chunked framing must not go out with it (a response with both is malformed, and clients
// refuse it), on the first response as on a replay.
import { randomUUID } from 'node:crypto'
import type { Server } from 'node:http'
import { createAdaptorServer } from '@hono/node-server'
import { Hono } from 'hono'
import { streamSSE, streamText } from 'hono/streaming'
import { request } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  honoIdempotency,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer } from './servers.js'

describe('hono: a streamed response', () => {
  let listening: Listening | undefined

  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it.each([
    [
      'streamText',
      (app: Hono) =>
        app.post('/', (c) =>
          streamText(c, async (stream) => {
            await stream.write('charged ')
            await stream.sleep(1)
            await stream.write('once')
          }),
        ),
      'charged once',
    ],
    [
      'streamSSE',
      (app: Hono) =>
        app.post('/', (c) =>
          streamSSE(c, async (stream) => {
            await stream.writeSSE({ data: 'charged' })
          }),
        ),
      'data: charged\n\n',
    ],
  ])('from %s is sent and replayed whole, with its Content-Length', async (_name, route, text) => {
    const app = new Hono()
    app.use(honoIdempotency(createIdempotency({ store: createMemoryIdempotencyStore() })))
    route(app)
    listening = await listenServer(createAdaptorServer({ fetch: app.fetch }) as Server)
    const key = randomUUID()
    for (const replayed of [undefined, 'true']) {
      const reply = await request(`${listening.url}/`, {
        method: 'POST',
        headers: { 'idempotency-key': key },
        body: '{}',
      })
      expect(reply.statusCode).toBe(200)
      expect(reply.headers['transfer-encoding']).toBeUndefined()
      expect(reply.headers['content-length']).toBe(String(Buffer.byteLength(text)))
      expect(reply.headers['idempotent-replayed']).toBe(replayed)
      expect(await reply.body.text()).toBe(text)
    }
  })
})
