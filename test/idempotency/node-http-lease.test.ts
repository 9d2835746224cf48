// A node:http handler that has not ended its response when its lease runs out. Its ctx.tx was
// rolled back then, but the client heard nothing: it waited (until the server's own request
// timeout, 5 minutes by default) while a retry could already take the key over. The client is
// now answered at the lease's end: the lease-lost 409 problem if nothing was sent yet, a
// destroyed connection if the handler had already sent its headers. Real SQLite, real sockets;
// the lease runs out on a ManualClock.
import { randomUUID } from 'node:crypto'
import { ServerResponse } from 'node:http'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  type IdempotentRequestHandler,
  idempotencyTable,
  idempotentHandler,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { until } from '../support/until.js'
import { sqliteDb, type TestDb } from './databases.js'
import { agent, gate, type Listening, listen, send } from './servers.js'

describe('a node:http handler still running when its lease runs out', () => {
  let testDb: TestDb
  let server: Listening | undefined
  const errors: unknown[] = []

  beforeAll(async () => {
    testDb = await sqliteDb.open('idem_node_lease')
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await server?.close()
    server = undefined
    errors.length = 0
  })

  async function start(handler: IdempotentRequestHandler) {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({
      store: testDb.db,
      clock,
      leaseMs: 10_000,
      retryAfterMs: 3_000,
    })
    server = await listen(
      idempotentHandler({ idempotency, onError: (e) => errors.push(e) }, handler),
    )
    return { clock, url: server.url }
  }

  async function stateOf(key: string): Promise<string | undefined> {
    const rows = await testDb.db.query<{ state: string }>(
      `SELECT state FROM ${idempotencyTable} WHERE idem_key = $1`,
      [key],
    )
    return rows[0]?.state
  }

  it('answers the waiting client 409 lease-lost at once, and a retry takes the key over', async () => {
    const hold = gate()
    const attempts: number[] = []
    const { clock, url } = await start(async (_req, res, { idempotency: ctx }) => {
      attempts.push(ctx!.attempt)
      if (ctx!.attempt === 1) await hold.promise // hangs past its lease
      res.writeHead(201, { 'content-type': 'text/plain' }).end(`attempt ${ctx!.attempt}`)
    })
    const key = randomUUID()
    let answered = false
    const first = send(url, { key, body: '{}' }).finally(() => {
      answered = true
    })
    await until(() => attempts.length === 1, 'the handler to start')
    await clock.advance(9_999)
    expect(answered).toBe(false)
    await clock.advance(1)
    await until(() => answered, 'the answer at the lease end', 5_000)
    const lost = await first
    expect(lost.status).toBe(409)
    expect(lost.headers['content-type']).toBe('application/problem+json')
    expect(lost.headers['retry-after']).toBe('3')
    expect(JSON.parse(lost.text)).toMatchObject({
      type: expect.stringMatching(/idempotency-key-in-progress$/),
      status: 409,
      detail: expect.stringMatching(/expired/),
    })
    // The in-progress record stays (with any committed phases) for the retry to take over.
    expect(await stateOf(key)).toBe('in_progress')
    const retry = await send(url, { key, body: '{}' })
    expect(retry.status).toBe(201)
    expect(retry.text).toBe('attempt 2')

    // The stale handler ends its response later: nothing more reaches anyone.
    hold.open()
    await until(async () => (await send(url, { key, body: '{}' })).text === 'attempt 2', 'replay')
    expect(attempts).toEqual([1, 2])
    expect(errors).toEqual([])
  })

  it("does not report the stale handler's lease-lost failure after the client was answered", async () => {
    const hold = gate()
    let failed: unknown
    const { clock, url } = await start(async (_req, res, { idempotency: ctx }) => {
      await hold.promise
      try {
        await ctx!.tx.execute('SELECT 1')
      } catch (error) {
        failed = error
        throw error
      }
      res.end('never')
    })
    const key = randomUUID()
    let answered = false
    const first = send(url, { key, body: '{}' }).finally(() => {
      answered = true
    })
    await until(async () => (await stateOf(key)) === 'in_progress', 'the claim')
    await clock.advance(10_000)
    await until(() => answered, 'the answer at the lease end', 5_000)
    expect((await first).status).toBe(409)
    hold.open()
    await until(() => failed !== undefined, 'the stale statement to fail')
    expect(failed).toMatchObject({ code: 'IDEMPOTENCY_IN_PROGRESS', reason: 'lease-lost' })
    await new Promise((resolve) => setImmediate(resolve))
    expect(errors).toEqual([])
  })

  it('destroys the connection when the handler had already sent its headers', async () => {
    let started = false
    const { clock, url } = await start((_req, res) => {
      started = true
      // Sends the head past the wrapper, as a layer holding node's own writeHead would; the
      // handler then never ends the response.
      ServerResponse.prototype.writeHead.call(res, 200, { 'content-type': 'text/plain' })
      res.flushHeaders()
    })
    const key = randomUUID()
    const response = await request(url, {
      method: 'POST',
      headers: { 'idempotency-key': key, 'content-type': 'application/json' },
      body: '{}',
      dispatcher: agent,
    })
    expect(started).toBe(true)
    expect(response.statusCode).toBe(200)
    let failure: unknown
    const reading = response.body.text().catch((error: unknown) => {
      failure = error
    })
    await clock.advance(10_000)
    await until(() => failure !== undefined, 'the connection to be destroyed', 5_000)
    await reading
    expect(failure).toBeInstanceOf(Error)
    expect(await stateOf(key)).toBe('in_progress')
    expect(errors).toEqual([])
  })
})
