// res.writeHead(status, rawHeaders) with a flat [name, value, ...] list: as node does, its
// names replace what setHeader set before (repeated names in the list are all kept), rather
// than being added to it (a Content-Type sent twice).
import { randomUUID } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listen, send } from './servers.js'

describe('node:http: writeHead with a raw header list', () => {
  let listening: Listening | undefined

  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('replaces the headers set before, as node does', async () => {
    const errors: unknown[] = []
    const idempotency = createIdempotency({
      store: createMemoryIdempotencyStore(),
      replayHeaders: ['content-type', 'set-cookie', 'x-trace'],
    })
    const handler = idempotentHandler({ idempotency, onError: (e) => errors.push(e) }, (_, res) => {
      res.setHeader('Content-Type', 'text/plain')
      res.setHeader('Set-Cookie', 'stale=1')
      res.setHeader('X-Trace', 'kept')
      res.writeHead(201, [
        'Content-Type',
        'application/json',
        'Set-Cookie',
        'a=1',
        'set-cookie',
        'b=2',
      ])
      res.end('{}')
    })
    listening = await listen(handler)
    const key = randomUUID()
    for (const replayed of [undefined, 'true']) {
      const reply = await send(`${listening.url}/`, { key, body: '{}' })
      expect(reply.status).toBe(201)
      expect(reply.headers['content-type']).toBe('application/json')
      expect(reply.headers['set-cookie']).toBe('a=1, b=2')
      expect(reply.headers['x-trace']).toBe('kept')
      expect(reply.headers['idempotent-replayed']).toBe(replayed)
      expect(reply.text).toBe('{}')
    }
    expect(errors).toEqual([])
  })
})
