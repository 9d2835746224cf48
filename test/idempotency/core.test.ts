import { createHash } from 'node:crypto'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  createSweeper,
  type IdempotencyContext,
  IdempotencyInProgressError,
  IdempotencyMismatchError,
  type IdempotencyOptions,
  type IdempotencyRequest,
  type IdempotencyResponse,
  idempotencyChannelNames,
  idempotent,
  sweepExpired,
} from '../../src/idempotency/index.js'
import { ManualClock } from '../../src/testing/index.js'

// The protocol against the in-memory store and a ManualClock. The same scenarios run against
// real SQLite and PostgreSQL in http.test.ts; here every timing is exact.

interface RequestInit {
  readonly method?: string
  readonly route?: string
  readonly key?: string | undefined
  readonly body?: string
  readonly headers?: Record<string, string>
}

function request(init: RequestInit = {}): IdempotencyRequest {
  const headers: Record<string, string> = { ...init.headers }
  if (init.key !== undefined) headers['idempotency-key'] = init.key
  return {
    method: init.method ?? 'POST',
    route: init.route ?? '/charges',
    header: (name) => headers[name.toLowerCase()],
    body: Buffer.from(init.body ?? '{"amount":10}'),
  }
}

function json(status: number, value: unknown, extra: Record<string, string> = {}) {
  return {
    status,
    headers: { 'content-type': 'application/json', ...extra },
    body: Buffer.from(JSON.stringify(value)),
  } satisfies IdempotencyResponse
}

const text = (response: IdempotencyResponse): string => Buffer.from(response.body).toString('utf8')
const problemType = (response: IdempotencyResponse): string => JSON.parse(text(response)).type

function gate(): { readonly promise: Promise<void>; open(): void } {
  let open!: () => void
  const promise = new Promise<void>((resolve) => {
    open = resolve
  })
  return { promise, open }
}

function setup(options: Partial<IdempotencyOptions> = {}) {
  const clock = new ManualClock(1_000_000)
  const store = createMemoryIdempotencyStore()
  const idempotency = createIdempotency({ store, clock, ...options })
  let runs = 0
  const handler = async (ctx: IdempotencyContext | undefined) => {
    runs++
    return json(201, { run: runs, key: ctx?.key ?? null })
  }
  return { clock, store, idempotency, handler, runs: () => runs }
}

