// Fastify: the handler has sent its reply, but a slow hook of the send path that runs before the
// plugin's onSend (an async onSend hook registered before the plugin, a preSerialization hook)
// is still running when the key's lease runs out. The plugin used to answer the lease-lost 409
// through reply.send() then, while the handler's own send was still on its way: two responses
// were attempted on one reply (Fastify then failed the second with ERR_HTTP_HEADERS_SENT). The
// send under way now carries the 409 instead: one response, and what is recorded (the key in
// progress, expired; the handler's write rolled back) is what that 409 tells the client.
// Real SQLite, a real socket; the lease runs out on a ManualClock, the hook is held by a gate.
import { randomUUID } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  fastifyIdempotency,
  idempotencyContextOf,
  idempotencyTable,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { type Gate, gate } from '../support/gate.js'
import { until } from '../support/until.js'
import { countRows, createChargesTable, insertCharge, sqliteDb, type TestDb } from './databases.js'
import { type Listening, listenServer, send } from './servers.js'

const origin = 'https://app.example'

let testDb: TestDb
let listening: Listening | undefined

beforeAll(async () => {
  testDb = await sqliteDb.open('idem_fastify_send_in_flight')
  await createChargesTable(testDb.db)
})
afterAll(async () => {
  await testDb?.close()
})
afterEach(async () => {
  await listening?.close()
  listening = undefined
})

// The hook that is slow on the request's first pass, registered before the plugin.
const slowHooks = ['onSend', 'preSerialization'] as const

