// Projections into SQL read models on real SQLite and PostgreSQL: inline (committed with the
// append), asynchronous (checkpoint in the read model's transaction), lag, read-your-writes,
// query handlers, rebuild into fresh tables with an atomic swap (also while appends go on), and
// a fast-check property: over random command sequences, a projection rebuilt from position 0
// equals the incrementally maintained one, and both equal the fold of the events.
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import {
  createCommandHandler,
  createEventStore,
  createProjector,
  createQueryHandler,
  defineProjection,
  type EventStore,
  RebuildSupersededError,
} from '../../src/cqrs/index.js'
import { TimeoutError } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { scaled } from '../support/scale.js'
import {
  type AccountCommand,
  type AccountEvent,
  account,
  type BalanceRow,
  balancesProjection,
  foldBalances,
} from './accounts.js'
import { dbTargets, postgresDb, type TestDb, useTestDb } from './databases.js'

const poll = { timeout: 10_000, interval: 2 }

/** Awaits `promise` while moving the clocks forward in small steps. */
async function settle<T>(promise: Promise<T>, ...clocks: ManualClock[]): Promise<T> {
  let outcome: { value: T } | { error: unknown } | undefined
  promise.then(
    (value) => {
      outcome = { value }
    },
    (error: unknown) => {
      outcome = { error }
    },
  )
  await expect
    .poll(async () => {
      if (outcome === undefined) for (const clock of clocks) await clock.advance(10)
      return outcome !== undefined
    }, poll)
    .toBe(true)
  if (outcome !== undefined && 'error' in outcome) throw outcome.error
  return (outcome as { value: T }).value
}

async function balances(t: TestDb, table: string, prefix = ''): Promise<BalanceRow[]> {
  const rows = await t.db.query<BalanceRow>(
    `SELECT account_id, owner, balance, events FROM ${table} WHERE account_id LIKE $1 ORDER BY account_id`,
    [`${prefix}%`],
  )
  return rows.map((r) => ({ ...r, balance: Number(r.balance), events: Number(r.events) }))
}

/** The names of the tables matching a LIKE pattern, sorted. */
async function tablesLike(t: TestDb, pattern: string): Promise<string[]> {
  const sql =
    t.db.dialect === 'sqlite'
      ? "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE $1 ORDER BY name"
      : 'SELECT tablename AS name FROM pg_tables WHERE tablename LIKE $1 ORDER BY tablename'
  return (await t.db.query<{ name: string }>(sql, [pattern])).map((r) => r.name)
}

async function allEvents(store: EventStore) {
  const events = []
  for (let from = 0; ; ) {
    const page = await store.readAll({ fromPosition: from, limit: 1000 })
    events.push(...page)
    if (page.length < 1000) return events
    from = page[page.length - 1]!.position + 1
  }
}

