// A chunk node cannot write (an object, a Uint16Array) given to res.write or res.end under the
// capture: plain node throws ERR_INVALID_ARG_TYPE at the call, so must the capture. Before, it
// dropped the chunk without a word and recorded an empty 200 for the key.
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

const invalidWrites: Record<string, (res: ServerResponse) => void> = {
  'end(object)': (res) => res.end({ a: 1 } as never),
  'write(Uint16Array)': (res) => {
    res.write(new Uint16Array([0x4142]) as never)
    res.end()
  },
}

describe('node:http and Express: a chunk node cannot write', () => {
  const suite = useServerSuite(sqliteDb, 'idem_invalid_chunk')

  it.each(Object.keys(invalidWrites))(
    'node:http: %s throws ERR_INVALID_ARG_TYPE at the call; 500, key released',
    async (name) => {
      const idempotency = createIdempotency({ store: suite.db })
      const thrown: unknown[] = []
      const errors: unknown[] = []
      const listening = suite.keep(
        await listen(
          idempotentHandler(
            { idempotency, onError: (error) => errors.push(error) },
            async (_, res, { idempotency: ctx }) => {
              await ctx!.tx.execute(
                'INSERT INTO charges (id, tenant, amount) VALUES ($1, $2, $3)',
                [ctx!.key, 't', 1],
              )
              try {
                invalidWrites[name]!(res)
              } catch (error) {
                thrown.push(error)
                throw error
              }
            },
          ),
        ),
      )
      const key = randomUUID()
      const reply = await send(`${listening.url}/`, { key, body: '{}' })
      expect(reply.status).toBe(500)
      expect(thrown).toEqual([expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' })])
      expect(thrown[0]).toBeInstanceOf(TypeError)
      expect(errors).toEqual(thrown)
      expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
      expect(await suite.db.query('SELECT id FROM charges WHERE id = $1', [key])).toEqual([])
    },
  )

  it.each(Object.keys(invalidWrites))(
    "Express: %s reaches Express's error handling; the key is released",
    async (name) => {
      const idempotency = createIdempotency({ store: suite.db })
      const errors: unknown[] = []
      const app = express()
      app.post('/', expressIdempotency(idempotency), async (req, res) => {
        const ctx = idempotencyContextOf(req)!
        await ctx.tx.execute('INSERT INTO charges (id, tenant, amount) VALUES ($1, $2, $3)', [
          ctx!.key,
          't',
          1,
        ])
        invalidWrites[name]!(res)
      })
      app.use((error: unknown, _req: express.Request, res: express.Response, _next: () => void) => {
        errors.push(error)
        res.status(500).json({ failed: true })
      })
      const listening = suite.keep(await listenServer(createServer(app)))
      const key = randomUUID()
      const reply = await send(`${listening.url}/`, { key, body: '{}' })
      expect(reply.status).toBe(500)
      expect(reply.text).toBe('{"failed":true}')
      expect(errors).toEqual([expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' })])
      expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
      expect(await suite.db.query('SELECT id FROM charges WHERE id = $1', [key])).toEqual([])
    },
  )
})