describe.each(slowHooks)('a slow %s hook before the plugin when the lease runs out', (hookName) => {
  async function start() {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({
      store: testDb.db,
      clock,
      leaseMs: 10_000,
      retryAfterMs: 3_000,
    })
    // What Fastify logs at warn or above ("Reply was already sent", a failed second send).
    const logged: { level: number; msg?: string }[] = []
    const app = Fastify({
      logger: {
        level: 'warn',
        stream: new Writable({
          write(chunk: Buffer, _encoding, done) {
            logged.push(JSON.parse(chunk.toString('utf8')))
            done()
          },
        }),
      },
    })
    // Every head written to the socket, and errors reaching Fastify's error handling.
    const heads: number[] = []
    const errors: unknown[] = []
    app.addHook('onRequest', async (_request, reply) => {
      reply.header('access-control-allow-origin', origin)
      const raw = reply.raw
      const writeHead = raw.writeHead
      raw.writeHead = function (this: ServerResponse, status: number, ...rest: never[]) {
        heads.push(status)
        return writeHead.call(this, status, ...rest)
      } as typeof raw.writeHead
    })
    let held: Gate | undefined = gate()
    const entered = gate()
    // When set, the hook fails the payload it held.
    let failHeld = false
    const slow = async (_request: unknown, _reply: unknown, payload: unknown) => {
      const hold = held
      held = undefined
      if (hold !== undefined) {
        entered.open()
        await hold.promise
        if (failHeld) throw new Error('the hook failed')
      }
      return payload
    }
    app.addHook(hookName, slow as never)
    const release = held!
    await app.register(fastifyIdempotency(idempotency))
    app.setErrorHandler((error, _request, reply) => {
      errors.push(error)
      return reply.code(500).send({ failed: true })
    })
    const attempts: number[] = []
    // When set, the first attempt waits for it before it sends (it overruns its lease).
    let stall: Promise<void> | undefined
    app.post('/charges', async (request, reply) => {
      const ctx = idempotencyContextOf(request)!
      attempts.push(ctx.attempt)
      if (ctx.attempt === 1 && stall !== undefined) {
        await stall
        // The stale handler sends anyway; its statement on ctx.tx would fail.
        return reply.code(201).send({ attempt: ctx.attempt })
      }
      await ctx.tx.execute(insertCharge, [`${ctx.key}:${ctx.attempt}`, 't', 1])
      reply.header('x-handler', 'yes')
      // An object: serialized by Fastify, so it passes preSerialization hooks too.
      return reply.code(201).send({ attempt: ctx.attempt })
    })
    await app.ready()
    listening = await listenServer(app.server)
    return {
      clock,
      url: `${listening.url}/charges`,
      heads,
      errors,
      logged,
      attempts,
      entered,
      release,
      stallHandler(until: Promise<void>) {
        stall = until
      },
      failHeldPayload() {
        failHeld = true
      },
    }
  }

  // The key's charges: the test file's keys share the table.
  function chargesOf(key: string): Promise<number> {
    return countRows(testDb.db, 'charges', `WHERE id LIKE '${key}:%'`)
  }

  async function stateOf(key: string): Promise<string | undefined> {
    const rows = await testDb.db.query<{ state: string }>(
      `SELECT state FROM ${idempotencyTable} WHERE idem_key = $1`,
      [key],
    )
    return rows[0]?.state
  }

  type Started = Awaited<ReturnType<typeof start>>

  // Once anything still queued for the reply has run: one head written, nothing failed.
  async function expectOneHead(test: Started, status: number, errors: unknown[] = []) {
    await new Promise((resolve) => setImmediate(resolve))
    expect(test.heads).toEqual([status])
    expect(test.errors).toEqual(errors)
    expect(test.logged.filter((entry) => entry.level >= 40)).toEqual([])
  }

  // Nothing was recorded for the first attempt: the retry takes the key over and runs again.
  async function expectRetryRunsAgain(test: Started, key: string) {
    expect(await stateOf(key)).toBe('in_progress')
    const retry = await send(test.url, { key, body: '{"a":1}' })
    expect(retry.status).toBe(201)
    expect(JSON.parse(retry.text)).toEqual({ attempt: 2 })
    expect(test.attempts).toEqual([1, 2])
    expect(await chargesOf(key)).toBe(1)
  }

  it('sends exactly one response, the 409, and records the key as lost', async () => {
    const test = await start()
    const { clock, url, entered, release } = test
    const key = randomUUID()
    let answered = false
    const first = send(url, { key, body: '{"a":1}' }).finally(() => {
      answered = true
    })
    // The handler sent its reply; the slow hook holds it on its way out.
    await entered.promise
    await clock.advance(10_000)
    // The lease ran out: ctx.tx was rolled back, and the key is left in progress for a retry.
    await until(async () => (await chargesOf(key)) === 0, 'the rollback')
    expect(await stateOf(key)).toBe('in_progress')
    release.open()
    await until(() => answered, 'the answer')
    const lost = await first
    expect(lost.status).toBe(409)
    expect(JSON.parse(lost.text)).toMatchObject({
      status: 409,
      code: 'IDEMPOTENCY_IN_PROGRESS',
      detail: expect.stringMatching(/expired/),
    })
    expect(lost.headers['retry-after']).toBe('3')
    // The 409 replaces the handler's response: its headers are dropped, earlier hooks' kept.
    expect(lost.headers['x-handler']).toBeUndefined()
    expect(lost.headers['access-control-allow-origin']).toBe(origin)
    await expectOneHead(test, 409)
    await expectRetryRunsAgain(test, key)
    const replay = await send(url, { key, body: '{"a":1}' })
    expect(replay.status).toBe(201)
    expect(replay.headers['idempotent-replayed']).toBe('true')
    expect(JSON.parse(replay.text)).toEqual({ attempt: 2 })
  })

  // The handler overruns its lease; the plugin's 409 is on its way, held by the slow hook, when
  // the stale handler sends after all. Then the hook lets the 409 go (or fails it). The 409 is
  // a Buffer: only an onSend hook holds it (preSerialization skips it).
  async function staleSendWhileHeld(test: Started, key: string) {
    const handlerHold = gate()
    test.stallHandler(handlerHold.promise)
    const first = send(test.url, { key, body: '{"a":1}' })
    await until(() => test.attempts.length === 1, 'the handler to start')
    await test.clock.advance(10_000)
    await test.entered.promise
    handlerHold.open()
    await new Promise((resolve) => setImmediate(resolve))
    test.release.open()
    return first
  }

  it.skipIf(hookName !== 'onSend')(
    "drops a stale handler's send while the hook holds the 409",
    async () => {
      const test = await start()
      const key = randomUUID()
      const lost = await staleSendWhileHeld(test, key)
      expect(lost.status).toBe(409)
      expect(JSON.parse(lost.text)).toMatchObject({ status: 409, code: 'IDEMPOTENCY_IN_PROGRESS' })
      expect(lost.headers['access-control-allow-origin']).toBe(origin)
      await expectOneHead(test, 409)
      await expectRetryRunsAgain(test, key)
    },
  )

  it.skipIf(hookName !== 'onSend')(
    "lets Fastify's error response through when the hook fails the held 409",
    async () => {
      const test = await start()
      test.failHeldPayload()
      const key = randomUUID()
      // The error handler's answer, not a client left waiting for a send that was dropped.
      const failed = await staleSendWhileHeld(test, key)
      expect(failed.status).toBe(500)
      expect(JSON.parse(failed.text)).toEqual({ failed: true })
      await expectOneHead(test, 500, [expect.objectContaining({ message: 'the hook failed' })])
      await expectRetryRunsAgain(test, key)
    },
  )
})