describe.each(dbTargets)('projections on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_projections')
  const inline = balancesProjection('inline-balances', 'inline_balances')
  const async = balancesProjection('async-balances', 'async_balances')
  let store: EventStore
  let n = 0
  const fresh = (prefix = 'acc') => `${prefix}-${++n}`
  beforeAll(async () => {
    store = createEventStore(t.db, { inlineProjections: [inline] })
  })

  it('an inline projection commits with the append, or not at all', async () => {
    const accounts = createCommandHandler(store, { decider: account })
    const id = fresh()
    await accounts.handle(id, { kind: 'open', owner: 'ann' })
    await accounts.handle(id, { kind: 'deposit', amount: 30 })
    expect(await balances(t, 'inline_balances', id)).toEqual([
      { account_id: id, owner: 'ann', balance: 30, events: 2 },
    ])
    // The caller's transaction fails after the append: events and read model roll back.
    await expect(
      t.db.transaction(async (tx) => {
        await store.append(id, [{ type: 'deposited', data: { amount: 5 } }], { tx })
        expect(
          (
            await tx.query<{ balance: number }>(
              'SELECT balance FROM inline_balances WHERE account_id = $1',
              [id],
            )
          )[0]!.balance,
        ).toBe(35)
        throw new Error('later step failed')
      }),
    ).rejects.toThrow('later step failed')
    expect((await balances(t, 'inline_balances', id))[0]!.balance).toBe(30)
    expect((await store.readStream(id)).version).toBe(2)
    const projector = createProjector(store, inline)
    expect(projector.inline).toBe(true)
    await projector.waitFor(10_000_000)
    expect((await projector.lag()).positions).toBe(0)
    // Every committed event is in an inline read model: its position is the head, as lag says.
    const head = await store.headPosition()
    expect(await projector.position()).toBe(head)
    expect(await projector.catchUp()).toBe(head)
    expect((await projector.lag()).position).toBe(head)
    expect(() => projector.start()).toThrow(/async projection/)
  })

  it('an async projector catches up in batches, reports lag, and serves read-your-writes', async () => {
    const storeClock = new ManualClock(1_000_000)
    const writer = createEventStore(t.db, { inlineProjections: [inline], clock: storeClock })
    const projectorClock = new ManualClock(1_004_000)
    const projector = createProjector(writer, async, { batchSize: 3, clock: projectorClock })
    await projector.catchUp()
    const accounts = createCommandHandler(writer, { decider: account })
    const id = fresh()
    await accounts.handle(id, { kind: 'open', owner: 'bea' })
    const last = await accounts.handle(id, { kind: 'deposit', amount: 12 })
    const lag = await projector.lag()
    expect(lag.head).toBe(last.lastPosition)
    expect(lag.positions).toBe(lag.head - lag.position)
    expect(lag.positions).toBeGreaterThanOrEqual(2)
    expect(lag.ms).toBe(4000)

    const history = createQueryHandler({
      db: t.db,
      projectors: [projector],
      run: (rm, accountId: string) =>
        rm.query<BalanceRow>('SELECT balance FROM async_balances WHERE account_id = $1', [
          accountId,
        ]),
    })
    // Not running yet: waiting for the position times out on the projector's clock.
    const timedOut = await settle(
      history(id, { atLeastPosition: last.lastPosition, timeoutMs: 100 }).catch((e: unknown) => e),
      projectorClock,
    )
    expect(timedOut).toBeInstanceOf(TimeoutError)

    projector.start()
    try {
      // The clock is moved while waiting: the projector is woken by NOTIFY on PostgreSQL, but
      // re-checks on its clock when notified events are not readable yet (an older
      // transaction anywhere in the cluster is still open), and SQLite polls on it.
      const rows = await settle(
        history(id, { atLeastPosition: last.lastPosition, timeoutMs: 600_000 }),
        projectorClock,
        storeClock,
      )
      expect(Number(rows[0]!.balance)).toBe(12)
      expect(await projector.lag()).toMatchObject({ positions: 0, ms: 0 })
      expect(await projector.position()).toBe(last.lastPosition)
      // Live: the next command reaches the read model without another catchUp.
      const next = await accounts.handle(id, { kind: 'deposit', amount: 1 })
      await settle(
        projector.waitFor(next.lastPosition, { timeoutMs: 600_000 }),
        projectorClock,
        storeClock,
      )
      expect((await balances(t, 'async_balances', id))[0]!.balance).toBe(13)
    } finally {
      await projector.stop()
    }
  })

  it('query handlers read read models only', async () => {
    const query = createQueryHandler({
      db: t.db,
      run: (rm, sql: string) => rm.query(sql),
    })
    await expect(query('SELECT count(*) AS n FROM inline_balances')).resolves.toHaveLength(1)
    await expect(query("UPDATE inline_balances SET balance = 0 WHERE owner = 'x'")).rejects.toThrow(
      /a SELECT over read models/,
    )
    await expect(query('SELECT * FROM breakwater_events')).rejects.toThrow(/no breakwater_ tables/)
    await expect(
      query('WITH x AS (DELETE FROM inline_balances RETURNING *) SELECT * FROM x'),
    ).rejects.toThrow(/no writes/)
    // Words in string literals, quoted identifiers and comments are data, not statements: an
    // activity read model filters on kinds such as 'profile-update' and 'delete'.
    await expect(
      query(
        `SELECT count(*) AS "update" FROM inline_balances -- drop the owner filter later
         WHERE owner IN ('profile-update', 'delete', 'it''s a create') /* merge */`,
      ),
    ).resolves.toHaveLength(1)
    if (target.dialect === 'postgres') {
      await expect(
        query(`SELECT count(*) FROM inline_balances WHERE owner IN (E'an \\' insert', $$drop$$)`),
      ).resolves.toHaveLength(1)
    }
    await expect(query('SELECT * FROM "breakwater_events"')).rejects.toThrow(
      /no breakwater_ tables/,
    )
    // SELECT ... INTO creates a table on PostgreSQL; a second statement could be anything.
    await expect(query('SELECT * INTO copied_balances FROM inline_balances')).rejects.toThrow(
      /no writes/,
    )
    await expect(query('SELECT 1; SET search_path TO nowhere')).rejects.toThrow(/one statement/)
    await expect(query('SELECT 1 AS one;  ')).resolves.toEqual([{ one: 1 }])
    // Code between or after literals still counts, and an unclosed literal hides nothing.
    await expect(
      query("SELECT 1 FROM inline_balances WHERE owner = 'a'; DELETE FROM inline_balances"),
    ).rejects.toThrow(/no writes/)
    await expect(query("SELECT 1 FROM inline_balances WHERE owner = 'a; DROP")).rejects.toThrow(
      /no writes/,
    )
  })

  it('a query handler refuses the store tables also where the text names them indirectly', async () => {
    const query = createQueryHandler({ db: t.db, run: (rm, sql: string) => rm.query(sql) })
    // SQLite takes a string literal where only a table name can stand as that name, and
    // PostgreSQL's U&"..." identifiers spell a name with escapes: both read the event log.
    const indirect =
      target.dialect === 'sqlite'
        ? [
            "SELECT * FROM 'breakwater_events'",
            "SELECT b.* FROM inline_balances a JOIN 'BREAKWATER_EVENTS' b ON 1 = 1",
            "SELECT * FROM inline_balances, 'breakwater_streams'",
            "SELECT * FROM main.'breakwater_events'",
          ]
        : [
            'SELECT * FROM U&"\\0062reakwater_events"',
            'SELECT * FROM u&"\\+000062reakwater_events"',
            'SELECT * FROM U&"!0062reakwater_events" UESCAPE \'!\'',
          ]
    for (const sql of indirect) {
      await expect(query(sql), sql).rejects.toThrow(/no breakwater_ tables/)
    }
    // A value that happens to start with breakwater_ is still data.
    for (const sql of [
      "SELECT count(*) AS n FROM inline_balances WHERE owner = 'breakwater_x'",
      "SELECT count(*) AS n FROM inline_balances WHERE owner IN ('a', 'breakwater_x')",
      "SELECT 'a', 'breakwater_x' FROM inline_balances",
      "SELECT owner FROM inline_balances WHERE coalesce(owner, 'breakwater_x') <> 'x'",
    ]) {
      await expect(query(sql), sql).resolves.toBeDefined()
    }
    await expect(query('SELECT 1 AS "U&x" FROM inline_balances LIMIT 1')).resolves.toBeDefined()
  })

  it('a query handler refuses call options that are not an object instead of skipping the wait', async () => {
    // query(params, lastPosition) meant "at least this position": the number was ignored and
    // the query ran at once, on a read model that may not have the caller's write yet.
    const projector = createProjector(store, async)
    let ran = 0
    const query = createQueryHandler({
      db: t.db,
      projectors: [projector],
      run: async () => ++ran,
    })
    for (const options of [42, 'fresh', null, []]) {
      await expect(query(undefined, options as never)).rejects.toThrow(
        /options: expected an object/,
      )
    }
    expect(ran).toBe(0)
    // Each projector is checked at construction, not when the first query waits on it.
    expect(() => createQueryHandler({ db: t.db, projectors: [{} as never], run: query })).toThrow(
      /projectors\[0\]: expected a projector/,
    )
  })

  it('catchUp refuses options that are not an object, inline or async', async () => {
    // catchUp(null) failed with a bare TypeError, and an inline projector's ignored anything.
    for (const projector of [createProjector(store, async), createProjector(store, inline)]) {
      for (const options of [null, 42, 'now', []]) {
        await expect(projector.catchUp(options as never)).rejects.toMatchObject({
          code: 'INVALID_OPTION',
          option: 'options',
        })
      }
    }
  })

  it('catchUp and waitFor refuse a signal that is not an AbortSignal, inline or async', async () => {
    // Both read signal.aborted only: a string or a plain object was silently taken as no signal.
    for (const projector of [createProjector(store, async), createProjector(store, inline)]) {
      for (const signal of ['stop', { aborted: true }, 1]) {
        await expect(projector.catchUp({ signal } as never)).rejects.toMatchObject({
          code: 'INVALID_OPTION',
          option: 'signal',
        })
        await expect(
          projector.waitFor(Number.MAX_SAFE_INTEGER, { signal, timeoutMs: 0 } as never),
        ).rejects.toMatchObject({ code: 'INVALID_OPTION', option: 'signal' })
      }
    }
  })

  it('two projector instances never apply an event twice', async () => {
    const accounts = createCommandHandler(store, { decider: account })
    const ids = [fresh('pair'), fresh('pair')]
    for (const id of ids) {
      await accounts.handle(id, { kind: 'open', owner: 'cat' })
      for (let i = 0; i < 10; i++) await accounts.handle(id, { kind: 'deposit', amount: i })
    }
    const a = createProjector(store, async, { batchSize: 2 })
    // On PostgreSQL the second instance has its own connections; on SQLite a second connection
    // in this process would block the thread it shares with the first, so both share one.
    const other = target.dialect === 'postgres' ? createEventStore(await t.connect()) : store
    const b = createProjector(other, async, { batchSize: 2 })
    await Promise.all([a.catchUp(), b.catchUp(), a.catchUp()])
    const prefix = `pair-`
    expect(await balances(t, 'async_balances', prefix)).toEqual(
      foldBalances(await allEvents(store), prefix),
    )
  })

  it('rebuilds into fresh tables and swaps them in while appends go on', async () => {
    const accounts = createCommandHandler(store, {
      decider: account,
      baseDelayMs: 0,
      maxAttempts: 50,
    })
    const asyncProjector = createProjector(store, async, { batchSize: 7 })
    const inlineProjector = createProjector(store, inline, { batchSize: 7 })
    const id = fresh('busy')
    await accounts.handle(id, { kind: 'open', owner: 'dan' })
    let writing = true
    const writes = (async () => {
      let count = 0
      while (writing || count < 5) {
        await accounts.handle(id, { kind: 'deposit', amount: 1 })
        count++
        // As requests arrive, through the event loop: on SQLite, whose statements resolve at
        // once, a loop of bare awaits would never let it turn, and the rebuild, which lets it
        // turn between its batches, would wait behind it forever.
        await new Promise((resolve) => setImmediate(resolve))
      }
      return count
    })()
    const rebuiltAsync = await asyncProjector.rebuild()
    const rebuiltInline = await inlineProjector.rebuild()
    writing = false
    const deposits = await writes
    expect(rebuiltAsync.events).toBeGreaterThan(0)
    expect(rebuiltInline.position).toBeGreaterThanOrEqual(rebuiltAsync.position)
    await asyncProjector.catchUp()
    const expected = foldBalances(await allEvents(store))
    expect(await balances(t, 'async_balances')).toEqual(expected)
    expect(await balances(t, 'inline_balances')).toEqual(expected)
    expect(expected.find((r) => r.account_id === id)!.balance).toBe(deposits)
    // The swapped-in tables are the live ones under the logical name, indexes included, and no
    // fresh or old copy is left behind.
    expect(await tablesLike(t, '%balances%')).toEqual(['async_balances', 'inline_balances'])
    // A second rebuild works too (the fresh tables' index names do not collide).
    await asyncProjector.rebuild()
    expect(await balances(t, 'async_balances')).toEqual(foldBalances(await allEvents(store)))
  })

  it('two rebuilds at once: one swaps in a read model with every event applied once', async () => {
    // Two instances that both rebuild at startup. The later one drops the earlier one's fresh
    // tables; the earlier one must then fail rather than keep filling tables the later one
    // fills too (each applying every event: a swapped-in read model with events counted twice).
    const projection = balancesProjection('twice-ledger', 'twice_ledger')
    const accounts = createCommandHandler(store, { decider: account })
    for (const id of [fresh('twice'), fresh('twice')]) {
      await accounts.handle(id, { kind: 'open', owner: 'eve' })
      for (let i = 1; i <= 4; i++) await accounts.handle(id, { kind: 'deposit', amount: i })
    }
    const first = createProjector(store, projection, { batchSize: 1 })
    await first.catchUp()
    const other = target.dialect === 'postgres' ? createEventStore(await t.connect()) : store
    const second = createProjector(other, projection, { batchSize: 1 })
    const outcomes = await Promise.allSettled([first.rebuild(), second.rebuild()])
    expect(outcomes.some((o) => o.status === 'fulfilled')).toBe(true)
    for (const outcome of outcomes)
      if (outcome.status === 'rejected') {
        // The loser says why, with a code (it may also have lost while filling its tables).
        expect(outcome.reason).toBeInstanceOf(RebuildSupersededError)
        expect(outcome.reason).toMatchObject({
          code: 'REBUILD_SUPERSEDED',
          projection: 'twice-ledger',
        })
      }
    await first.catchUp()
    expect(await balances(t, 'twice_ledger')).toEqual(foldBalances(await allEvents(store)))
    // The loser's fresh tables were dropped by the winner: nothing is left behind.
    expect(await tablesLike(t, 'twice%')).toEqual(['twice_ledger'])
  })

  it.each(['async', 'inline'])(
    'a rebuild swaps in a table added to an %s projection since its tables were created',
    async (kind) => {
      const prefix = `grown_${kind}`
      const before = balancesProjection(`${prefix}-ledger`, `${prefix}_ledger`)
      const first = createEventStore(t.db, kind === 'inline' ? { inlineProjections: [before] } : {})
      const id = fresh(prefix)
      await createCommandHandler(first, { decider: account }).handle(id, {
        kind: 'open',
        owner: 'fay',
      })
      await createProjector(first, before).catchUp()
      // The next release adds an owners table to the projection and rebuilds it.
      const owners = `${prefix}_owners`
      const after = defineProjection<AccountEvent>({
        ...before,
        tables: {
          ...before.tables,
          [owners]: (table) => [`CREATE TABLE ${table} (account_id TEXT PRIMARY KEY, owner TEXT)`],
        },
        async apply(event, context) {
          await before.apply(event, context)
          if (event.type === 'opened') {
            await context.tx.execute(
              `INSERT INTO ${context.table(owners)} (account_id, owner) VALUES ($1, $2)`,
              [event.stream, event.data.owner],
            )
          }
        },
      })
      const next = createEventStore(t.db, kind === 'inline' ? { inlineProjections: [after] } : {})
      const projector = createProjector(next, after)
      await projector.rebuild()
      await createCommandHandler(next, { decider: account }).handle(id, {
        kind: 'deposit',
        amount: 7,
      })
      await projector.catchUp()
      expect(await balances(t, `${prefix}_ledger`)).toEqual(foldBalances(await allEvents(store)))
      expect(await balances(t, `${prefix}_ledger`, id)).toMatchObject([{ balance: 7, events: 2 }])
      expect(
        await t.db.query(`SELECT account_id, owner FROM ${owners} WHERE account_id = $1`, [id]),
      ).toEqual([{ account_id: id, owner: 'fay' }])
      expect(await tablesLike(t, `${prefix}%`)).toEqual([`${prefix}_ledger`, owners])
    },
  )

  it('property: rebuilt from zero equals incrementally maintained equals the fold', async () => {
    const command = fc.oneof(
      fc.record({ kind: fc.constant('open' as const), owner: fc.constantFrom('x', 'y', 'z') }),
      fc.record({
        kind: fc.constant('deposit' as const),
        amount: fc.integer({ min: 1, max: 100 }),
      }),
      fc.record({
        kind: fc.constant('withdraw' as const),
        amount: fc.integer({ min: 1, max: 150 }),
      }),
    )
    const step = fc.record({
      account: fc.nat(3),
      command,
      // Sometimes the async projector catches up in the middle of the sequence.
      catchUp: fc.boolean(),
    })
    const accounts = createCommandHandler(store, { decider: account })
    let run = 0
    await fc.assert(
      fc.asyncProperty(
        fc.array(step, { minLength: 1, maxLength: scaled(40, 12) }),
        async (steps) => {
          const prefix = `prop-${++run}-`
          const projector = createProjector(store, async, { batchSize: 5 })
          for (const s of steps) {
            await accounts
              .handle(`${prefix}${s.account}`, s.command as AccountCommand)
              .catch(() => {}) // domain errors (closed account, no funds) append nothing
            if (s.catchUp) await projector.catchUp()
          }
          await projector.catchUp()
          const incrementalAsync = await balances(t, 'async_balances', prefix)
          const incrementalInline = await balances(t, 'inline_balances', prefix)
          const fold = foldBalances(await allEvents(store), prefix)
          expect(incrementalAsync).toEqual(fold)
          expect(incrementalInline).toEqual(fold)
          await projector.rebuild()
          await createProjector(store, inline).rebuild()
          expect(await balances(t, 'async_balances', prefix)).toEqual(incrementalAsync)
          expect(await balances(t, 'inline_balances', prefix)).toEqual(incrementalInline)
        },
      ),
      { numRuns: scaled(25, 4) },
    )
  })

  it('validates projection definitions', () => {
    const ok = { name: 'p', tables: { t: () => [] }, apply: () => {} }
    expect(() => defineProjection({ ...ok, name: 'Bad Name' })).toThrow(/projection\.name/)
    // The name is an index key, capped as checkpoint names are (PostgreSQL refuses long keys).
    expect(() => defineProjection({ ...ok, name: 'p'.repeat(2049) })).toThrow(/projection\.name/)
    expect(defineProjection({ ...ok, name: 'p'.repeat(2048) }).name).toHaveLength(2048)
    expect(() => defineProjection({ ...ok, tables: { 'bad-table': () => [] } })).toThrow(
      /projection\.tables/,
    )
    // A rebuild renames the live table away and drops it: named after the event store's own
    // tables it would drop the log, and `<table>__r<n>` / `<table>__old` are a rebuild's names
    // for another table's copies.
    for (const table of ['breakwater_events', 'breakwater_checkpoints', 'orders__r1', 'x__old']) {
      expect(() => defineProjection({ ...ok, tables: { [table]: () => [] } })).toThrow(
        /projection\.tables/,
      )
    }
    expect(() => defineProjection({ ...ok, apply: 1 as never })).toThrow(/projection\.apply/)
    // A type no event can have (an append refuses it): the projection was handed nothing and
    // its checkpoint ran past every event, without a word.
    for (const type of ['', 'order\u0000placed', 'order\ud800']) {
      expect(() => defineProjection({ ...ok, eventTypes: ['order-placed', type] })).toThrow(
        expect.objectContaining({ code: 'INVALID_OPTION', option: 'projection.eventTypes[1]' }),
      )
      expect(() =>
        createEventStore(t.db, { inlineProjections: [{ ...ok, eventTypes: [type] }] }),
      ).toThrow(expect.objectContaining({ option: 'inlineProjections[0].eventTypes[0]' }))
    }
    // [] stays: a projection that reads no type (its checkpoint follows the log).
    expect(defineProjection({ ...ok, eventTypes: [] }).eventTypes).toEqual([])
    expect(() => createEventStore(t.db, { inlineProjections: [{} as never] })).toThrow(
      /inlineProjections\[0\]/,
    )
    // One name is one registration row: the second projection's tables would never be
    // created, and every append would fail on them.
    const other = { ...ok, tables: { other_t: () => [] } }
    expect(() => createEventStore(t.db, { inlineProjections: [ok, other] })).toThrow(
      /inlineProjections\[1\]\.name/,
    )
    // A copy of a projection the store runs inline (a spread, or the definition declared
    // twice) made an async projector of it: started, it applied every event a second time to
    // the tables the appends already write.
    expect(() => createProjector(store, { ...inline })).toThrow(/projection: expected/)
    expect(createProjector(store, inline).inline).toBe(true)
  })
})

