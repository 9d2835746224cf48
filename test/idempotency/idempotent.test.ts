// idempotent() for non-HTTP work (message consumers, saga steps) on real SQLite and PostgreSQL.
import { randomBytes, randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdempotency,
  IdempotencyInProgressError,
  IdempotencyMismatchError,
  idempotent,
  maxScopeBytes,
  sweepExpired,
} from '../../src/idempotency/index.js'
import { TransactionMisuseError } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { countRows, dbTargets, type TestDb } from './databases.js'
import { gate } from './servers.js'

describe.each(dbTargets)('idempotent() on $dialect', (target) => {
  let testDb: TestDb

  beforeAll(async () => {
    testDb = await target.open('idem_run')
    await testDb.db.execute('CREATE TABLE shipments (id TEXT PRIMARY KEY, order_id TEXT NOT NULL)')
  })
  afterAll(async () => {
    await testDb?.close()
  })

  const shipments = (orderId: string) =>
    countRows(testDb.db, 'shipments', `WHERE order_id = '${orderId}'`)

  it('refuses a result or phase value JSON would change (NaN), releases the key, records nothing', async () => {
    const key = randomUUID()
    const options = { store: testDb.db, scope: 'non-finite' }
    const result = await idempotent(key, async () => ({ price: Number.NaN }), options).catch(
      (e: unknown) => e,
    )
    expect(result).toMatchObject({ code: 'INVALID_OPTION' })
    expect(String((result as Error).message)).toMatch(/NaN at result\.price/)
    const phase = await idempotent(
      key,
      (ctx) => ctx.phase('quote', async () => ({ total: Number.POSITIVE_INFINITY })),
      options,
    ).catch((e: unknown) => e)
    expect(phase).toMatchObject({ code: 'INVALID_OPTION' })
    expect(await idempotent(key, async () => ({ price: 1 }), options)).toEqual({ price: 1 })
  })

  // An invalid Date or undefined in an array was recorded as null (the first call got its
  // value, every later call null), and a throwing toJSON escaped as the caller's bare Error.
  // Like NaN: refused after fn ran (its transaction rolls back), the key released.
  it('refuses a result with an invalid Date, undefined in an array or a throwing toJSON, like NaN', async () => {
    const key = randomUUID()
    const options = { store: testDb.db, scope: 'null-loss' }
    const orderId = randomUUID()
    let runs = 0
    const run = (result: unknown) =>
      idempotent(
        key,
        async (ctx) => {
          runs++
          await ctx.tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
            randomUUID(),
            orderId,
          ])
          return result
        },
        options,
      ).catch((e: unknown) => e)
    const date = await run({ shippedAt: new Date('nope') })
    expect(date).toMatchObject({ code: 'INVALID_OPTION', option: 'result' })
    expect(String((date as Error).message)).toContain('an invalid Date at result.shippedAt')
    const hole = await run({ parcels: [undefined] })
    expect(String((hole as Error).message)).toContain('undefined at result.parcels[0]')
    const boom = new Error('boom')
    const thrown = await run({
      label: {
        toJSON() {
          throw boom
        },
      },
    })
    expect(thrown).toMatchObject({ code: 'INVALID_OPTION', option: 'result' })
    expect((thrown as Error).cause).toBe(boom)
    const phase = await idempotent(
      key,
      (ctx) => ctx.phase('quote', async () => [new Date(Number.NaN)]),
      options,
    ).catch((e: unknown) => e)
    expect(phase).toMatchObject({ code: 'INVALID_OPTION' })
    expect(runs).toBe(3)
    expect(await shipments(orderId)).toBe(0)
    expect(await run({ ok: true })).toEqual({ ok: true })
    expect(runs).toBe(4)
    expect(await shipments(orderId)).toBe(1)
  })

  it('records and replays under a clock with a fraction of a millisecond (ManualClock after a jittered timer)', async () => {
    const clock = new ManualClock(1_700_000_000_000.5)
    const options = { store: testDb.db, scope: 'fractional-clock', clock }
    const key = randomUUID()
    let runs = 0
    const step = () =>
      idempotent(
        key,
        async () => {
          runs++
          return { ok: true }
        },
        options,
      )
    expect(await step()).toEqual({ ok: true })
    await clock.advance(0.25)
    expect(await step()).toEqual({ ok: true })
    expect(runs).toBe(1)
  })

  it('runs a saga step once and returns the recorded result to every later call', async () => {
    const orderId = randomUUID()
    let runs = 0
    const step = () =>
      idempotent(
        `${orderId}:create-shipment`,
        async (ctx) => {
          runs++
          const id = randomUUID()
          await ctx.tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
            id,
            orderId,
          ])
          return { shipmentId: id, attempt: ctx.attempt }
        },
        { store: testDb.db, scope: 'order-saga' },
      )
    const first = await step()
    const second = await step()
    expect(second).toEqual(first)
    expect(first.attempt).toBe(1)
    expect(runs).toBe(1)
    expect(await shipments(orderId)).toBe(1)
  })

  it('rolls back the writes of a step that throws and lets the next call run it', async () => {
    const orderId = randomUUID()
    const key = `${orderId}:create-shipment`
    await expect(
      idempotent(
        key,
        async (ctx) => {
          await ctx.tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
            randomUUID(),
            orderId,
          ])
          throw new Error('carrier down')
        },
        { store: testDb.db },
      ),
    ).rejects.toThrow('carrier down')
    expect(await shipments(orderId)).toBe(0)
    const done = await idempotent(
      key,
      async (ctx) => {
        await ctx.tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
          randomUUID(),
          orderId,
        ])
        return 'shipped'
      },
      { store: testDb.db },
    )
    expect(done).toBe('shipped')
    expect(await shipments(orderId)).toBe(1)
  })

  it('lets one of 50 concurrent consumers run; the others get IdempotencyInProgressError or, waiting, the result', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const waiting = createIdempotency({ store: testDb.db, onConcurrent: 'wait' })
    const orderId = randomUUID()
    const hold = gate()
    let runs = 0
    const consume = (core: typeof idempotency) =>
      core.run(`message-${orderId}`, async (ctx) => {
        runs++
        await hold.promise
        await ctx.tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
          randomUUID(),
          orderId,
        ])
        return { handled: orderId }
      })
    const winner = consume(idempotency)
    while (runs === 0) await new Promise((r) => setImmediate(r))
    const rejected = await Promise.all(
      Array.from({ length: 25 }, () => consume(idempotency).catch((e: unknown) => e)),
    )
    const waiters = Array.from({ length: 25 }, () => consume(waiting))
    hold.open()
    expect(await winner).toEqual({ handled: orderId })
    for (const error of rejected) {
      expect(error).toBeInstanceOf(IdempotencyInProgressError)
      expect((error as IdempotencyInProgressError).code).toBe('IDEMPOTENCY_IN_PROGRESS')
    }
    expect(await Promise.all(waiters)).toEqual(Array(25).fill({ handled: orderId }))
    expect(runs).toBe(1)
    expect(await shipments(orderId)).toBe(1)
  })

  // A key cut from user text (`name.slice(0, 255)`) may end in half of a surrogate pair. Such a
  // string has no UTF-8 form: PostgreSQL stores U+FFFD for it, so two different keys became one
  // and the second call returned the first one's result without running.
  it('refuses a key or scope with a lone surrogate, which the database cannot store as given', async () => {
    const results: string[] = []
    for (const key of ['order-\uD83D', 'order-\uD83C']) {
      results.push(
        await idempotent(key, () => key, { store: testDb.db }).catch(
          (error: { code?: string; rule?: string }) => `${error.code}:${error.rule}`,
        ),
      )
    }
    expect(results).toEqual([
      'IDEMPOTENCY_KEY_INVALID:characters',
      'IDEMPOTENCY_KEY_INVALID:characters',
    ])
    await expect(
      idempotent('k', () => 1, { store: testDb.db, scope: 'saga-\uDC00' }),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'scope' })
    // A whole pair is one character like any other.
    expect(
      await idempotent(`order-${randomUUID()}-\u{1F600}`, () => 'ok', { store: testDb.db }),
    ).toBe('ok')
  })

  // A fingerprint made of the call's input text may hold half of a surrogate pair too (text cut
  // at a length), or a NUL. The database cannot store such a string as given (both dialects
  // store U+FFFD for the half, PostgreSQL refuses NUL with a bare encoding error), so the
  // same call retried was answered with IdempotencyMismatchError instead of its result.
  it('refuses a fingerprint or scope the database cannot store as given, before running fn', async () => {
    let runs = 0
    for (const fingerprint of ['input-\uD83D', 'input-\u0000']) {
      const key = randomUUID()
      await expect(
        idempotent(key, () => ++runs, { store: testDb.db, fingerprint }),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'fingerprint' })
    }
    await expect(
      idempotent(randomUUID(), () => ++runs, { store: testDb.db, scope: 'saga-\u0000' }),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'scope' })
    expect(runs).toBe(0)
    // A whole pair is one character like any other: the retry replays.
    const key = randomUUID()
    const fingerprint = 'input-\u{1F600}'
    expect(await idempotent(key, () => ++runs, { store: testDb.db, fingerprint })).toBe(1)
    expect(await idempotent(key, () => ++runs, { store: testDb.db, fingerprint })).toBe(1)
  })

  // The documented default: a left-out fingerprint is '', compared like any other.
  it('matches calls that all leave the fingerprint out, but not one with a fingerprint', async () => {
    let runs = 0
    const key = randomUUID()
    expect(await idempotent(key, () => ++runs, { store: testDb.db })).toBe(1)
    expect(await idempotent(key, () => ++runs, { store: testDb.db })).toBe(1)
    await expect(
      idempotent(key, () => ++runs, { store: testDb.db, fingerprint: 'b' }),
    ).rejects.toBeInstanceOf(IdempotencyMismatchError)
    const other = randomUUID()
    expect(await idempotent(other, () => ++runs, { store: testDb.db, fingerprint: 'b' })).toBe(2)
    await expect(idempotent(other, () => ++runs, { store: testDb.db })).rejects.toBeInstanceOf(
      IdempotencyMismatchError,
    )
    expect(runs).toBe(2)
  })

  // Scope and key are one primary-key entry. PostgreSQL refuses an index entry over 2,704 bytes
  // (a bare 54000 "index row size" error, after the key was parsed) where SQLite stores any
  // length, so a long scope worked on one database and failed on the other. Refused on both,
  // by the same rule, before anything is claimed; a key at its longest still fits beside it.
  it('refuses a scope longer than maxScopeBytes before claiming, on both databases', async () => {
    let runs = 0
    // 2,800 characters that do not compress: PostgreSQL answered 54000, SQLite ran fn.
    const long = randomBytes(2100).toString('base64')
    const error = await idempotent(randomUUID(), () => ++runs, {
      store: testDb.db,
      scope: long,
    }).catch((e: unknown) => e)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'scope' })
    expect((error as Error).message).toMatch(new RegExp(`at most ${maxScopeBytes} UTF-8 bytes`))
    // At one byte over, and counted in bytes: three-byte characters are refused at a third.
    await expect(
      idempotent(randomUUID(), () => ++runs, {
        store: testDb.db,
        scope: 'a'.repeat(maxScopeBytes + 1),
      }),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'scope' })
    await expect(
      idempotent(randomUUID(), () => ++runs, {
        store: testDb.db,
        scope: '\u20ac'.repeat(Math.floor(maxScopeBytes / 3) + 1),
      }),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'scope' })
    expect(runs).toBe(0)
    // The longest scope and the longest key (three bytes a character) are stored, and replayed.
    const scope = randomBytes(maxScopeBytes).toString('base64').slice(0, maxScopeBytes)
    const key = `${randomUUID()}${'\u20ac'.repeat(255 - 36)}`
    expect(await idempotent(key, () => ++runs, { store: testDb.db, scope })).toBe(1)
    expect(await idempotent(key, () => ++runs, { store: testDb.db, scope })).toBe(1)
  })

  it('refuses a key reused with another fingerprint', async () => {
    const key = randomUUID()
    await idempotent(key, () => 1, { store: testDb.db, fingerprint: 'a' })
    await expect(
      idempotent(key, () => 2, { store: testDb.db, fingerprint: 'b' }),
    ).rejects.toBeInstanceOf(IdempotencyMismatchError)
  })

  // An in-progress record's retention must not end while its holder's lease is live: neither a
  // duplicate (recycling it as "past retention") nor the sweeper may free a key in use, or the
  // work runs twice at once. Three ways a lease reached past the record's expiry: a retention
  // shorter than the lease, a takeover late in the retention, a phase renewing the lease.
  it('never frees a key past its retention while its holder lease is live (duplicate, sweeper)', async () => {
    const clock = new ManualClock(Date.now())
    const scenarios = [
      { retentionMs: 1_000, takeOverAt: undefined, phaseAt: undefined },
      { retentionMs: 20_000, takeOverAt: 15_000, phaseAt: undefined },
      { retentionMs: 15_000, takeOverAt: undefined, phaseAt: 8_000 },
    ]
    for (const { retentionMs, takeOverAt, phaseAt } of scenarios) {
      const idempotency = createIdempotency({
        store: testDb.db,
        clock,
        leaseMs: 10_000,
        retentionMs,
      })
      const key = randomUUID()
      const crash = gate()
      const hold = gate()
      const phase = gate()
      let runs = 0
      const holder = idempotency.run(key, async (ctx) => {
        runs++
        if (ctx.attempt === 1 && takeOverAt !== undefined) await crash.promise
        if (phaseAt !== undefined) {
          await phase.promise
          await ctx.phase('renew', () => 'renewed')
        }
        await hold.promise
        return { attempt: ctx.attempt }
      })
      const started = clock.now()
      while (runs === 0) await new Promise((r) => setImmediate(r))
      let taker: Promise<{ attempt: number }> = holder
      if (takeOverAt !== undefined) {
        await clock.advance(takeOverAt)
        taker = idempotency.run(key, async (ctx) => {
          runs++
          await hold.promise
          return { attempt: ctx.attempt }
        })
        while (runs === 1) await new Promise((r) => setImmediate(r))
      }
      if (phaseAt !== undefined) {
        await clock.advance(phaseAt)
        phase.open()
        for (
          let i = 0;
          i < 1_000 && (await idempotency.store.get('default', key))?.recoveryPoint !== 'renew';
          i++
        ) {
          await new Promise((r) => setImmediate(r))
        }
      }
      // Past the record's retention, within the current holder's lease.
      await clock.advance(
        started + Math.max(retentionMs, takeOverAt ?? 0, phaseAt ?? 0) + 1 - clock.now(),
      )
      await sweepExpired(testDb.db, { clock })
      expect(await idempotency.store.get('default', key)).toMatchObject({ state: 'in_progress' })
      await expect(
        idempotency.run(key, async () => {
          runs++
          return { attempt: 0 }
        }),
      ).rejects.toBeInstanceOf(IdempotencyInProgressError)
      hold.open()
      expect(await taker).toEqual({ attempt: takeOverAt === undefined ? 1 : 2 })
      expect(runs).toBe(takeOverAt === undefined ? 1 : 2)
      crash.open()
      await holder.catch(() => {})
    }
  })

  // The lease runs out while fn is inside a savepoint of ctx.tx: ctx.tx is rolled back, and what
  // fn then writes through the savepoint must go nowhere (not commit on its own beside the
  // result the next holder records).
  it('refuses the writes of a holder whose lease ran out inside a savepoint of ctx.tx', async () => {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({ store: testDb.db, clock, leaseMs: 10_000 })
    const orderId = randomUUID()
    const hang = gate()
    let entered = false
    const stale = idempotency.run(orderId, async (ctx) => {
      await ctx.tx.transaction(async (savepoint) => {
        entered = true
        await hang.promise
        await savepoint.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
          `${orderId}-late`,
          orderId,
        ])
      })
      return { attempt: ctx.attempt }
    })
    while (!entered) await new Promise((r) => setImmediate(r))
    await clock.advance(10_000)
    const retried = await idempotency.run(orderId, async (ctx) => {
      await ctx.tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
        `${orderId}-${ctx.attempt}`,
        orderId,
      ])
      return { attempt: ctx.attempt }
    })
    expect(retried).toEqual({ attempt: 2 })
    hang.open()
    // As for a statement on ctx.tx itself: the handler learns that its lease was lost.
    await expect(stale).rejects.toMatchObject({
      code: 'IDEMPOTENCY_IN_PROGRESS',
      reason: 'lease-lost',
    })
    expect(await shipments(orderId)).toBe(1)
  })

  // A phase name is stored as text (the recovery point). One with a NUL or half of a surrogate
  // pair failed only when the phase was saved (PostgreSQL: a bare encoding error; both: U+FFFD
  // for the half, so a takeover would not find the phase and run it again), after fn's call to
  // another system had already been made. It is refused before fn runs.
  it('refuses a phase name the database cannot store as given, before running the phase', async () => {
    const calls: string[] = []
    for (const name of ['charge-\u0000', 'charge-\uD83D', '']) {
      await expect(
        idempotent(randomUUID(), (ctx) => ctx.phase(name, () => calls.push(name)), {
          store: testDb.db,
        }),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'ctx.phase(name)' })
    }
    expect(calls).toEqual([])
    // A whole pair is one character like any other.
    const key = randomUUID()
    const run = () =>
      idempotent(key, (ctx) => ctx.phase('charge-\u{1F600}', () => calls.push('pair')), {
        store: testDb.db,
      })
    expect(await run()).toBe(1)
    expect(await run()).toBe(1)
    expect(calls).toEqual(['pair'])
  })

  // ctx.phase() handed the handler the very object it kept as the phase's recorded value, and
  // every later phase saves all phases committed before it: a handler that changed what a phase
  // returned (cart.items.push(...)) had the change saved as that phase's result with its next
  // phase, so the retry that took over after a crash resumed with a value the phase never
  // returned. The same for a phase replayed to a holder that took over. Each holder here is a
  // process of its own (its own clock); the first two hang after their last phase (a crash).
  it('resumes with what a phase returned, whatever the handler later did to its value', async () => {
    const key = randomUUID()
    const run = (nowMs: number, fn: Parameters<typeof idempotent>[1]) =>
      createIdempotency({ store: testDb.db, clock: new ManualClock(nowMs), leaseMs: 10_000 }).run(
        key,
        fn,
        { scope: 'mutated-phase' },
      )
    const seen: unknown[] = []
    const crashed = gate()
    void run(1_000_000, async (ctx) => {
      const cart = await ctx.phase('load', () => ({ items: ['book'] }))
      cart.items.push('changed by attempt 1')
      // The phase as recorded, asked for again in the same attempt.
      seen.push(await ctx.phase('load', () => ({ items: ['ran again'] })))
      await ctx.phase('reserve', () => 'reserved')
      crashed.open()
      await new Promise(() => {})
    }).catch(() => {})
    await crashed.promise
    const charged = gate()
    void run(1_010_001, async (ctx) => {
      const cart = await ctx.phase('load', () => ({ items: ['ran again'] }))
      seen.push(structuredClone(cart))
      cart.items.push('changed by attempt 2')
      await ctx.phase('charge', () => 'charged')
      charged.open()
      await new Promise(() => {})
    }).catch(() => {})
    await charged.promise
    const third = await run(1_030_002, async (ctx) => ({
      attempt: ctx.attempt,
      load: await ctx.phase('load', () => ({ items: ['ran again'] })),
    }))
    expect(seen).toEqual([{ items: ['book'] }, { items: ['book'] }])
    expect(third).toEqual({ attempt: 3, load: { items: ['book'] } })
  })

  // A call that failed after a phase committed released the key by deleting its record, the
  // phase's recorded result with it: the retry ran the phase (a charge) again. As in Stripe's
  // design the key now keeps its recovery point and only its lease ends, so the retry takes it
  // over at once and resumes after the committed phases.
  it('keeps committed phases when the call fails after them: the retry resumes, nothing runs twice', async () => {
    const key = randomUUID()
    const clock = new ManualClock(2_000_000)
    const idem = createIdempotency({ store: testDb.db, clock, leaseMs: 10_000 })
    const charges: string[] = []
    const failed = await idem
      .run(
        key,
        async (ctx) => {
          await ctx.phase('charge', () => {
            charges.push(`attempt ${ctx.attempt}`)
            return 'ch_1'
          })
          throw new Error('shipping service down')
        },
        { scope: 'failed-after-phase' },
      )
      .catch((e: unknown) => e)
    expect((failed as Error).message).toBe('shipping service down')
    // At once, no time passed: the lease was ended, not left to run out.
    const retried = await idem.run(
      key,
      async (ctx) => ({
        attempt: ctx.attempt,
        recoveryPoint: ctx.recoveryPoint,
        charge: await ctx.phase('charge', () => {
          charges.push(`attempt ${ctx.attempt}`)
          return 'ch_2'
        }),
      }),
      { scope: 'failed-after-phase' },
    )
    expect(retried).toEqual({ attempt: 2, recoveryPoint: 'charge', charge: 'ch_1' })
    expect(charges).toEqual(['attempt 1'])
  })

  // A signal that is not an AbortSignal was used only when the call waited for another holder,
  // and then failed with a bare TypeError (after arming the poll's timer): accepted silently
  // until the one call that had to wait. It is refused before anything runs, as are options
  // that are not an object.
  it('refuses a signal that is not an AbortSignal, and options that are not an object, before running fn', async () => {
    let runs = 0
    const idempotency = createIdempotency({ store: testDb.db })
    for (const signal of ['abort', {}, { aborted: false }]) {
      await expect(
        idempotency.run(randomUUID(), () => ++runs, { signal: signal as unknown as AbortSignal }),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'signal' })
      await expect(
        idempotent(randomUUID(), () => ++runs, {
          store: testDb.db,
          signal: signal as unknown as AbortSignal,
        }),
      ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'signal' })
    }
    await expect(
      idempotency.run(randomUUID(), () => ++runs, null as unknown as undefined),
    ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'options' })
    expect(runs).toBe(0)
    expect(
      await idempotency.run(randomUUID(), () => ++runs, { signal: new AbortController().signal }),
    ).toBe(1)
  })

  // ctx.tx begins after the phases. A statement on it inside a phase's fn opened it while the
  // phase's own transaction had yet to commit: on SQLite that commit then waited for ctx.tx,
  // which waited for the handler, until the lease ran out; on PostgreSQL the write silently left
  // the phase. Both are refused, the phase fails, and nothing commits.
  it('refuses ctx.tx and ctx.deferWrite inside a phase, and commits nothing', async () => {
    const insert = 'INSERT INTO shipments (id, order_id) VALUES ($1, $2)'
    for (const use of ['execute', 'deferWrite', 'savepoint'] as const) {
      const orderId = randomUUID()
      const key = randomUUID()
      let phaseWrote = false
      const run = idempotent(
        key,
        (ctx) =>
          ctx.phase('reserve', async (tx) => {
            await tx.execute(insert, [randomUUID(), orderId])
            if (use === 'execute') await ctx.tx.execute(insert, [randomUUID(), orderId])
            else if (use === 'deferWrite') ctx.deferWrite(insert, [randomUUID(), orderId])
            else await ctx.tx.transaction((sp) => sp.execute(insert, [randomUUID(), orderId]))
            phaseWrote = true
          }),
        { store: testDb.db },
      )
      await expect(run).rejects.toBeInstanceOf(TransactionMisuseError)
      expect(phaseWrote).toBe(false)
      expect(await shipments(orderId)).toBe(0)
      // The key was released, and ctx.tx works again after the phase.
      const retried = await idempotent(
        key,
        async (ctx) => {
          await ctx.phase('reserve', (tx) => tx.execute(insert, [randomUUID(), orderId]))
          ctx.deferWrite(insert, [randomUUID(), orderId])
          return 'done'
        },
        { store: testDb.db },
      )
      expect(retried).toBe('done')
      expect(await shipments(orderId)).toBe(2)
    }
  })

  // Two phases run at once (two calls to other systems, Promise.all): each saved the phases it
  // knew of when its fn ended, so the one saved last dropped the other, and a takeover after a
  // crash ran that phase (its call to another system) again. Phases run one at a time: a phase
  // started while another runs is refused before its fn runs.
  it('refuses a phase started while another runs, and keeps every phase run one after another', async () => {
    const idempotency = createIdempotency({ store: testDb.db })
    const calls: string[] = []
    await expect(
      idempotency.run(randomUUID(), async (ctx) => {
        await Promise.all([
          ctx.phase('charge', () => calls.push('charge')),
          ctx.phase('reserve', () => calls.push('reserve')),
        ])
      }),
    ).rejects.toBeInstanceOf(TransactionMisuseError)
    expect(calls).toEqual(['charge'])
    const key = randomUUID()
    let seen: Record<string, unknown> | undefined
    await idempotency.run(key, async (ctx) => {
      await ctx.phase('charge', () => 'charged')
      await ctx.phase('reserve', () => 'reserved')
      seen = (await idempotency.store.get('default', key))?.phases
    })
    expect(seen).toEqual({ charge: { v: 'charged' }, reserve: { v: 'reserved' } })
  })

  it('persists atomic phases: after a crash, a takeover resumes after the last committed phase', async () => {
    const clock = new ManualClock(Date.now())
    const idempotency = createIdempotency({ store: testDb.db, clock, leaseMs: 30_000 })
    const orderId = randomUUID()
    const calls: string[] = []
    const hang = gate()
    const saga = (crashAfterReserve: boolean) =>
      idempotency.run(`${orderId}:checkout`, async (ctx) => {
        const reservation = await ctx.phase('reserve', async (tx) => {
          calls.push('reserve')
          await tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
            `${orderId}-reserved`,
            orderId,
          ])
          return { reservationId: `${orderId}-reserved` }
        })
        if (crashAfterReserve) await hang.promise
        await ctx.tx.execute('INSERT INTO shipments (id, order_id) VALUES ($1, $2)', [
          `${orderId}-shipped`,
          orderId,
        ])
        calls.push('ship')
        return { reservation, resumedAfter: ctx.recoveryPoint, attempt: ctx.attempt }
      })
    const crashed = saga(true)
    while (calls.length === 0) await new Promise((r) => setImmediate(r))
    const recordOf = () => idempotency.store.get('default', `${orderId}:checkout`)
    for (let i = 0; i < 1_000 && (await recordOf())?.recoveryPoint !== 'reserve'; i++) {
      await new Promise((r) => setImmediate(r))
    }
    expect(await recordOf()).toMatchObject({ state: 'in_progress', recoveryPoint: 'reserve' })
    await clock.advance(30_000)
    const resumed = await saga(false)
    expect(resumed).toEqual({
      reservation: { reservationId: `${orderId}-reserved` },
      resumedAfter: 'reserve',
      attempt: 2,
    })
    expect(calls).toEqual(['reserve', 'ship'])
    expect(await shipments(orderId)).toBe(2)
    hang.open()
    await expect(crashed).rejects.toMatchObject({
      code: 'IDEMPOTENCY_IN_PROGRESS',
      reason: 'lease-lost',
    })
  })
})