describe('the protocol (memory store)', () => {
  it('runs the handler once and replays status, selected headers and body byte for byte', async () => {
    const { idempotency, handler, runs } = setup()
    const first = await idempotency.handle(request({ key: 'k1' }), async (ctx) => ({
      ...(await handler(ctx)),
      headers: { 'content-type': 'application/json', location: '/charges/1', 'set-cookie': 's=1' },
    }))
    const second = await idempotency.handle(request({ key: 'k1' }), handler)
    expect(runs()).toBe(1)
    expect(first.status).toBe(201)
    expect(first.headers['idempotent-replayed']).toBeUndefined()
    expect(second.status).toBe(201)
    expect(Buffer.compare(Buffer.from(second.body), Buffer.from(first.body))).toBe(0)
    expect(second.headers).toEqual({
      'content-type': 'application/json',
      location: '/charges/1',
      'idempotent-replayed': 'true',
    })
  })

  it('keeps keys apart: another key runs again', async () => {
    const { idempotency, handler, runs } = setup()
    await idempotency.handle(request({ key: 'a' }), handler)
    await idempotency.handle(request({ key: 'b' }), handler)
    expect(runs()).toBe(2)
  })

  it('answers 400 problem+json for a missing key, unless keys are optional', async () => {
    const { idempotency, handler, runs } = setup()
    const missing = await idempotency.handle(request({ key: undefined }), handler)
    expect(missing.status).toBe(400)
    expect(missing.headers['content-type']).toBe('application/problem+json')
    expect(problemType(missing)).toBe('https://breakwater.dev/problems/idempotency-key-missing')
    expect(runs()).toBe(0)

    const optional = setup({ required: false })
    const bypassed = await optional.idempotency.handle(
      request({ key: undefined }),
      optional.handler,
    )
    expect(bypassed.status).toBe(201)
    expect(optional.runs()).toBe(1)
  })

  it('answers 400 for oversize and malformed keys without running the handler', async () => {
    const { idempotency, handler, runs } = setup()
    const long = await idempotency.handle(request({ key: 'x'.repeat(256) }), handler)
    expect(long.status).toBe(400)
    expect(JSON.parse(text(long))).toMatchObject({
      type: 'https://breakwater.dev/problems/idempotency-key-too-long',
      code: 'IDEMPOTENCY_KEY_INVALID',
      rule: 'too-long',
    })
    const bad = await idempotency.handle(request({ key: 'a b' }), handler)
    expect(bad.status).toBe(400)
    expect(problemType(bad)).toBe('https://breakwater.dev/problems/idempotency-key-malformed')
    expect(runs()).toBe(0)
  })

  it('answers 400 idempotency-key-repeated to a key on two header lines, as the request tells', async () => {
    const { idempotency, handler, runs } = setup()
    const rule = async (key: string, repeated?: boolean) => {
      const view = request({ key })
      const asked: string[] = []
      const told =
        repeated === undefined
          ? view
          : {
              ...view,
              headerRepeated: (name: string) => {
                asked.push(name)
                return repeated
              },
            }
      const response = await idempotency.handle(told, handler)
      expect(response.status).toBe(400)
      return { rule: JSON.parse(text(response)).rule, type: problemType(response), asked }
    }
    // A request view that cannot count lines: ", " is how the lines were joined.
    expect(await rule('a, b')).toMatchObject({
      rule: 'repeated',
      type: 'https://breakwater.dev/problems/idempotency-key-repeated',
    })
    // One that can is believed, and asked only about a value with a comma in it.
    expect(await rule('a, b', false)).toMatchObject({ rule: 'characters' })
    expect(await rule('a,b', true)).toEqual({
      rule: 'repeated',
      type: 'https://breakwater.dev/problems/idempotency-key-repeated',
      asked: ['idempotency-key'],
    })
    expect(await rule('a b', true)).toMatchObject({ rule: 'characters', asked: [] })
    expect(runs()).toBe(0)
  })

  it('lets unguarded methods through untouched', async () => {
    const { idempotency, handler, runs } = setup()
    const got = await idempotency.handle(request({ method: 'GET', key: undefined }), handler)
    expect(got.status).toBe(201)
    expect(runs()).toBe(1)
    expect(idempotency.appliesTo('post')).toBe(true)
    expect(idempotency.appliesTo('PUT')).toBe(false)
  })

  it('answers 422 when the key is reused with another body, route or method', async () => {
    const { idempotency, handler, runs } = setup()
    await idempotency.handle(request({ key: 'k' }), handler)
    for (const other of [
      request({ key: 'k', body: '{"amount":11}' }),
      request({ key: 'k', route: '/refunds' }),
      request({ key: 'k', method: 'PATCH' }),
    ]) {
      const response = await idempotency.handle(other, handler)
      expect(response.status).toBe(422)
      expect(JSON.parse(text(response))).toMatchObject({
        type: 'https://breakwater.dev/problems/idempotency-key-mismatch',
        code: 'IDEMPOTENCY_MISMATCH',
      })
    }
    expect(runs()).toBe(1)
  })

  it('uses a custom fingerprint when given one', async () => {
    const { idempotency, handler, runs } = setup({ fingerprint: (r) => r.route })
    await idempotency.handle(request({ key: 'k', body: 'a' }), handler)
    const sameRoute = await idempotency.handle(request({ key: 'k', body: 'b' }), handler)
    expect(sameRoute.headers['idempotent-replayed']).toBe('true')
    const otherRoute = await idempotency.handle(request({ key: 'k', route: '/x' }), handler)
    expect(otherRoute.status).toBe(422)
    expect(runs()).toBe(1)
  })

  it('answers 409 with Retry-After while the first request is in flight', async () => {
    const { idempotency, handler, runs } = setup({ retryAfterMs: 2_000 })
    const hold = gate()
    const first = idempotency.handle(request({ key: 'k' }), async (ctx) => {
      await hold.promise
      return handler(ctx)
    })
    await new Promise((r) => setImmediate(r))
    const second = await idempotency.handle(request({ key: 'k' }), handler)
    expect(second.status).toBe(409)
    expect(second.headers['retry-after']).toBe('2')
    expect(problemType(second)).toBe('https://breakwater.dev/problems/idempotency-key-in-progress')
    hold.open()
    expect((await first).status).toBe(201)
    expect(runs()).toBe(1)
  })

  it("in 'wait' mode waits for the first request and replays its response", async () => {
    const { idempotency, handler, runs, clock } = setup({ onConcurrent: 'wait' })
    const hold = gate()
    const first = idempotency.handle(request({ key: 'k' }), async (ctx) => {
      await hold.promise
      return handler(ctx)
    })
    await clock.advance(0)
    let settled = false
    const second = idempotency.handle(request({ key: 'k' }), handler).then((r) => {
      settled = true
      return r
    })
    await clock.advance(1_000)
    expect(settled).toBe(false)
    hold.open()
    await clock.advance(600)
    expect(settled).toBe(true)
    const [a, b] = await Promise.all([first, second])
    expect(runs()).toBe(1)
    expect(text(b)).toBe(text(a))
    expect(b.headers['idempotent-replayed']).toBe('true')
  })

  it("in 'wait' mode gives up with 409 after waitTimeoutMs", async () => {
    const { idempotency, handler, clock } = setup({ onConcurrent: 'wait', waitTimeoutMs: 3_000 })
    const hold = gate()
    const first = idempotency.handle(request({ key: 'k' }), async (ctx) => {
      await hold.promise
      return handler(ctx)
    })
    await clock.advance(0)
    const second = idempotency.handle(request({ key: 'k' }), handler)
    await clock.advance(2_999)
    let settled = false
    void second.then(() => {
      settled = true
    })
    await clock.advance(0)
    expect(settled).toBe(false)
    await clock.advance(1)
    const response = await second
    expect(response.status).toBe(409)
    hold.open()
    await first
  })

  it('releases the key after a 5xx so the retry runs, and records 4xx', async () => {
    const { idempotency, store } = setup()
    let calls = 0
    const flaky = async () =>
      ++calls === 1 ? json(503, { error: 'busy' }) : json(200, { ok: calls })
    expect((await idempotency.handle(request({ key: 'k' }), flaky)).status).toBe(503)
    expect(store.size).toBe(0)
    expect((await idempotency.handle(request({ key: 'k' }), flaky)).status).toBe(200)
    expect(calls).toBe(2)

    const invalid = async () => {
      calls++
      return json(400, { error: 'bad' })
    }
    await idempotency.handle(request({ key: 'bad' }), invalid)
    const replay = await idempotency.handle(request({ key: 'bad' }), invalid)
    expect(replay.status).toBe(400)
    expect(replay.headers['idempotent-replayed']).toBe('true')
    expect(calls).toBe(3)
  })

  it('follows storeResponse to record 5xx or release 4xx', async () => {
    const { idempotency } = setup({ storeResponse: (status) => status < 400 || status === 503 })
    let calls = 0
    const failing = async () => {
      calls++
      return json(calls === 1 ? 503 : 409, {})
    }
    await idempotency.handle(request({ key: 'a' }), failing)
    expect((await idempotency.handle(request({ key: 'a' }), failing)).status).toBe(503)
    expect(calls).toBe(1)
    await idempotency.handle(request({ key: 'b' }), failing)
    await idempotency.handle(request({ key: 'b' }), failing)
    expect(calls).toBe(3)
  })

  it('releases the key when the handler throws, and rethrows', async () => {
    const { idempotency, store, handler, runs } = setup()
    await expect(
      idempotency.handle(request({ key: 'k' }), async () => {
        throw new Error('boom')
      }),
    ).rejects.toThrow('boom')
    expect(store.size).toBe(0)
    expect((await idempotency.handle(request({ key: 'k' }), handler)).status).toBe(201)
    expect(runs()).toBe(1)
  })

  it('lets a retry take over an expired lease; the stale holder is fenced out with 409', async () => {
    const { idempotency, clock } = setup({ leaseMs: 5_000 })
    const hold = gate()
    const attempts: number[] = []
    const stale = idempotency.handle(request({ key: 'k' }), async (ctx) => {
      attempts.push(ctx!.attempt)
      await hold.promise
      return json(201, { by: 'stale' })
    })
    await clock.advance(4_999)
    expect(
      (await idempotency.handle(request({ key: 'k' }), async () => json(201, {}))).status,
    ).toBe(409)
    await clock.advance(1)
    const fresh = await idempotency.handle(request({ key: 'k' }), async (ctx) => {
      attempts.push(ctx!.attempt)
      return json(201, { by: 'fresh' })
    })
    expect(JSON.parse(text(fresh))).toEqual({ by: 'fresh' })
    hold.open()
    const late = await stale
    expect(late.status).toBe(409)
    expect(JSON.parse(text(late)).detail).toMatch(/lease .* expired/)
    expect(attempts).toEqual([1, 2])
    const replay = await idempotency.handle(request({ key: 'k' }), async () => json(500, {}))
    expect(JSON.parse(text(replay))).toEqual({ by: 'fresh' })
  })

  it('resumes after the last committed phase when a retry takes over', async () => {
    const { idempotency, clock } = setup({ leaseMs: 5_000 })
    const effects: string[] = []
    const hang = gate()
    const multiStep = async (ctx: IdempotencyContext | undefined, crash: boolean) => {
      const charge = await ctx!.phase('charge', async () => {
        effects.push('charge')
        return { chargeId: 'ch_1' }
      })
      if (crash) await hang.promise
      const shipment = await ctx!.phase('ship', async () => {
        effects.push('ship')
        return undefined
      })
      return json(201, { charge, shipment: shipment ?? null, resumedFrom: ctx!.recoveryPoint })
    }
    const first = idempotency.handle(request({ key: 'k' }), (ctx) => multiStep(ctx, true))
    await clock.advance(5_000)
    let point: string | undefined
    const second = await idempotency.handle(request({ key: 'k' }), async (ctx) => {
      point = ctx!.recoveryPoint
      return multiStep(ctx, false)
    })
    expect(point).toBe('charge')
    expect(effects).toEqual(['charge', 'ship'])
    expect(JSON.parse(text(second))).toEqual({
      charge: { chargeId: 'ch_1' },
      shipment: null,
      resumedFrom: 'ship',
    })
    hang.open()
    expect((await first).status).toBe(409)
  })

  it('treats a key past its retention as new, and the sweeper deletes expired records in batches', async () => {
    const { idempotency, store, clock, handler, runs } = setup({ retentionMs: 10_000 })
    for (let i = 0; i < 25; i++) await idempotency.handle(request({ key: `k${i}` }), handler)
    await clock.advance(9_999)
    await idempotency.handle(request({ key: 'k0' }), handler)
    expect(runs()).toBe(25)
    await clock.advance(1)
    expect(await sweepExpired(store, { clock, batchSize: 10, maxBatches: 2 })).toBe(20)
    expect(store.size).toBe(5)
    // Not swept yet but expired: the key is free again, even for another body.
    const reused = await idempotency.handle(request({ key: 'k24', body: 'new' }), handler)
    expect(reused.status).toBe(201)
    expect(runs()).toBe(26)
    expect(await sweepExpired(store, { clock, batchSize: 10 })).toBe(4)
    expect(store.size).toBe(1)
  })

  // It returns a promise, so bad input must reject it: thrown at the call, the refusal escaped
  // a caller's .catch() (sweepExpired(db, cfg).catch(log) in a timer ended the process).
  it('rejects, rather than throws at the call, for options or a store it cannot take', async () => {
    const store = createMemoryIdempotencyStore()
    const calls = [
      () => sweepExpired(store, { batchSize: 0 }),
      () => sweepExpired(store, { maxBatches: -1 }),
      () => sweepExpired(store, { batchSz: 10 } as never),
      () => sweepExpired(store, 5 as never),
      () => sweepExpired(1 as never),
    ]
    for (const call of calls) {
      let swept: Promise<number> | undefined
      expect(() => {
        swept = call()
      }).not.toThrow()
      await expect(swept).rejects.toBeInstanceOf(InvalidOptionError)
    }
  })

  it('runs a background sweeper on the clock until closed', async () => {
    const { idempotency, store, clock, handler } = setup({ retentionMs: 1_000 })
    const sweeper = createSweeper({ store, clock, intervalMs: 5_000, batchSize: 2 })
    for (let i = 0; i < 5; i++) await idempotency.handle(request({ key: `k${i}` }), handler)
    await clock.advance(4_999)
    expect(store.size).toBe(5)
    await clock.advance(1)
    expect(store.size).toBe(0)
    await sweeper.close()
    await idempotency.handle(request({ key: 'late' }), handler)
    await clock.advance(60_000)
    expect(store.size).toBe(1)
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('ctx.deferWrite on the memory store', () => {
  // There is no database: the write is refused like any statement on ctx.tx, and the call fails
  // with that refusal instead of recording a result the write never joined.
  it("fails the call with the store's refusal and records nothing", async () => {
    const { idempotency } = setup()
    let runs = 0
    const step = () =>
      idempotency.run('deferred', (ctx) => {
        runs++
        ctx.deferWrite('INSERT INTO charges (id) VALUES ($1)', ['c1'])
        return 'charged'
      })
    await expect(step()).rejects.toThrow(/has no database/)
    await expect(step()).rejects.toThrow(/has no database/)
    expect(runs).toBe(2)
  })
})

describe('sweeper', () => {
  // close() promises no sweep after it: a sweep the timer started while another (sweepNow) ran
  // was waiting its turn, and began once close() had returned, against a database the caller
  // may already have closed.
  it('starts no sweep after close(), not even one the timer queued behind a running sweep', async () => {
    const clock = new ManualClock(1_000)
    const memory = createMemoryIdempotencyStore()
    const started: number[] = []
    const held = gate()
    const store = {
      ...memory,
      async sweep(nowMs: number, limit: number) {
        started.push(nowMs)
        if (started.length === 1) await held.promise
        return memory.sweep(nowMs, limit)
      },
    }
    const sweeper = createSweeper({ store, clock, intervalMs: 5_000 })
    const manual = sweeper.sweepNow()
    expect(started).toEqual([1_000])
    // The timer's sweep now waits for the manual one.
    await clock.advance(5_000)
    const closed = sweeper.close()
    held.open()
    expect(await manual).toBe(0)
    await closed
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r))
    expect(started).toEqual([1_000])
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('scopes', () => {
  const sha = (value: string) => createHash('sha256').update(value).digest('hex')

  it('scopes keys per credential by default and never stores the credential', async () => {
    const { idempotency, store, handler, runs } = setup()
    const alice = { authorization: 'Bearer alice-secret' }
    const bob = { authorization: 'Bearer bob-secret' }
    await idempotency.handle(request({ key: 'k', headers: alice }), handler)
    const asBob = await idempotency.handle(request({ key: 'k', headers: bob }), handler)
    expect(asBob.headers['idempotent-replayed']).toBeUndefined()
    const asAlice = await idempotency.handle(request({ key: 'k', headers: alice }), handler)
    expect(asAlice.headers['idempotent-replayed']).toBe('true')
    expect(runs()).toBe(2)
    expect(await store.get(`credential:${sha('Bearer alice-secret')}`, 'k')).toBeDefined()
    await idempotency.handle(request({ key: 'k', headers: { 'x-api-key': 'key-1' } }), handler)
    expect(await store.get(`credential:${sha('key-1')}`, 'k')).toBeDefined()
    await idempotency.handle(request({ key: 'k' }), handler)
    expect(await store.get('anonymous', 'k')).toBeDefined()
  })

  it('scopes per tenant header, falling back to the credential', async () => {
    const { idempotency, store, handler, runs } = setup({ scope: { tenantHeader: 'X-Tenant' } })
    await idempotency.handle(request({ key: 'k', headers: { 'x-tenant': 'a' } }), handler)
    const b = await idempotency.handle(request({ key: 'k', headers: { 'x-tenant': 'b' } }), handler)
    expect(JSON.parse(text(b)).run).toBe(2)
    const a = await idempotency.handle(request({ key: 'k', headers: { 'x-tenant': 'a' } }), handler)
    expect(JSON.parse(text(a)).run).toBe(1)
    expect(runs()).toBe(2)
    expect(await store.get('tenant:a', 'k')).toBeDefined()
    await idempotency.handle(request({ key: 'k', headers: { authorization: 't' } }), handler)
    expect(await store.get(`credential:${sha('t')}`, 'k')).toBeDefined()
  })

  it('uses a scope function, and a scope given by the adapter wins', async () => {
    const { idempotency, store, handler } = setup({ scope: (r) => `user:${r.header('x-user')}` })
    await idempotency.handle(request({ key: 'k', headers: { 'x-user': '7' } }), handler)
    expect(await store.get('user:7', 'k')).toBeDefined()
    await idempotency.handle({ ...request({ key: 'k' }), scope: 'fixed' }, handler)
    expect(await store.get('fixed', 'k')).toBeDefined()
  })
})

describe('idempotent() on the memory store', () => {
  it('runs once per key and returns the recorded result as a JSON round trip', async () => {
    const store = createMemoryIdempotencyStore()
    let runs = 0
    const step = async () => {
      runs++
      return { at: new Date(0), n: runs }
    }
    const first = await idempotent('saga-1:reserve', step, { store })
    const second = await idempotent('saga-1:reserve', step, { store })
    expect(first).toEqual({ at: '1970-01-01T00:00:00.000Z', n: 1 })
    expect(second).toEqual(first)
    expect(runs).toBe(1)
    expect(await idempotent('saga-1:reserve', step, { store, scope: 'other' })).toEqual({
      at: '1970-01-01T00:00:00.000Z',
      n: 2,
    })
    expect(await idempotent('void', async () => undefined, { store })).toBeUndefined()
    expect(await idempotent('void', async () => 'ran again', { store })).toBeUndefined()
  })

  it('releases the key when fn throws, so the next call runs it again', async () => {
    const store = createMemoryIdempotencyStore()
    await expect(
      idempotent(
        'k',
        async () => {
          throw new Error('step failed')
        },
        { store },
      ),
    ).rejects.toThrow('step failed')
    expect(await idempotent('k', async () => 'second try', { store })).toBe('second try')
  })

  it('throws IdempotencyInProgressError for a concurrent call, or waits for it', async () => {
    const clock = new ManualClock()
    const store = createMemoryIdempotencyStore()
    const hold = gate()
    const first = idempotent(
      'k',
      async () => {
        await hold.promise
        return 'first'
      },
      { store, clock },
    )
    await clock.advance(0)
    const busy = await idempotent('k', async () => 'second', { store, clock }).catch((e) => e)
    expect(busy).toBeInstanceOf(IdempotencyInProgressError)
    expect(busy.reason).toBe('in-flight')
    expect(busy.retryAfterMs).toBe(1_000)
    const waiting = idempotent('k', async () => 'second', { store, clock, onConcurrent: 'wait' })
    await clock.advance(100)
    hold.open()
    await clock.advance(500)
    expect(await waiting).toBe('first')
    expect(await first).toBe('first')
  })

  it('throws IdempotencyMismatchError when the fingerprint differs', async () => {
    const store = createMemoryIdempotencyStore()
    await idempotent('k', async () => 1, { store, fingerprint: 'order=1' })
    await expect(
      idempotent('k', async () => 2, { store, fingerprint: 'order=2' }),
    ).rejects.toBeInstanceOf(IdempotencyMismatchError)
  })

  it('refuses ctx.tx statements on the memory store, which has no database', async () => {
    const store = createMemoryIdempotencyStore()
    await expect(
      idempotent('k', async (ctx) => ctx.tx.execute('SELECT 1'), { store }),
    ).rejects.toThrow(/no database/)
    expect(store.size).toBe(0)
  })
})

describe('options', () => {
  it('are validated at construction, naming the option', () => {
    const store = createMemoryIdempotencyStore()
    const bad: Array<[Partial<IdempotencyOptions>, string]> = [
      [{ leaseMs: 0 }, 'leaseMs'],
      [{ retentionMs: -1 }, 'retentionMs'],
      [{ onConcurrent: 'queue' as 'wait' }, 'onConcurrent'],
      [{ waitTimeoutMs: Number.NaN }, 'waitTimeoutMs'],
      [{ methods: ['POST', ''] }, 'methods[1]'],
      [{ required: 'yes' as unknown as boolean }, 'required'],
      [{ scope: { tenantHeader: '' } }, 'scope.tenantHeader'],
      [{ scope: 'global' as 'credential' }, 'scope'],
      [{ fingerprint: 'sha' as unknown as () => string }, 'fingerprint'],
      [{ replayHeaders: [1] as unknown as string[] }, 'replayHeaders'],
      [{ claim: 'inline' as 'leased' }, 'claim'],
      // The in-memory store cannot claim inside a database transaction.
      [{ claim: 'in-transaction' }, 'store'],
    ]
    for (const [options, name] of bad) {
      let error: unknown
      try {
        createIdempotency({ store, ...options })
      } catch (e) {
        error = e
      }
      expect(error, name).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(name)
    }
    expect(() => createIdempotency({ store: {} as never })).toThrow(InvalidOptionError)
  })
})

describe('diagnostics channels', () => {
  it('publishes each protocol step on breakwater:idempotency:<event>', async () => {
    const seen: string[] = []
    const listeners = Object.entries(idempotencyChannelNames).map(([event, name]) => {
      const listener = (message: unknown) => {
        const m = message as { key?: string; attempt?: number; reason?: string; code?: string }
        seen.push([event, m.key ?? m.code, m.attempt ?? m.reason].filter(Boolean).join(' '))
      }
      subscribe(name, listener)
      return () => unsubscribe(name, listener)
    })
    try {
      const { idempotency, handler, clock } = setup({ leaseMs: 1_000 })
      await idempotency.handle(request({ key: 'a' }), handler)
      await idempotency.handle(request({ key: 'a' }), handler)
      await idempotency.handle(request({ key: 'a', body: 'other' }), handler)
      await idempotency.handle(request({ key: 'b' }), async () => json(503, {}))
      await idempotency.handle(request({ key: undefined }), handler)
      const hold = gate()
      const stale = idempotency.handle(request({ key: 'c' }), async () => {
        await hold.promise
        return json(201, {})
      })
      await idempotency.handle(request({ key: 'c' }), handler)
      await clock.advance(1_000)
      await idempotency.handle(request({ key: 'c' }), handler)
      hold.open()
      await stale
      expect(seen).toEqual([
        'claimed a 1',
        'recorded a',
        'replayed a',
        'mismatch a',
        'claimed b 1',
        'released b',
        'key-rejected IDEMPOTENCY_KEY_MISSING',
        'claimed c 1',
        'in-progress c in-flight',
        'lease-lost c',
        'claimed c 2',
        'recorded c',
      ])
    } finally {
      for (const stop of listeners) stop()
    }
  })
})

describe('replayHeaders', () => {
  const refusal = (replayHeaders: readonly string[]): InvalidOptionError => {
    try {
      createIdempotency({ store: createMemoryIdempotencyStore(), replayHeaders })
    } catch (error) {
      expect(error).toBeInstanceOf(InvalidOptionError)
      return error as InvalidOptionError
    }
    throw new Error(`replayHeaders ${JSON.stringify(replayHeaders)} was accepted`)
  }

  it('refuses hop-by-hop and framing headers, naming the option and the header', () => {
    // Replayed, these would describe the replay's connection or framing, not its content:
    // `connection: close` would close the client's keep-alive connection on every replay,
    // `transfer-encoding: chunked` would frame a fixed-length body, and HTTP/2 refuses them.
    for (const name of [
      'Transfer-Encoding',
      'connection',
      'keep-alive',
      'upgrade',
      'te',
      'trailer',
      'proxy-connection',
      'content-length',
    ]) {
      const error = refusal(['content-type', name])
      expect(error.option, name).toBe('replayHeaders')
      expect(error.message, name).toContain(JSON.stringify(name))
    }
  })

  it('refuses names that are not HTTP header tokens', () => {
    for (const name of [
      '',
      'x request id',
      'x-id:',
      'x-id\r\nx-evil',
      ' etag',
      'é-tag',
      ':status',
    ]) {
      const error = refusal(['etag', name])
      expect(error.option, JSON.stringify(name)).toBe('replayHeaders')
      expect(error.message, JSON.stringify(name)).toContain(JSON.stringify(name))
    }
  })

  it('accepts token characters, and matches names case-insensitively (duplicates by case collapse)', async () => {
    const { idempotency } = setup({
      replayHeaders: ['X-Request-Id', 'x-request-id', "x!#$%&'*+.^_`|~9"],
    })
    const respond = async () =>
      json(201, {}, { 'x-REQUEST-id': 'r1', "X!#$%&'*+.^_`|~9": 'odd', 'x-other': 'no' })
    await idempotency.handle(request({ key: 'k' }), respond)
    const replay = await idempotency.handle(request({ key: 'k' }), respond)
    expect(replay.headers).toEqual({
      'x-request-id': 'r1',
      "x!#$%&'*+.^_`|~9": 'odd',
      'idempotent-replayed': 'true',
    })
  })
})