describe('projectors on PostgreSQL are woken by NOTIFY', () => {
  const t = useTestDb(postgresDb, 'cqrs_projector_notify')

  it('also after a restart that did not wait for stop()', async () => {
    // The poll interval is on a clock that never moves: only notifications can wake it.
    const clock = new ManualClock(Date.now())
    const writer = createEventStore(t.db)
    const accounts = createCommandHandler(writer, { decider: account })
    const projector = createProjector(
      createEventStore(await t.connect()),
      balancesProjection('restarted', 'restarted_balances'),
      { clock },
    )
    const caughtUp = async (position: number) =>
      expect.poll(() => projector.position(), poll).toBeGreaterThanOrEqual(position)
    projector.start()
    try {
      const opened = await accounts.handle('restarted-1', { kind: 'open', owner: 'gus' })
      await caughtUp(opened.lastPosition)
      // Restarted at once: the old loop still ends (and stops listening) after the new one began.
      const stopping = projector.stop()
      projector.start()
      await stopping
      const deposited = await accounts.handle('restarted-1', { kind: 'deposit', amount: 3 })
      await caughtUp(deposited.lastPosition)
    } finally {
      await projector.stop()
    }
  })
})

describe.each(dbTargets)('a projector stopped from its own apply on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_projector_stop_inside')

  it('returns at once, commits the batch, and stops the loop after it', async () => {
    const store = createEventStore(t.db)
    const events = await store.append(
      'stop-inside',
      [1, 2, 3, 4].map((n) => ({ type: 'n', data: n })),
    )
    const seen: number[] = []
    let stopped = false
    // The poll interval is on a clock that never moves: the loop ends only through stop().
    const clock = new ManualClock(Date.now())
    const projector = createProjector(
      store,
      defineProjection({
        name: 'stop-inside',
        tables: { stop_inside: (table) => [`CREATE TABLE ${table} (n INTEGER NOT NULL)`] },
        async apply(event, { tx, table }) {
          seen.push(event.data as number)
          await tx.execute(`INSERT INTO ${table('stop_inside')} (n) VALUES ($1)`, [event.data])
          if (event.data === 2) {
            // "Project until the event I was waiting for": awaiting stop() here, inside the
            // batch's transaction, must not wait for this very batch to end.
            await projector.stop()
            stopped = true
          }
        },
      }),
      { batchSize: 2, clock },
    )
    projector.start()
    await expect.poll(() => stopped, poll).toBe(true)
    await projector.stop()
    expect(seen).toEqual([1, 2])
    // The batch committed with its checkpoint, and no further batch ran.
    expect(await projector.position()).toBe(events.events[1]!.position)
    const rows = await t.db.query<{ n: number }>('SELECT n FROM stop_inside ORDER BY n')
    expect(rows.map((r) => Number(r.n))).toEqual([1, 2])
    // Nothing is left holding the batch's locks (SQLite: the file's write lock).
    await store.append('stop-inside', [{ type: 'n', data: 5 }])
  })
})

