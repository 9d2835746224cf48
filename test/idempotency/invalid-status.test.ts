// A handler that ends its response with a status no HTTP response can have (res.statusCode set
// by hand to 42 or 1000: node's writeHead refuses it only when the response is written, after
// it was recorded). Nothing may be recorded (every replay would fail the same way), the key is
// released, the client gets a 500 and onError the reason; and the process must not crash on an
// unhandled rejection.
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import express from 'express'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  expressIdempotency,
  type Idempotency,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { type Listening, listenServer, send } from './servers.js'

type Handler = (req: IncomingMessage, res: ServerResponse) => void

const targets: {
  name: string
  start(
    idempotency: Idempotency,
    onError: (e: unknown) => void,
    h: Handler,
  ): ReturnType<typeof createServer>
}[] = [
  {
    name: 'node:http',
    start: (idempotency, onError, handler) =>
      createServer(idempotentHandler({ idempotency, onError }, handler)),
  },
  {
    name: 'express',
    start(idempotency, onError, handler) {
      const app = express()
      app.post('/', expressIdempotency(idempotency, { onError }), handler)
      return createServer(app)
    },
  },
]

describe.each(targets)('$name adapter, a status outside 100-599', (target) => {
  let listening: Listening | undefined

  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it.each([42, 1000])('answers %i with 500, records nothing and reports it', async (status) => {
    const store = createMemoryIdempotencyStore()
    const idempotency = createIdempotency({ store })
    const errors: unknown[] = []
    let runs = 0
    listening = await listenServer(
      target.start(
        idempotency,
        (error) => errors.push(error),
        (_req, res) => {
          runs++
          res.statusCode = status
          res.end('odd')
        },
      ),
    )
    const key = randomUUID()
    const first = await send(`${listening.url}/`, { key, body: '{}' })
    expect(first.status).toBe(500)
    expect(errors).toEqual([
      expect.objectContaining({ code: 'INVALID_OPTION', option: 'status', value: status }),
    ])
    expect(store.size).toBe(0)
    // The key was released: the retry runs the handler again.
    await send(`${listening.url}/`, { key, body: '{}' })
    expect(runs).toBe(2)
  })
})
