// A handler whose response body fails while the adapter reads it to record it (a stream that
// errors): the request must give its key back and roll ctx.tx back at once, not hold both (on
// SQLite, the only writer of the process) until the lease runs out.
import { randomUUID } from 'node:crypto'
import type { Server } from 'node:http'
import { Readable } from 'node:stream'
import { createAdaptorServer } from '@hono/node-server'
import Fastify from 'fastify'
import { Hono } from 'hono'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  fastifyIdempotency,
  honoIdempotency,
  type Idempotency,
  idempotencyContextOf,
} from '../../src/idempotency/index.js'
import { countRows, createChargesTable, dbTargets, insertCharge, type TestDb } from './databases.js'
import { type Listening, listenServer, send } from './servers.js'

function brokenStream(): Readable {
  return new Readable({
    read() {
      this.destroy(new Error('the response stream broke'))
    },
  })
}

describe.each(dbTargets)('a response body that fails to read, on $dialect', (db) => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await db.open('idem_body_failure')
    await createChargesTable(testDb.db)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  async function check(idempotency: Idempotency, url: string, tenant: string, runs: () => number) {
    const key = randomUUID()
    const first = await send(url, { key, body: '{}' })
    expect(first.status).toBeGreaterThanOrEqual(500)
    // Released at once: no in-progress record is left, and the write was rolled back.
    expect(await idempotency.store.get('anonymous', key)).toBeUndefined()
    expect(await countRows(testDb.db, 'charges', `WHERE tenant = '${tenant}'`)).toBe(0)
    // The database is free for other writers (on SQLite an open ctx.tx would block this).
    await testDb.db.execute(insertCharge, [randomUUID(), 'other', 1])
    expect(runs()).toBe(1)
  }

  it('hono: rolls back and releases the key', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const tenant = randomUUID()
    let runs = 0
    const app = new Hono()
    app.post('/charges', honoIdempotency(idempotency), async (c) => {
      runs++
      await idempotencyContextOf(c)!.tx.execute(insertCharge, [randomUUID(), tenant, 1])
      const body = Readable.toWeb(brokenStream()) as ReadableStream<Uint8Array>
      return new Response(body, { status: 201 })
    })
    app.onError((_error, c) => c.text('failed', 500))
    listening = await listenServer(createAdaptorServer({ fetch: app.fetch }) as Server)
    await check(idempotency, `${listening.url}/charges`, tenant, () => runs)
  })

  it('fastify: rolls back and releases the key', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const tenant = randomUUID()
    let runs = 0
    const app = Fastify()
    await app.register(fastifyIdempotency(idempotency))
    app.post('/charges', async (request, reply) => {
      runs++
      await idempotencyContextOf(request)!.tx.execute(insertCharge, [randomUUID(), tenant, 1])
      return reply.code(201).send(brokenStream())
    })
    await app.ready()
    listening = await listenServer(app.server)
    await check(idempotency, `${listening.url}/charges`, tenant, () => runs)
  })
})