describe.each(dbTargets)('a projector stopped twice on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_projector_stop_twice')

  it('resolves the second stop() only once the batch in progress has committed', async () => {
    const store = createEventStore(t.db)
    const { lastPosition } = await store.append('stop-twice', [{ type: 'n', data: 1 }])
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let applying = false
    const projector = createProjector(
      store,
      defineProjection({
        name: 'stop-twice',
        tables: { stop_twice: (table) => [`CREATE TABLE ${table} (n INTEGER NOT NULL)`] },
        async apply(event, { tx, table }) {
          applying = true
          await gate
          await tx.execute(`INSERT INTO ${table('stop_twice')} (n) VALUES ($1)`, [event.data])
        },
      }),
      { clock: new ManualClock(Date.now()) },
    )
    projector.start()
    await expect.poll(() => applying, poll).toBe(true)
    // Two parts of a shutdown each stop the projector, then close the database.
    let first = false
    let second = false
    void projector.stop().then(() => {
      first = true
    })
    void projector.stop().then(() => {
      second = true
    })
    try {
      await new Promise((resolve) => setImmediate(resolve))
      expect([first, second]).toEqual([false, false])
    } finally {
      release()
    }
    await expect.poll(() => first && second, poll).toBe(true)
    expect(await projector.position()).toBe(lastPosition)
  })
})

