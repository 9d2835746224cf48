// The protocol end to end: node:http servers on real SQLite and real PostgreSQL, business writes
// in ctx.tx, requests over real sockets.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  createSqlIdempotencyStore,
  type IdempotencyOptions,
  type IdempotentRequestHandler,
  idempotentHandler,
  sweepExpired,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { until } from '../support/until.js'
import { countRows, createChargesTable, dbTargets, type TestDb } from './databases.js'
import { agent, gate, type Listening, listen, type Reply, send } from './servers.js'

describe.each(dbTargets)('Idempotency-Key over HTTP on $dialect', (target) => {
  let testDb: TestDb
  let server: Listening | undefined
  const errors: unknown[] = []
  // Waiting requests whose client went away (their wait ends with this error).
  const disconnects: unknown[] = []

  beforeAll(async () => {
    testDb = await target.open('idem_http')
    await createChargesTable(testDb.db)
  })
  afterAll(async () => {
    await testDb?.close()
  })
  afterEach(async () => {
    await server?.close()
    server = undefined
    expect(errors).toEqual([])
  })

  interface ServerSetup {
    readonly options?: Partial<IdempotencyOptions>
    /** Called by the handler before its business write (ctx.tx not begun yet). */
    readonly beforeWrite?: () => Promise<void>
    /** Called by the handler after its business write (ctx.tx open), before it answers. */
    readonly afterWrite?: (ctx: { key: string; attempt: number }) => Promise<void>
    readonly onRequest?: (res: ServerResponse) => void
    /** The adapter's own `scope` option (overrides the core's). */
    readonly adapterScope?: (req: IncomingMessage) => string | Promise<string>
  }

  // The handler of a payments service: one business row per charge, written in ctx.tx.
  async function start(setup: ServerSetup = {}) {
    let runs = 0
    const handler: IdempotentRequestHandler = async (req, res, { body, idempotency: ctx }) => {
      runs++
      const { amount } = JSON.parse(body.toString('utf8')) as { amount: number }
      const tenant = req.headers['x-tenant']?.toString() ?? '-'
      const id = randomUUID()
      await setup.beforeWrite?.()
      await ctx!.tx.execute('INSERT INTO charges (id, tenant, amount) VALUES ($1, $2, $3)', [
        id,
        tenant,
        amount,
      ])
      await setup.afterWrite?.({ key: ctx!.key, attempt: ctx!.attempt })
      if (amount < 0) throw new Error('refused after the business write')
      if (amount === 503 || amount === 408 || amount === 425 || amount === 429) {
        res.writeHead(amount, { 'content-type': 'text/plain', 'retry-after': '1' }).end('try again')
        return
      }
      if (amount === 0) {
        res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"zero"}')
        return
      }
      res.writeHead(201, { 'content-type': 'application/json', location: `/charges/${id}` })
      res.end(JSON.stringify({ id, tenant, amount, attempt: ctx!.attempt }))
    }
    const idempotency = createIdempotency({
      store: createSqlIdempotencyStore(testDb.db),
      ...setup.options,
    })
    const wrapped = idempotentHandler(
      {
        idempotency,
        ...(setup.adapterScope === undefined ? {} : { scope: setup.adapterScope }),
        onError: (error) => {
          // The wait ends with AbortedError (ABORTED), caused by the client's disconnect.
          if (error instanceof Error && (error.cause as Error)?.message === 'client disconnected') {
            disconnects.push(error)
          } else if (
            !(error instanceof Error && error.message === 'refused after the business write')
          ) {
            errors.push(error)
          }
        },
      },
      handler,
    )
    server = await listen((req: IncomingMessage, res: ServerResponse) => {
      setup.onRequest?.(res)
      wrapped(req, res)
    })
    return { url: `${server.url}/charges`, runs: () => runs, idempotency }
  }

  const charges = (where = '') => countRows(testDb.db, 'charges', where)
  const recordOf = (scope: string, key: string) =>
    createSqlIdempotencyStore(testDb.db).get(scope, key)

  function isProblem(reply: Reply, status: number, type: string): boolean {
    return (
      reply.status === status &&
      reply.headers['content-type'] === 'application/problem+json' &&
      JSON.parse(reply.text).type === `https://breakwater.dev/problems/${type}`
    )
  }

  it('runs the handler exactly once for 1,000 concurrent requests with one key; the rest get 409', async () => {
    const total = 1_000
    const othersAnswered = gate()
    let answered = 0
    const { url, runs } = await start({
      onRequest: (res) => {
        res.once('finish', () => {
          if (++answered === total - 1) othersAnswered.open()
        })
      },
      // Hold the winner until every other request has been answered.
      beforeWrite: () => othersAnswered.promise,
    })
    const key = randomUUID()
    const before = await charges()
    const replies = await Promise.all(
      Array.from({ length: total }, () => send(url, { key, body: '{"amount":42}' })),
    )
    expect(runs()).toBe(1)
    expect((await charges()) - before).toBe(1)
    const firsts = replies.filter((r) => r.status === 201)
    expect(firsts).toHaveLength(1)
    expect(firsts[0]!.headers['idempotent-replayed']).toBeUndefined()
    const conflicts = replies.filter((r) => isProblem(r, 409, 'idempotency-key-in-progress'))
    expect(conflicts).toHaveLength(total - 1)
    expect(conflicts.every((r) => r.headers['retry-after'] === '1')).toBe(true)
    const replay = await send(url, { key, body: '{"amount":42}' })
    expect(replay.status).toBe(201)
    expect(replay.headers['idempotent-replayed']).toBe('true')
    expect(Buffer.compare(replay.body, firsts[0]!.body)).toBe(0)
    expect(replay.headers.location).toBe(firsts[0]!.headers.location)
  })

  it('answers every one of 1,000 concurrent requests with the first response or a 409 while the winner holds its transaction open', async () => {
    const total = 1_000
    const arrived = gate()
    let arrivals = 0
    const { url, runs } = await start({
      onRequest: () => {
        if (++arrivals === total) arrived.open()
      },
      // On SQLite the open transaction makes the other claims queue (then replay); on
      // PostgreSQL they are answered 409 meanwhile.
      afterWrite: () => arrived.promise,
    })
    const key = randomUUID()
    const before = await charges()
    const replies = await Promise.all(
      Array.from({ length: total }, () => send(url, { key, body: '{"amount":43}' })),
    )
    expect(runs()).toBe(1)
    expect((await charges()) - before).toBe(1)
    const original = replies.filter(
      (r) => r.status === 201 && r.headers['idempotent-replayed'] === undefined,
    )
    expect(original).toHaveLength(1)
    for (const reply of replies) {
      const ok =
        isProblem(reply, 409, 'idempotency-key-in-progress') ||
        (reply.status === 201 && reply.body.equals(original[0]!.body))
      expect(ok).toBe(true)
    }
  })

  it("in 'wait' mode answers all 1,000 concurrent requests with the first response", async () => {
    const total = 1_000
    const arrived = gate()
    let arrivals = 0
    const { url, runs } = await start({
      options: { onConcurrent: 'wait', waitTimeoutMs: 50_000 },
      onRequest: () => {
        if (++arrivals === total) arrived.open()
      },
      afterWrite: () => arrived.promise,
    })
    const key = randomUUID()
    const before = await charges()
    const replies = await Promise.all(
      Array.from({ length: total }, () => send(url, { key, body: '{"amount":7}' })),
    )
    expect(runs()).toBe(1)
    expect((await charges()) - before).toBe(1)
    const original = replies.filter((r) => r.headers['idempotent-replayed'] === undefined)
    expect(original).toHaveLength(1)
    for (const reply of replies) {
      expect(reply.status).toBe(201)
      expect(reply.body.equals(original[0]!.body)).toBe(true)
      expect(reply.headers['content-type']).toBe('application/json')
    }
  })

  it("in 'wait' mode stops waiting as soon as the waiting client disconnects", async () => {
    const clock = new ManualClock(Date.now())
    const holding = gate()
    const release = gate()
    const { url, runs } = await start({
      options: { onConcurrent: 'wait', waitTimeoutMs: 60_000, clock },
      // Before the write, so ctx.tx is not open (on SQLite it would hold the only connection).
      beforeWrite: () => {
        holding.open()
        return release.promise
      },
    })
    const key = randomUUID()
    const first = send(url, { key, body: '{"amount":3}' })
    try {
      await holding.promise
      const leaseTimers = clock.pendingTimers
      const client = new AbortController()
      const waiting = request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
        body: '{"amount":3}',
        dispatcher: agent,
        signal: client.signal,
      }).catch((error: unknown) => error)
      // The duplicate sleeps on the clock between polls; the clock never moves in this test.
      await until(() => clock.pendingTimers > leaseTimers, 'the duplicate to sleep', 5_000)
      client.abort()
      await waiting
      await until(() => disconnects.length === 1, 'the wait to end', 5_000)
      expect(clock.pendingTimers).toBe(leaseTimers)
    } finally {
      release.open()
    }
    expect((await first).status).toBe(201)
    expect(runs()).toBe(1)
    disconnects.length = 0
  })

  it('commits the business write and the result together: a handler that throws after its write leaves neither', async () => {
    const { url, runs } = await start()
    const key = randomUUID()
    const before = await charges()
    const failed = await send(url, { key, body: '{"amount":-1}' })
    expect(failed.status).toBe(500)
    expect(await charges()).toBe(before)
    expect(await recordOf('anonymous', key)).toBeUndefined()
    const retried = await send(url, { key, body: '{"amount":5}' })
    expect(retried.status).toBe(201)
    expect((await charges()) - before).toBe(1)
    expect((await recordOf('anonymous', key))?.state).toBe('completed')
    expect(runs()).toBe(2)
  })

  it('releases the key after a 5xx (its write rolled back) and records a 4xx', async () => {
    const { url, runs } = await start()
    const key = randomUUID()
    const before = await charges()
    expect((await send(url, { key, body: '{"amount":503}' })).status).toBe(503)
    expect(await recordOf('anonymous', key)).toBeUndefined()
    expect((await send(url, { key, body: '{"amount":503}' })).status).toBe(503)
    expect(runs()).toBe(2)
    expect(await charges()).toBe(before)

    const invalid = randomUUID()
    expect((await send(url, { key: invalid, body: '{"amount":0}' })).status).toBe(400)
    const replay = await send(url, { key: invalid, body: '{"amount":0}' })
    expect(replay.status).toBe(400)
    expect(replay.text).toBe('{"error":"zero"}')
    expect(replay.headers['idempotent-replayed']).toBe('true')
    expect(runs()).toBe(3)
    // A recorded 4xx keeps its business write, as any recorded result does.
    expect((await charges()) - before).toBe(1)
  })

  // 408, 425 and 429 say the request was not processed and ask the client to send it again
  // (429 after its Retry-After): recorded as 4xx are, each retry was replayed the refusal for
  // the key's whole retention (24 h), without even the Retry-After it asked to wait for.
  it.each([408, 425, 429])(
    'releases the key after a %i, which asks the client to retry',
    async (status) => {
      const { url, runs } = await start()
      const key = randomUUID()
      const before = await charges()
      const body = JSON.stringify({ amount: status })
      expect((await send(url, { key, body })).status).toBe(status)
      expect(await recordOf('anonymous', key)).toBeUndefined()
      const retried = await send(url, { key, body })
      expect(retried.status).toBe(status)
      expect(retried.headers['idempotent-replayed']).toBeUndefined()
      expect(runs()).toBe(2)
      expect(await charges()).toBe(before)
    },
  )

  it('answers 422 problem+json when a key is reused for a different request', async () => {
    const { url, runs } = await start()
    const key = randomUUID()
    expect((await send(url, { key, body: '{"amount":10}' })).status).toBe(201)
    const other = await send(url, { key, body: '{"amount":11}' })
    expect(isProblem(other, 422, 'idempotency-key-mismatch')).toBe(true)
    const otherRoute = await send(`${url}/x`, { key, body: '{"amount":10}' })
    expect(isProblem(otherRoute, 422, 'idempotency-key-mismatch')).toBe(true)
    expect(runs()).toBe(1)
  })

  it('answers 400 problem+json for missing, oversize and malformed keys', async () => {
    const { url, runs } = await start()
    const missing = await send(url, { body: '{"amount":1}' })
    expect(isProblem(missing, 400, 'idempotency-key-missing')).toBe(true)
    expect(JSON.parse(missing.text)).toMatchObject({
      title: 'Idempotency-Key header missing',
      status: 400,
      code: 'IDEMPOTENCY_KEY_MISSING',
    })
    const long = await send(url, { key: 'k'.repeat(256), body: '{"amount":1}' })
    expect(isProblem(long, 400, 'idempotency-key-too-long')).toBe(true)
    const quotedLong = await send(url, { key: `"${'k'.repeat(256)}"`, body: '{"amount":1}' })
    expect(isProblem(quotedLong, 400, 'idempotency-key-too-long')).toBe(true)
    for (const bad of ['a b', 'ü', '"open', 'a;b']) {
      const reply = await send(url, {
        headers: { 'idempotency-key': Buffer.from(bad).toString('latin1') },
        body: '{"amount":1}',
      })
      expect(isProblem(reply, 400, 'idempotency-key-malformed'), bad).toBe(true)
    }
    const quoted = await send(url, { key: `"${'k'.repeat(255)}"`, body: '{"amount":1}' })
    expect(quoted.status).toBe(201)
    expect(runs()).toBe(1)
  })

  it("keeps tenants apart: tenant B never receives tenant A's response for the same key", async () => {
    const { url, runs } = await start({ options: { scope: { tenantHeader: 'x-tenant' } } })
    const key = randomUUID()
    const body = '{"amount":10}'
    const a = await send(url, { key, body, headers: { 'x-tenant': 'a' } })
    const b = await send(url, { key, body, headers: { 'x-tenant': 'b' } })
    expect(JSON.parse(a.text).tenant).toBe('a')
    expect(JSON.parse(b.text).tenant).toBe('b')
    expect(b.headers['idempotent-replayed']).toBeUndefined()
    const aAgain = await send(url, { key, body, headers: { 'x-tenant': 'a' } })
    expect(aAgain.body.equals(a.body)).toBe(true)
    expect(runs()).toBe(2)
    expect(await charges(`WHERE tenant IN ('a', 'b')`)).toBe(2)
  })

  /**
   * Sends one request and its retry to a server set up with a bad scope or fingerprint: both
   * get 500, the handler never runs, and onError gets INVALID_OPTION naming `option`.
   */
  async function expectRefusedBeforeTheKey(option: string, setup: ServerSetup): Promise<void> {
    const { url, runs } = await start(setup)
    const key = randomUUID()
    for (let i = 0; i < 2; i++) {
      expect((await send(url, { key, body: '{"amount":1}' })).status).toBe(500)
    }
    expect(runs()).toBe(0)
    expect(errors.splice(0)).toMatchObject([
      { code: 'INVALID_OPTION', option },
      { code: 'INVALID_OPTION', option },
    ])
    await server?.close()
    server = undefined
  }

  // A scope or fingerprint function typed loosely in JS: a user id as a number, a tenant that
  // is missing, a digest left as a Buffer. The database would store `42.0` (SQLite), a NOT NULL
  // error, or a fingerprint that never equals itself again (every retry a 422).
  it('refuses a scope or fingerprint function that returns no string, before touching the key', async () => {
    const bad: [string, Partial<IdempotencyOptions>][] = [
      ['scope', { scope: () => 42 as unknown as string }],
      ['scope', { scope: async () => undefined as unknown as string }],
      ['scope', { scope: () => '' }],
      ['fingerprint', { fingerprint: () => Buffer.from('fp') as unknown as string }],
    ]
    for (const [option, options] of bad) await expectRefusedBeforeTheKey(option, { options })
  })

  // A scope or fingerprint built from request text (a user name, a path cut at a length) may
  // hold half of a surrogate pair or a NUL. Both databases store U+FFFD for the half, so the
  // request ran and its own retry was answered 422; PostgreSQL refuses NUL with a bare encoding
  // error only at the claim. It is the server's bug, not the client's: 500, and onError gets
  // INVALID_OPTION naming the function, before the handler runs or the key is stored.
  it('refuses a scope or fingerprint that the database cannot store as given, before touching the key', async () => {
    const bad: [string, ServerSetup][] = [
      ['scope', { options: { scope: () => 'user-\uD83D' } }],
      ['scope', { options: { scope: async () => 'user-\u0000' } }],
      ['scope', { adapterScope: () => 'tenant-\uDE00' }],
      [
        'scope',
        { options: { scope: { tenantHeader: 'x-tenant' } }, adapterScope: () => 'a\u0000' },
      ],
      ['fingerprint', { options: { fingerprint: (r) => `${r.route}-\uD83D` } }],
      ['fingerprint', { options: { fingerprint: async () => 'fp-\u0000' } }],
    ]
    for (const [option, setup] of bad) await expectRefusedBeforeTheKey(option, setup)
    // A whole pair is one character like any other: the retry replays.
    const { url, runs } = await start({
      options: { scope: () => 'user-\u{1F600}', fingerprint: () => 'fp-\u{1F600}' },
    })
    const key = randomUUID()
    expect((await send(url, { key, body: '{"amount":1}' })).status).toBe(201)
    const again = await send(url, { key, body: '{"amount":1}' })
    expect(again.headers['idempotent-replayed']).toBe('true')
    expect(runs()).toBe(1)
  })

  // complete() promises to reject only with the key released. A storeResponse that throws left
  // the execution unsettled instead: ctx.tx open (on SQLite every other statement queued behind
  // it) and the key held, both until the lease ran out.
  it('releases the key and rolls back when storeResponse throws', async () => {
    const clock = new ManualClock(Date.now())
    const { url, runs } = await start({
      options: {
        clock,
        storeResponse: () => {
          throw new Error('storeResponse failed')
        },
      },
    })
    const key = randomUUID()
    const before = await charges()
    expect((await send(url, { key, body: '{"amount":4}' })).status).toBe(500)
    expect(errors.splice(0)).toMatchObject([{ message: 'storeResponse failed' }])
    // Nothing left running on the clock: no execution waits for its lease to end.
    expect(clock.pendingTimers).toBe(0)
    expect(await charges()).toBe(before)
    expect(await recordOf('anonymous', key)).toBeUndefined()
    expect(runs()).toBe(1)
  })

  // A promise is truthy: an async storeResponse (`async (status) => status < 500`) recorded every
  // result, 5xx included, and the client's retry was replayed the 503 instead of running again.
  // Refused as a storeResponse that throws is: 500, the key released, the error to onError.
  it('refuses a storeResponse that returns a promise, releasing the key', async () => {
    const clock = new ManualClock(Date.now())
    const storeResponse = async (status: number) => status < 500
    const { url, runs } = await start({
      options: { clock, storeResponse: storeResponse as unknown as (status: number) => boolean },
    })
    const key = randomUUID()
    const before = await charges()
    expect((await send(url, { key, body: '{"amount":503}' })).status).toBe(500)
    expect(errors.splice(0)).toMatchObject([
      { code: 'INVALID_OPTION', option: 'storeResponse', message: /returned a promise/ },
    ])
    expect(clock.pendingTimers).toBe(0)
    expect(await charges()).toBe(before)
    expect(await recordOf('anonymous', key)).toBeUndefined()
    expect(runs()).toBe(1)
  })

  it('scopes by credential by default, so two API keys never share a response', async () => {
    const { url, runs } = await start()
    const key = randomUUID()
    const body = '{"amount":3}'
    const one = await send(url, { key, body, headers: { authorization: 'Bearer one' } })
    const two = await send(url, { key, body, headers: { authorization: 'Bearer two' } })
    expect(one.body.equals(two.body)).toBe(false)
    expect(runs()).toBe(2)
  })

  it('forgets keys after the retention; the sweeper deletes them in bounded batches', async () => {
    const clock = new ManualClock(Date.now())
    const { url, runs } = await start({ options: { clock, retentionMs: 60_000 } })
    const keys = Array.from({ length: 5 }, () => randomUUID())
    for (const key of keys) await send(url, { key, body: '{"amount":1}' })
    await clock.advance(59_999)
    expect(await sweepExpired(testDb.db, { clock })).toBe(0)
    expect((await send(url, { key: keys[0]!, body: '{"amount":1}' })).headers).toHaveProperty(
      'idempotent-replayed',
    )
    await clock.advance(1)
    expect(await sweepExpired(testDb.db, { clock, batchSize: 2, maxBatches: 2 })).toBe(4)
    expect(await sweepExpired(testDb.db, { clock, batchSize: 2 })).toBe(1)
    for (const key of keys) expect(await recordOf('anonymous', key)).toBeUndefined()
    const again = await send(url, { key: keys[0]!, body: '{"amount":2}' })
    expect(again.status).toBe(201)
    expect(runs()).toBe(6)
  })

  it('lets a retry take over an expired lease; the stale holder is fenced and its write rolled back', async () => {
    const clock = new ManualClock(Date.now())
    const hold = gate()
    const { url, runs } = await start({
      options: { clock, leaseMs: 10_000 },
      afterWrite: async ({ attempt }) => {
        if (attempt === 1) await hold.promise
      },
    })
    const key = randomUUID()
    const before = await charges()
    const stale = send(url, { key, body: '{"amount":9}' })
    while (runs() === 0) await new Promise((r) => setImmediate(r))
    const early = await sendWhileHeld(url, key, target.dialect)
    if (early !== undefined) expect(isProblem(early, 409, 'idempotency-key-in-progress')).toBe(true)
    await clock.advance(10_000)
    const fresh = await send(url, { key, body: '{"amount":9}' })
    expect(fresh.status).toBe(201)
    expect(JSON.parse(fresh.text).attempt).toBe(2)
    hold.open()
    const late = await stale
    expect(isProblem(late, 409, 'idempotency-key-in-progress')).toBe(true)
    expect(JSON.parse(late.text).detail).toMatch(/expired/)
    expect((await charges()) - before).toBe(1)
    const replay = await send(url, { key, body: '{"amount":9}' })
    expect(replay.body.equals(fresh.body)).toBe(true)
    expect(runs()).toBe(2)
  })

  // On PostgreSQL a request sent while the holder's transaction is open is answered 409 at
  // once; on SQLite it would queue behind the open transaction (one connection), so it is not
  // sent there.
  async function sendWhileHeld(url: string, key: string, dialect: string) {
    if (dialect === 'sqlite') return undefined
    return send(url, { key, body: '{"amount":9}' })
  }
})
