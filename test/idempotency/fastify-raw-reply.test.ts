// Fastify: a keyed handler that answers through reply.raw (writeHead/end) or reply.hijack()
// sends its response past the plugin, unrecorded. Before, the client got that success while
// onResponse rolled ctx.tx back and stored nothing, and the retry ran the handler again. Now
// the call is refused before any byte leaves (IDEMPOTENCY_RESPONSE_UNSUPPORTED, rule
// 'raw-reply'): Fastify's error handling answers 500, ctx.tx is rolled back, the key released.
import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyReply } from 'fastify'
import { describe, expect, it } from 'vitest'
import {
  createIdempotency,
  fastifyIdempotency,
  idempotencyContextOf,
} from '../../src/idempotency/index.js'
import { insertCharge, sqliteDb } from './databases.js'
import { listenServer, send } from './servers.js'
import { useServerSuite } from './suite.js'

const rawAnswers: Record<string, (reply: FastifyReply) => void> = {
  'reply.raw.writeHead and end': (reply) => {
    reply.raw.writeHead(201, { 'content-type': 'application/json' })
    reply.raw.end('{"charged":1}')
  },
  'reply.raw.end': (reply) => {
    reply.raw.end('{"charged":1}')
  },
  'reply.hijack()': (reply) => {
    reply.hijack()
    reply.raw.writeHead(201)
    reply.raw.end('{"charged":1}')
  },
}

describe('fastify: a handler answering through reply.raw or reply.hijack()', () => {
  const suite = useServerSuite(sqliteDb, 'idem_fastify_raw_reply')

  it.each(Object.keys(rawAnswers))(
    '%s is refused before any byte leaves; 500, rolled back, key released',
    async (name) => {
      const idempotency = createIdempotency({ store: suite.db })
      const thrown: unknown[] = []
      let runs = 0
      const app = Fastify()
      await app.register(fastifyIdempotency(idempotency))
      app.post('/', async (request, reply) => {
        runs++
        const ctx = idempotencyContextOf(request)!
        await ctx.tx.execute(insertCharge, [ctx.key, 't', 1])
        try {
          rawAnswers[name]!(reply)
        } catch (error) {
          thrown.push(error)
          throw error
        }
      })
      await app.ready()
      const listening = suite.keep(await listenServer(app.server))
      const key = randomUUID()
      for (const attempt of [1, 2]) {
        const reply = await send(`${listening.url}/`, { key, body: '{}' })
        expect(reply.status).toBe(500)
        expect(reply.text).toContain('IDEMPOTENCY_RESPONSE_UNSUPPORTED')
        expect(runs).toBe(attempt)
      }
      expect(thrown).toEqual([
        expect.objectContaining({ code: 'IDEMPOTENCY_RESPONSE_UNSUPPORTED', rule: 'raw-reply' }),
        expect.objectContaining({ code: 'IDEMPOTENCY_RESPONSE_UNSUPPORTED', rule: 'raw-reply' }),
      ])
      expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
      expect(await suite.db.query('SELECT id FROM charges WHERE id = $1', [key])).toEqual([])
      await app.close()
    },
  )

  it('leaves reply.raw to Fastify once the handler sent its reply', async () => {
    const idempotency = createIdempotency({ store: suite.db })
    const app = Fastify()
    await app.register(fastifyIdempotency(idempotency))
    app.post('/', async (_request, reply) => {
      reply.raw.setHeader('x-raw', 'kept')
      return reply.code(201).send({ ok: true })
    })
    await app.ready()
    const listening = suite.keep(await listenServer(app.server))
    const key = randomUUID()
    const reply = await send(`${listening.url}/`, { key, body: '{}' })
    expect(reply.status).toBe(201)
    expect(reply.text).toBe('{"ok":true}')
    expect(
      (await send(`${listening.url}/`, { key, body: '{}' })).headers['idempotent-replayed'],
    ).toBe('true')
    await app.close()
  })
})