describe.each(dbTargets)('a projector whose onError throws on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_projector_onerror')

  it('keeps retrying the failed batch, catches up, and stops', async () => {
    const store = createEventStore(t.db)
    const { lastPosition } = await store.append(
      'flaky-projection',
      [1, 2, 3].map((n) => ({ type: 'n', data: n })),
    )
    const clock = new ManualClock(Date.now())
    let failures = 2
    let reported = 0
    const projector = createProjector(
      store,
      defineProjection({
        name: 'flaky-projection',
        tables: { flaky_projection: (table) => [`CREATE TABLE ${table} (n INTEGER NOT NULL)`] },
        async apply(event, { tx, table }) {
          if (event.data === 2 && failures > 0) {
            failures--
            throw new Error('apply failed')
          }
          await tx.execute(`INSERT INTO ${table('flaky_projection')} (n) VALUES ($1)`, [event.data])
        },
      }),
      {
        clock,
        retryBaseDelayMs: 1000,
        pollIntervalMs: 60_000,
        onError: () => {
          reported++
          // A broken error listener must not end the loop (nor reject it unhandled).
          throw new Error('listener failed')
        },
      },
    )
    projector.start()
    await expect
      .poll(async () => {
        await clock.advance(1000)
        return projector.position()
      }, poll)
      .toBe(lastPosition)
    expect(reported).toBe(2)
    await projector.stop()
    const rows = await t.db.query<{ n: number }>('SELECT n FROM flaky_projection ORDER BY n')
    expect(rows.map((r) => Number(r.n))).toEqual([1, 2, 3])
  })
})

