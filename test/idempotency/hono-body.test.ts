// The Hono middleware after another middleware that already read the body (a validator calling
// c.req.json(), which Hono caches): a chunked body (no Content-Length) must still be counted
// against maxBodyBytes and fingerprinted, not fail because the raw body was consumed.
import { randomUUID } from 'node:crypto'
import type { Server } from 'node:http'
import { Readable } from 'node:stream'
import { createAdaptorServer } from '@hono/node-server'
import { Hono } from 'hono'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createIdempotency, honoIdempotency } from '../../src/idempotency/index.js'
import { sqliteDb, type TestDb } from './databases.js'
import { type Listening, listenServer } from './servers.js'

describe('hono: a body read by an earlier middleware', () => {
  let testDb: TestDb
  let listening: Listening | undefined

  beforeAll(async () => {
    testDb = await sqliteDb.open('idem_hono_body')
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await listening?.close()
    listening = undefined
  })

  it('is fingerprinted and limited when it came chunked', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    let runs = 0
    const errors: unknown[] = []
    const app = new Hono()
    app.post(
      '/charges',
      async (c, next) => {
        await c.req.json()
        await next()
      },
      honoIdempotency(idempotency, { maxBodyBytes: 64 }),
      async (c) => {
        runs++
        return c.json(await c.req.json(), 201)
      },
    )
    app.onError((error, c) => {
      errors.push(error)
      return c.text('failed', 500)
    })
    listening = await listenServer(createAdaptorServer({ fetch: app.fetch }) as Server)
    const url = `${listening.url}/charges`
    const post = async (key: string, parts: string[]) => {
      const reply = await request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
        body: Readable.from(parts),
      })
      return { status: reply.statusCode, text: await reply.body.text() }
    }
    const key = randomUUID()
    expect(await post(key, ['{"a":', '1}'])).toEqual({ status: 201, text: '{"a":1}' })
    // Another body under the same key is a mismatch: the body was fingerprinted.
    expect((await post(key, ['{"a":', '2}'])).status).toBe(422)
    const big = JSON.stringify({ pad: 'x'.repeat(100) })
    expect((await post(randomUUID(), [big.slice(0, 50), big.slice(50)])).status).toBe(413)
    expect(errors).toEqual([])
    expect(runs).toBe(1)
  })
})
