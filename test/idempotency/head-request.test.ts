// HEAD is safe (RFC 9110 section 9.2.1) and its response has no body to record, so a replay
// could not restore the Content-Length of the body it stands for (Express's res.send and node's
// idiom end a HEAD without one). `methods` refuses it; a HEAD to a guarded GET route passes
// through unguarded, with the GET's Content-Length.
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import express from 'express'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  expressIdempotency,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer, send } from './servers.js'

const payload = '{"status":"charged"}'

describe('a guarded HEAD request', () => {
  let listening: Listening | undefined

  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it.each([['HEAD'], ['head']])('refuses %s in methods, naming the option', (method) => {
    const create = () =>
      createIdempotency({ store: createMemoryIdempotencyStore(), methods: ['POST', method] })
    expect(create).toThrow(InvalidOptionError)
    // Named as the entry, as every refused entry of methods is.
    expect(create).toThrow(/^methods\[1\]: expected an HTTP method name other than HEAD/)
  })

  it("lets a HEAD to a guarded GET route through unguarded, with the GET's Content-Length", async () => {
    const idempotency = createIdempotency({
      store: createMemoryIdempotencyStore(),
      methods: ['GET'],
    })
    let runs = 0
    const app = express()
    app.get('/', expressIdempotency(idempotency), (_req, res) => {
      runs += 1
      res.type('application/json').send(payload)
    })
    listening = await listenServer(createServer(app))
    const key = randomUUID()
    for (const _ of [1, 2]) {
      const head = await send(`${listening.url}/`, { method: 'HEAD', key })
      expect(head.status).toBe(200)
      expect(head.headers['content-length']).toBe(String(Buffer.byteLength(payload)))
      expect(head.headers['idempotent-replayed']).toBeUndefined()
      expect(head.body.byteLength).toBe(0)
    }
    expect(runs).toBe(2)
  })
})