describe.each(dbTargets)(
  'an inline projection added to a log with events on $dialect',
  (target) => {
    const t = useTestDb(target, 'cqrs_inline_added_late')

    it('reports the events before its registration as not applied until it is rebuilt', async () => {
      const clock = new ManualClock(1_000_000)
      const before = createEventStore(t.db, { clock })
      const accounts = createCommandHandler(before, { decider: account })
      const early = await accounts.handle('late-1', { kind: 'open', owner: 'ida' })
      await accounts.handle('late-1', { kind: 'deposit', amount: 4 })
      await clock.advance(1000)

      // The next release runs the projection inline: its tables start empty.
      const projection = balancesProjection('late-balances', 'late_balances')
      const store = createEventStore(t.db, { inlineProjections: [projection], clock })
      const after = createCommandHandler(store, { decider: account })
      const later = await after.handle('late-1', { kind: 'deposit', amount: 2 })
      await after.handle('late-2', { kind: 'open', owner: 'jon' })
      expect(await balances(t, 'late_balances')).toEqual([
        { account_id: 'late-2', owner: 'jon', balance: 0, events: 1 },
      ])
      const head = await store.headPosition()
      await clock.advance(1000)
      const projector = createProjector(store, projection, { clock })
      // Not "up to date": nothing from the first event on is known to be applied.
      expect(await projector.position()).toBe(early.lastPosition - 1)
      expect(await projector.lag()).toEqual({
        position: early.lastPosition - 1,
        head,
        positions: head - early.lastPosition + 1,
        ms: 2000,
      })
      const waited = await settle(
        projector.waitFor(later.lastPosition, { timeoutMs: 100 }).catch((e: unknown) => e),
        clock,
      )
      expect(waited).toBeInstanceOf(TimeoutError)

      await projector.rebuild()
      const events = await allEvents(store)
      expect(await balances(t, 'late_balances')).toEqual(foldBalances(events))
      expect(await projector.position()).toBe(head)
      expect(await projector.lag()).toEqual({ position: head, head, positions: 0, ms: 0 })
      await projector.waitFor(later.lastPosition, { timeoutMs: 0 })
      // Complete from then on: the next append is applied and counted as usual.
      const next = await after.handle('late-1', { kind: 'deposit', amount: 1 })
      expect(await projector.position()).toBe(next.lastPosition)
      expect(await balances(t, 'late_balances', 'late-1')).toMatchObject([{ balance: 7 }])
    })

    it('is complete when registered on an empty log', async () => {
      const projection = balancesProjection('early-balances', 'early_balances')
      const fresh = await target.open('cqrs_inline_added_early')
      try {
        const store = createEventStore(fresh.db, { inlineProjections: [projection] })
        const opened = await createCommandHandler(store, { decider: account }).handle('early-1', {
          kind: 'open',
          owner: 'kit',
        })
        const projector = createProjector(store, projection)
        expect(await projector.lag()).toMatchObject({ position: opened.lastPosition, positions: 0 })
        await projector.waitFor(opened.lastPosition + 10, { timeoutMs: 0 })
      } finally {
        await fresh.close()
      }
    })
  },
)

