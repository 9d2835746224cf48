// Fastify with two idempotency plugins on one route (a root registration and one in an
// encapsulated context, under scopes of their own): both track the reply's send(), one over the
// other. Each must hand a send to the send it replaced, not to the outermost one (which once
// called itself until the stack ran out: a 500 for every keyed request). Real SQLite.
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  fastifyIdempotency,
  idempotencyContextOf,
  idempotencyTable,
} from '../../src/idempotency/index.js'
import { countRows, sqliteDb, type TestDb } from './databases.js'

let testDb: TestDb

beforeAll(async () => {
  testDb = await sqliteDb.open('idem_fastify_two_plugins')
})
afterAll(async () => {
  await testDb?.close()
})

describe('two fastify idempotency plugins on one route', () => {
  it('answers, records under both scopes and replays', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const app = Fastify()
    await app.register(fastifyIdempotency(idempotency, { scope: () => 'outer' }))
    let runs = 0
    await app.register(async (child) => {
      await child.register(fastifyIdempotency(idempotency, { scope: () => 'inner' }))
      child.post('/charges', async (request, reply) => {
        runs++
        expect(idempotencyContextOf(request)).toBeDefined()
        return reply.code(201).send({ run: runs })
      })
    })
    await app.ready()
    const key = randomUUID()
    const request = {
      method: 'POST' as const,
      url: '/charges',
      headers: { 'idempotency-key': key, 'content-type': 'application/json' },
      payload: { amount: 1 },
    }
    const first = await app.inject(request)
    expect(first.statusCode).toBe(201)
    expect(first.json()).toEqual({ run: 1 })
    const again = await app.inject(request)
    expect(again.statusCode).toBe(201)
    expect(again.json()).toEqual({ run: 1 })
    expect(runs).toBe(1)
    expect(
      await countRows(
        testDb.db,
        idempotencyTable,
        `WHERE idem_key = '${key}' AND state = 'completed'`,
      ),
    ).toBe(2)
    await app.close()
  })
})