describe.each(dbTargets)('a projection whose apply fails on one event on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_projector_poison')

  it('applies and checkpoints the events before it, and stops right before it', async () => {
    const store = createEventStore(t.db)
    // One batch holds good events, events of a type the projection does not read, the event
    // apply fails on, and one after it.
    const { events } = await store.append('poison', [
      { type: 'n', data: 1 },
      { type: 'n', data: 2 },
      { type: 'other', data: 0 },
      { type: 'n', data: 3 },
      { type: 'n', data: 4 },
    ])
    const clock = new ManualClock(Date.now())
    let poisoned = true
    const errors: unknown[] = []
    const projector = createProjector(
      store,
      defineProjection({
        name: 'poison',
        eventTypes: ['n'],
        tables: { poison: (table) => [`CREATE TABLE ${table} (n INTEGER NOT NULL)`] },
        async apply(event, { tx, table }) {
          await tx.execute(`INSERT INTO ${table('poison')} (n) VALUES ($1)`, [event.data])
          if (event.data === 3 && poisoned) throw new Error('apply failed on 3')
        },
      }),
      { batchSize: 10, clock, retryBaseDelayMs: 1000, onError: (error) => errors.push(error) },
    )
    const numbers = async () =>
      (await t.db.query<{ n: number }>('SELECT n FROM poison ORDER BY n')).map((r) => Number(r.n))
    await expect(projector.catchUp()).rejects.toThrow('apply failed on 3')
    // The good events before it are not held back by it: applied, checkpointed (past the
    // event of another type too), visible to read-your-writes; nothing of the failed event.
    expect(await numbers()).toEqual([1, 2])
    expect(await projector.position()).toBe(events[2]!.position)
    await projector.waitFor(events[1]!.position, { timeoutMs: 0 })
    expect((await projector.lag()).positions).toBe(events[4]!.position - events[2]!.position)
    // The loop retries it on the clock, reports each failure, and goes on once it applies.
    projector.start()
    await expect.poll(() => errors.length, poll).toBeGreaterThan(0)
    expect(await projector.position()).toBe(events[2]!.position)
    poisoned = false
    await expect
      .poll(async () => {
        await clock.advance(1000)
        return projector.position()
      }, poll)
      .toBe(events[4]!.position)
    await projector.stop()
    expect(await numbers()).toEqual([1, 2, 3, 4])
  })

  it('rebuild() counts the events it applied, not the events of other types it read past', async () => {
    const store = createEventStore(t.db)
    // Its own type: the log holds the test above's 'n' events too. Both in the fill (batches of 2) and in the swap's catch-up (appended after the fill).
    await store.append('counted', [
      { type: 'counted', data: 1 },
      { type: 'other', data: 0 },
      { type: 'other', data: 0 },
      { type: 'counted', data: 2 },
      { type: 'other', data: 0 },
    ])
    const projector = createProjector(
      store,
      defineProjection({
        name: 'counted',
        eventTypes: ['counted'],
        tables: { counted: (table) => [`CREATE TABLE ${table} (n INTEGER NOT NULL)`] },
        async apply(event, { tx, table }) {
          await tx.execute(`INSERT INTO ${table('counted')} (n) VALUES ($1)`, [event.data])
        },
      }),
      { batchSize: 2 },
    )
    const rebuilt = await projector.rebuild()
    expect(rebuilt.events).toBe(2)
    expect(await t.db.query('SELECT n FROM counted ORDER BY n')).toHaveLength(2)
  })
})
