// Decide/evolve command handlers on real SQLite and PostgreSQL: retries on version conflicts
// (bounded), caller preconditions, idempotent commands by command id (the idempotency record in
// the append's transaction), integration events through the real outbox in the same
// transaction, and snapshots.

import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  cqrsChannelNames,
  createCommandHandler,
  createEventStore,
  type Decider,
  type EventStore,
  WrongExpectedVersionError,
} from '../../src/cqrs/index.js'
import { createIdempotency, IdempotencyMismatchError } from '../../src/idempotency/index.js'
import { createOutbox } from '../../src/outbox/index.js'
import { StoredDataError } from '../../src/stores/index.js'
import {
  type Account,
  type AccountCommand,
  type AccountEvent,
  account,
  InsufficientFunds,
} from './accounts.js'
import { dbTargets, unhandledRejectionsDuring, useTestDb } from './databases.js'

describe.each(dbTargets)('command handlers on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_commands', { idempotency: true, outbox: true })
  let store: EventStore
  let n = 0
  const fresh = () => `account-${++n}`
  beforeAll(async () => {
    store = createEventStore(t.db)
  })

  it('folds the stream, decides, appends at the loaded version', async () => {
    const accounts = createCommandHandler(store, { decider: account })
    const id = fresh()
    const opened = await accounts.handle(id, { kind: 'open', owner: 'ada' })
    expect(opened).toMatchObject({ stream: id, version: 1, replayed: false })
    expect(opened.state).toEqual({ open: true, balance: 0, events: 1 })
    expect(opened.lastPosition).toBe(opened.events[0]!.position)
    await accounts.handle(id, { kind: 'deposit', amount: 50 })
    const result = await accounts.handle(id, { kind: 'withdraw', amount: 20 })
    expect(result.state.balance).toBe(30)
    // No events decided: nothing appended, the state and version are returned as they are.
    const noop = await accounts.handle(id, { kind: 'open', owner: 'ada' })
    expect(noop).toMatchObject({ events: [], version: 3, lastPosition: 0 })
    // A domain error appends nothing and is not retried.
    await expect(accounts.handle(id, { kind: 'withdraw', amount: 100 })).rejects.toThrow(
      InsufficientFunds,
    )
    expect((await store.readStream(id)).version).toBe(3)
    expect((await accounts.load(id)).state).toEqual({ open: true, balance: 30, events: 3 })
  })

  it('load refuses a tx that is not a transaction, naming tx', async () => {
    // It failed with a bare TypeError (executor.query is not a function).
    const accounts = createCommandHandler(store, { decider: account })
    for (const tx of [{}, 'x', 5]) {
      const error = await accounts.load(fresh(), { tx: tx as never }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('tx')
    }
  })

  it('retries version conflicts: 20 concurrent commands on one stream all land', async () => {
    const accounts = createCommandHandler(store, {
      decider: account,
      maxAttempts: 100,
      baseDelayMs: 0,
    })
    const id = fresh()
    await accounts.handle(id, { kind: 'open', owner: 'bob' })
    const retries: { stream: string; attempt: number; error: unknown }[] = []
    const onRetry = (message: unknown): void => {
      retries.push(message as (typeof retries)[number])
    }
    subscribe(cqrsChannelNames['command-retry'], onRetry)
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => accounts.handle(id, { kind: 'deposit', amount: i + 1 })),
    ).finally(() => unsubscribe(cqrsChannelNames['command-retry'], onRetry))
    // Commands that lost a race were decided again, and said so on the channel.
    expect(retries.length).toBeGreaterThan(0)
    for (const retry of retries) {
      expect(retry.stream).toBe(id)
      expect(retry.attempt).toBeGreaterThan(1)
      expect(retry.error).toBeInstanceOf(WrongExpectedVersionError)
    }
    expect(new Set(results.map((r) => r.version)).size).toBe(20)
    const { state, version } = await accounts.load(id)
    expect(version).toBe(21)
    expect(state.balance).toBe(210)
  })

  it('gives up after maxAttempts with the last conflict', async () => {
    const id = fresh()
    let decisions = 0
    const contested: Decider<AccountCommand, AccountEvent, Account> = {
      ...account,
      // Another writer appends to the stream while every decision is being made.
      async decide(command, state) {
        decisions++
        await store.append(id, [{ type: 'deposited', data: { amount: 1 } }])
        return account.decide(command, state)
      },
    }
    await store.append(id, [{ type: 'opened', data: { owner: 'cy' } }])
    const accounts = createCommandHandler(store, {
      decider: contested,
      maxAttempts: 3,
      baseDelayMs: 0,
    })
    await expect(accounts.handle(id, { kind: 'deposit', amount: 5 })).rejects.toBeInstanceOf(
      WrongExpectedVersionError,
    )
    expect(decisions).toBe(3)
  })

  it('checks a caller precondition once, without retrying', async () => {
    const accounts = createCommandHandler(store, { decider: account, baseDelayMs: 0 })
    const id = fresh()
    await accounts.handle(id, { kind: 'open', owner: 'dee' })
    const error = await accounts
      .handle(id, { kind: 'deposit', amount: 1 }, { expectedVersion: 0 })
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(WrongExpectedVersionError)
    expect(error).toMatchObject({ expected: 0, actual: 1 })
    const ok = await accounts.handle(id, { kind: 'deposit', amount: 1 }, { expectedVersion: 1 })
    expect(ok.version).toBe(2)
    // A precondition that is no expectation at all is a bad argument, not a conflict.
    for (const expectedVersion of [-1, 1.5, 'nostream', 2 ** 53]) {
      await expect(
        accounts.handle(id, { kind: 'deposit', amount: 1 }, { expectedVersion } as never),
      ).rejects.toThrow(/expectedVersion: expected/)
    }
    expect((await store.readStream(id)).version).toBe(2)
    await expect(accounts.handle('a\u0000b', { kind: 'open', owner: 'x' })).rejects.toThrow(
      /stream: expected a non-empty string without NUL/,
    )
  })

  it('runs a command id once: repeats and concurrent duplicates replay the recorded result', async () => {
    const accounts = createCommandHandler(store, {
      decider: account,
      idempotency: { scope: 'accounts' },
      baseDelayMs: 0,
      maxAttempts: 50,
    })
    const id = fresh()
    const opened = await accounts.handle(
      id,
      { kind: 'open', owner: 'eve' },
      { commandId: 'cmd-open' },
    )
    const again = await accounts.handle(
      id,
      { kind: 'open', owner: 'eve' },
      { commandId: 'cmd-open' },
    )
    expect(again).toMatchObject({ replayed: true, version: 1, lastPosition: opened.lastPosition })
    expect(again.events.map((e) => e.id)).toEqual(opened.events.map((e) => e.id))

    const duplicates = await Promise.all(
      Array.from({ length: 10 }, () =>
        accounts.handle(
          id,
          { kind: 'deposit', amount: 7 },
          { commandId: 'cmd-deposit', metadata: { user: 'u1' } },
        ),
      ),
    )
    expect(duplicates.filter((d) => !d.replayed)).toHaveLength(1)
    const { events } = await store.readStream(id)
    expect(events.map((e) => e.type)).toEqual(['opened', 'deposited'])
    expect(events[1]!.metadata).toEqual({ user: 'u1', commandId: 'cmd-deposit' })
    // Another command id is another command.
    await accounts.handle(id, { kind: 'deposit', amount: 7 }, { commandId: 'cmd-deposit-2' })
    expect((await accounts.load(id)).state.balance).toBe(14)
    // A failed command releases its id: fixed and retried, it runs.
    await expect(
      accounts.handle(id, { kind: 'withdraw', amount: 100 }, { commandId: 'cmd-withdraw' }),
    ).rejects.toThrow(InsufficientFunds)
    await accounts.handle(id, { kind: 'deposit', amount: 100 }, { commandId: 'cmd-top-up' })
    const withdrawn = await accounts.handle(
      id,
      { kind: 'withdraw', amount: 100 },
      { commandId: 'cmd-withdraw' },
    )
    expect(withdrawn.replayed).toBe(false)
  })

  it('refuses a command id reused for another command on the same stream', async () => {
    const accounts = createCommandHandler(store, {
      decider: account,
      idempotency: { scope: 'reused' },
    })
    const id = fresh()
    await accounts.handle(id, { kind: 'open', owner: 'kim' })
    const first = await accounts.handle(
      id,
      { kind: 'deposit', amount: 5 },
      { commandId: `${id}-pay` },
    )
    // The same command (its keys in another order) is a repeat: replayed.
    const repeat = await accounts.handle(
      id,
      { amount: 5, kind: 'deposit' },
      { commandId: `${id}-pay` },
    )
    expect(repeat).toMatchObject({ replayed: true, lastPosition: first.lastPosition })
    // Another command under that id is a client bug, not a repeat: answering it with the first
    // command's result would report 500 deposited as done.
    for (const command of [
      { kind: 'deposit', amount: 500 },
      { kind: 'withdraw', amount: 5 },
    ] as const) {
      const error = await accounts
        .handle(id, command, { commandId: `${id}-pay` })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(IdempotencyMismatchError)
      expect(error).toMatchObject({ code: 'IDEMPOTENCY_MISMATCH' })
      expect((error as Error).message).toMatch(/another command/)
    }
    // As before, another stream under that id too.
    await expect(
      accounts.handle(fresh(), { kind: 'open', owner: 'kim' }, { commandId: `${id}-pay` }),
    ).rejects.toThrow(IdempotencyMismatchError)
    expect((await accounts.load(id)).state.balance).toBe(5)

    // A record written before commands were fingerprinted holds the stream alone: its repeat
    // is still replayed.
    await createIdempotency({ store: t.db }).run(
      `${id}-old`,
      () => ({
        events: [],
        version: 2,
        lastPosition: 0,
        state: { open: true, balance: 5, events: 2 },
      }),
      { scope: 'reused', fingerprint: id },
    )
    const old = await accounts.handle(
      id,
      { kind: 'deposit', amount: 1 },
      { commandId: `${id}-old` },
    )
    expect(old).toMatchObject({ replayed: true, version: 2 })

    // What JSON cannot hold fails before anything runs, unless the handler says how to
    // fingerprint its commands.
    type Big = { kind: 'deposit'; amount: number; ref: bigint }
    const big: Big = { kind: 'deposit', amount: 1, ref: 7n }
    const bigDecider: Decider<Big, AccountEvent, Account> = {
      ...account,
      decide: (command, state) =>
        account.decide({ kind: 'deposit', amount: command.amount }, state),
    }
    await expect(
      createCommandHandler(store, {
        decider: bigDecider,
        idempotency: { scope: 'reused' },
      }).handle(id, big, { commandId: `${id}-big` }),
    ).rejects.toThrow(/command: expected .*JSON.*idempotency\.fingerprint/)
    expect((await accounts.load(id)).state.balance).toBe(5)
    const fingerprinted = createCommandHandler(store, {
      decider: bigDecider,
      idempotency: { scope: 'reused', fingerprint: (c) => `${c.amount}:${c.ref}` },
    })
    await fingerprinted.handle(id, big, { commandId: `${id}-big` })
    await expect(
      fingerprinted.handle(id, { ...big, ref: 8n }, { commandId: `${id}-big` }),
    ).rejects.toThrow(IdempotencyMismatchError)
    expect((await accounts.load(id)).state.balance).toBe(6)
  })

  it('enqueues integration events in the append transaction, once per landed command', async () => {
    const outbox = createOutbox({ topic: 'accounts' })
    const accounts = createCommandHandler(store, {
      decider: account,
      baseDelayMs: 0,
      maxAttempts: 100,
      outbox: {
        outbox,
        map: (events, state, stream) =>
          events
            .filter((e) => e.type === 'deposited')
            .map((e) => ({
              id: `${e.id}`,
              aggregateType: 'account',
              aggregateId: stream,
              type: 'account-credited',
              payload: { amount: (e.data as { amount: number }).amount, balance: state.balance },
            })),
      },
    })
    const id = fresh()
    await accounts.handle(id, { kind: 'open', owner: 'fay' })
    await Promise.all(
      Array.from({ length: 8 }, () => accounts.handle(id, { kind: 'deposit', amount: 10 })),
    )
    await expect(accounts.handle(id, { kind: 'withdraw', amount: 1000 })).rejects.toThrow(
      InsufficientFunds,
    )
    const rows = await t.db.query<{ event_id: string; payload: string }>(
      'SELECT event_id, payload FROM breakwater_outbox WHERE aggregate_id = $1 ORDER BY id',
      [id],
    )
    const { events } = await store.readStream(id)
    const deposits = events.filter((e) => e.type === 'deposited')
    // Exactly one outbox row per appended deposit, although conflicts rolled attempts back.
    expect(rows.map((r) => r.event_id)).toEqual(deposits.map((e) => e.id))
    expect(rows.map((r) => (JSON.parse(r.payload) as { balance: number }).balance)).toEqual([
      10, 20, 30, 40, 50, 60, 70, 80,
    ])
  })

  it('refuses an outbox map that does not return an array, writing nothing', async () => {
    const outbox = createOutbox({ topic: 'accounts' })
    const credited = (stream: string) => ({
      aggregateType: 'account',
      aggregateId: stream,
      type: 'account-credited',
      payload: {},
    })
    // One event, as outbox.enqueue also takes it, or nothing at all: neither is an array.
    for (const returned of [(stream: string) => credited(stream), () => undefined]) {
      const accounts = createCommandHandler(store, {
        decider: account,
        outbox: { outbox, map: (_events, _state, stream) => returned(stream) as never },
      })
      const id = fresh()
      await expect(accounts.handle(id, { kind: 'open', owner: 'hal' })).rejects.toMatchObject({
        code: 'INVALID_OPTION',
        option: 'outbox.map',
      })
      // The command failed as a whole: no events without their integration events.
      expect((await store.readStream(id)).version).toBe(0)
      const rows = await t.db.query('SELECT 1 FROM breakwater_outbox WHERE aggregate_id = $1', [id])
      expect(rows).toEqual([])
    }
  })

  it('loads from a snapshot plus the tail, and drops snapshots with the stream', async () => {
    const plain = createCommandHandler(store, { decider: account })
    const snapshotting = createCommandHandler(store, {
      decider: account,
      snapshots: { every: 4, name: 'account-v1' },
    })
    const id = fresh()
    await snapshotting.handle(id, { kind: 'open', owner: 'gus' })
    for (let i = 1; i <= 9; i++) await snapshotting.handle(id, { kind: 'deposit', amount: i })
    const snapshot = await t.db.query<{ version: number; state: string }>(
      'SELECT version, state FROM breakwater_snapshots WHERE stream_id = $1 AND name = $2',
      [id, 'account-v1'],
    )
    expect(Number(snapshot[0]!.version)).toBe(8)
    expect(JSON.parse(snapshot[0]!.state)).toEqual({ open: true, balance: 28, events: 8 })
    const loaded = await snapshotting.load(id)
    expect(loaded).toEqual({ ...(await plain.load(id)), fromSnapshot: true })
    expect(loaded.state.balance).toBe(45)

    // A snapshot the fold would not produce is what load uses: proof it is read.
    await t.db.execute('UPDATE breakwater_snapshots SET state = $1 WHERE stream_id = $2', [
      JSON.stringify({ open: true, balance: 1000, events: 8 }),
      id,
    ])
    expect((await snapshotting.load(id)).state.balance).toBe(1017)
    // Renamed snapshots (a new state shape) ignore the old one.
    const renamed = createCommandHandler(store, {
      decider: account,
      snapshots: { every: 4, name: 'account-v2' },
    })
    expect(await renamed.load(id)).toMatchObject({ fromSnapshot: false, state: { balance: 45 } })

    await store.deleteStream(id)
    expect(
      await t.db.query('SELECT 1 FROM breakwater_snapshots WHERE stream_id = $1', [id]),
    ).toEqual([])
    expect(await snapshotting.load(id)).toEqual({
      state: account.initialState(),
      version: 10,
      fromSnapshot: false,
    })
  })

  // A snapshot row changed outside breakwater so that its state is not JSON: load and handle failed
  // with a bare SyntaxError naming neither the stream nor the snapshot.
  it('names the stream and snapshot whose stored state is not JSON, and appends nothing', async () => {
    const snapshotting = createCommandHandler(store, {
      decider: account,
      snapshots: { every: 1, name: 'account-broken' },
    })
    const id = fresh()
    await snapshotting.handle(id, { kind: 'open', owner: 'ivy' })
    await t.db.execute('UPDATE breakwater_snapshots SET state = $1 WHERE stream_id = $2', [
      '{"open": tru',
      id,
    ])

    for (const attempt of [
      () => snapshotting.load(id),
      () => snapshotting.handle(id, { kind: 'deposit', amount: 5 }),
    ]) {
      const error = await attempt().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(StoredDataError)
      expect(error).toMatchObject({
        code: 'STORED_DATA_INVALID',
        table: 'breakwater_snapshots',
        column: 'state',
      })
      expect((error as Error).message).toContain(`snapshot "account-broken" of stream "${id}"`)
    }
    expect((await store.readStream(id)).version).toBe(1)
    const rows = await t.db.query<{ state: string }>(
      'SELECT state FROM breakwater_snapshots WHERE stream_id = $1',
      [id],
    )
    expect(rows).toEqual([{ state: '{"open": tru' }])
  })

  // The recorded result of a command id is replayed from its JSON; an edited one failed each
  // repeat with a bare SyntaxError naming nothing, and JSON that is not a command result (null,
  // {}) was returned as an incomplete result without events, version or position.
  it.each([
    ['{"events": [', 'is not JSON'],
    ['null', 'is not a command result (events, version, lastPosition): null'],
    ['{}', 'is not a command result (events, version, lastPosition): an object'],
    ['{"events":{},"version":1,"lastPosition":1}', 'is not a command result'],
    ['{"events":[],"version":"1","lastPosition":1}', 'is not a command result'],
    ['{"events":[],"version":1,"lastPosition":-1}', 'is not a command result'],
  ])(
    'names the command id whose recorded result holds %s, and appends nothing',
    async (body, problem) => {
      const accounts = createCommandHandler(store, {
        decider: account,
        idempotency: { scope: 'edited' },
      })
      const id = fresh()
      const commandId = `${id}-open`
      await accounts.handle(id, { kind: 'open', owner: 'ola' }, { commandId })
      await t.db.execute(
        'UPDATE breakwater_idempotency SET response_body = $1 WHERE idem_key = $2',
        [Buffer.from(body), commandId],
      )

      // Another handler, as another process would be: this one replays the result it recorded
      // from memory (idempotency's replay cache) and would never read the edited row.
      const elsewhere = createCommandHandler(store, {
        decider: account,
        idempotency: { scope: 'edited' },
      })
      const error = await elsewhere
        .handle(id, { kind: 'open', owner: 'ola' }, { commandId })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(StoredDataError)
      expect(error).toMatchObject({
        code: 'STORED_DATA_INVALID',
        table: 'breakwater_idempotency',
        column: 'response_body',
      })
      expect((error as Error).message).toContain(`record of key "${commandId}"`)
      expect((error as Error).message).toContain(`response_body ${problem}`)
      expect((error as Error).message).not.toContain('edited')
      expect((await store.readStream(id)).version).toBe(1)
    },
  )

  // On SQLite the handler's transaction holds the write lock from its start, so no delete can
  // come between its load and its append.
  it.runIf(target.dialect === 'postgres')(
    'a delete between load and append never leaves a snapshot of the hidden events',
    async () => {
      const id = fresh()
      let deleteDuringDecide = false
      const racing: Decider<AccountCommand, AccountEvent, Account> = {
        ...account,
        async decide(command, state) {
          if (deleteDuringDecide) {
            deleteDuringDecide = false
            await store.deleteStream(id)
          }
          return account.decide(command, state)
        },
      }
      const snapshotting = createCommandHandler(store, {
        decider: racing,
        snapshots: { every: 1, name: 'account-race' },
        baseDelayMs: 0,
      })
      const plain = createCommandHandler(store, { decider: account })
      await snapshotting.handle(id, { kind: 'open', owner: 'hal' })
      await snapshotting.handle(id, { kind: 'deposit', amount: 100 })
      deleteDuringDecide = true
      // Decided again on the stream as it now is: deleted, so the account is not open.
      await expect(snapshotting.handle(id, { kind: 'deposit', amount: 5 })).rejects.toThrow(
        'account is not open',
      )
      // Whatever happened, a snapshot load and a plain fold agree.
      expect((await snapshotting.load(id)).state).toEqual((await plain.load(id)).state)
      expect(await store.readStream(id)).toMatchObject({ version: 2, deleted: true, events: [] })
    },
  )

  it('refuses a snapshot state that JSON would change, instead of storing one that loads differently', async () => {
    // Default serialize/deserialize: a Date, Set, Map or class instance in the state was written
    // as JSON (a string, {}) and loaded back as that, so a snapshot load differed from the fold
    // and decide broke on it; NaN became null; a bigint failed with a bare TypeError.
    type Tally = { count: number; extra?: unknown }
    type TallyEvent = { type: 'counted'; data: { n: number } }
    const tally = (extra: (n: number) => unknown): Decider<{ n: number }, TallyEvent, Tally> => ({
      initialState: () => ({ count: 0 }),
      evolve: (state, event) => ({ count: state.count + 1, extra: extra(event.data.n) }),
      decide: (command) => [{ type: 'counted', data: { n: command.n } }],
    })
    const cases: Record<string, (n: number) => unknown> = {
      date: (n) => new Date(n),
      set: (n) => new Set([n]),
      map: (n) => new Map([[n, n]]),
      nan: () => Number.NaN,
      bigint: (n) => BigInt(n),
      'array hole': () => [1, undefined],
      instance: (n) =>
        new (class Point {
          x = n
        })(),
    }
    for (const [label, extra] of Object.entries(cases)) {
      const handler = createCommandHandler(store, {
        decider: tally(extra),
        snapshots: { every: 1, name: `tally-${label.replace(' ', '-')}` },
      })
      const id = fresh()
      const error = await handler.handle(id, { n: 1 }).catch((e: unknown) => e)
      expect(error, label).toMatchObject({ code: 'INVALID_OPTION' })
      expect(String(error), label).toMatch(/snapshot/)
      // Nothing was written: the append rolled back with the snapshot.
      expect((await store.readStream(id)).version, label).toBe(0)
    }
    // Plain data (also undefined fields, which JSON leaves out and reads back as absent) is
    // snapshotted; so is anything with a serialize and deserialize of its own.
    const plain = createCommandHandler(store, {
      decider: tally((n) => ({ n, list: [n, 'x', null, true], none: undefined })),
      snapshots: { every: 1, name: 'tally-plain' },
    })
    const id = fresh()
    await plain.handle(id, { n: 3 })
    expect(await plain.load(id)).toMatchObject({ fromSnapshot: true, state: { count: 1 } })
    const custom = createCommandHandler(store, {
      decider: tally((n) => new Date(n)),
      snapshots: {
        every: 1,
        name: 'tally-custom',
        serialize: (s) => JSON.stringify({ ...s, extra: (s.extra as Date).getTime() }),
        deserialize: (text) => {
          const s = JSON.parse(text) as Tally
          return { ...s, extra: new Date(s.extra as number) }
        },
      },
    })
    const other = fresh()
    await custom.handle(other, { n: 5 })
    expect((await custom.load(other)).state.extra).toEqual(new Date(5))
  })

  it('fails a command whose evolve throws on the decided events without appending them', async () => {
    // A bug in evolve that decide does not share: the event it refuses must not be stored,
    // or the stream could never be loaded (and every command on it would fail) again.
    const refusing: Decider<AccountCommand, AccountEvent, Account> = {
      ...account,
      evolve(state, event) {
        if (event.type === 'deposited' && event.data.amount === 13) {
          throw new Error('evolve refuses 13')
        }
        return account.evolve(state, event)
      },
    }
    const setups = {
      plain: {},
      snapshots: { snapshots: { every: 1, name: 'refusing' } },
      idempotent: { idempotency: { scope: 'refusing' } },
    }
    for (const [setup, options] of Object.entries(setups)) {
      const accounts = createCommandHandler(store, { decider: refusing, ...options })
      const id = fresh()
      await accounts.handle(id, { kind: 'open', owner: 'zoe' }, { commandId: `${id}-open` })
      const head = await store.headPosition()
      await expect(
        accounts.handle(id, { kind: 'deposit', amount: 13 }, { commandId: `${id}-13` }),
        setup,
      ).rejects.toThrow('evolve refuses 13')
      expect((await store.readStream(id)).version, setup).toBe(1)
      expect(await store.headPosition(), setup).toBe(head)
      expect((await accounts.load(id)).state, setup).toEqual({ open: true, balance: 0, events: 1 })
      // The state a command returns is folded from the events as recorded.
      const deposited = await accounts.handle(id, { kind: 'deposit', amount: 2 })
      expect(deposited.state, setup).toEqual((await accounts.load(id)).state)
    }
  })

  it('refuses an async evolve, initialState or snapshot deserialize instead of deciding on a promise', async () => {
    // The fold is synchronous: a promise became the state decide saw (every field undefined)
    // and the command returned, and one that rejected was an unhandled rejection.
    const rejections = await unhandledRejectionsDuring(async () => {
      const asyncEvolve = {
        ...account,
        evolve: async (state: Account, event: Parameters<typeof account.evolve>[1]) => {
          if (event.type === 'withdrawn') throw new Error('evolve refuses withdrawals')
          return account.evolve(state, event)
        },
      } as unknown as Decider<AccountCommand, AccountEvent, Account>
      const asyncInitial = {
        ...account,
        initialState: async () => account.initialState(),
      } as unknown as Decider<AccountCommand, AccountEvent, Account>
      const setups = {
        evolve: [asyncEvolve, /decider\.evolve: expected to return the new state, not a promise/],
        initialState: [
          asyncInitial,
          /decider\.initialState: expected to return the initial state, not a promise/,
        ],
      } as const
      for (const [setup, [decider, message]] of Object.entries(setups)) {
        const accounts = createCommandHandler(store, { decider })
        const id = fresh()
        await expect(accounts.handle(id, { kind: 'open', owner: 'pat' }), setup).rejects.toThrow(
          message,
        )
        expect((await store.readStream(id)).version, setup).toBe(0)
        await store.append(id, [
          { type: 'opened', data: { owner: 'pat' } },
          { type: 'withdrawn', data: { amount: 1 } },
        ])
        await expect(accounts.load(id), setup).rejects.toThrow(message)
        await expect(accounts.handle(id, { kind: 'deposit', amount: 1 }), setup).rejects.toThrow(
          message,
        )
        expect((await store.readStream(id)).version, setup).toBe(2)
      }
      // A custom snapshot deserialize that is async: the fold of the tail went on from a
      // promise (a spread of it: an empty state).
      const restoring = createCommandHandler(store, {
        decider: account,
        snapshots: {
          every: 1,
          name: 'async-deserialize',
          serialize: JSON.stringify,
          deserialize: (async (text: string) => JSON.parse(text)) as never,
        },
      })
      const id = fresh()
      await restoring.handle(id, { kind: 'open', owner: 'pat' })
      await store.append(id, [{ type: 'deposited', data: { amount: 5 } }])
      const restoreMessage = /snapshots\.deserialize: expected to return the state, not a promise/
      await expect(restoring.load(id)).rejects.toThrow(restoreMessage)
      await expect(restoring.handle(id, { kind: 'deposit', amount: 1 })).rejects.toThrow(
        restoreMessage,
      )
      expect((await store.readStream(id)).version).toBe(2)
    })
    expect(rejections).toEqual([])
  })

  it('refuses metadata that is not an object before deciding', async () => {
    const accounts = createCommandHandler(store, { decider: account })
    const id = fresh()
    await accounts.handle(id, { kind: 'open', owner: 'ivy' })
    // Spread into each event's metadata, a string or an array became {"0": ...}.
    for (const metadata of ['trace-1', ['trace-1']]) {
      await expect(
        accounts.handle(id, { kind: 'deposit', amount: 1 }, { metadata: metadata as never }),
      ).rejects.toThrow(/metadata: expected an object/)
    }
    expect((await store.readStream(id)).version).toBe(1)
  })

  it('refuses a signal that is not an AbortSignal, naming signal, before deciding', async () => {
    let decided = 0
    const accounts = createCommandHandler(store, {
      decider: {
        ...account,
        decide: (command: AccountCommand, state: Account) => {
          decided++
          return account.decide(command, state)
        },
      },
      idempotency: {},
    })
    const id = fresh()
    // It was refused by the retry policy inside, as 'retry.execute(signal)': an option the
    // caller never wrote.
    for (const commandId of [undefined, 'signal-check']) {
      const error = await accounts
        .handle(id, { kind: 'open', owner: 'sig' }, { commandId, signal: 'abort' as never })
        .catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('signal')
    }
    expect(decided).toBe(0)
    expect((await store.readStream(id)).version).toBe(0)
  })

  it('load() refuses a stream name the database cannot store, as handle() does', async () => {
    const accounts = createCommandHandler(store, {
      decider: account,
      snapshots: { every: 5, name: 'load-check' },
    })
    // '' read back as a never-written stream; NUL was a bare driver error on PostgreSQL (and a
    // lookup of another name on SQLite); a lone surrogate read the U+FFFD stream on PostgreSQL.
    for (const stream of ['', 'acc\u0000x', 'acc\ud800', 42]) {
      await expect(accounts.load(stream as string)).rejects.toThrow(
        /stream: expected a non-empty string without NUL/,
      )
      await expect(accounts.handle(stream as string, { kind: 'open', owner: 'x' })).rejects.toThrow(
        /stream: expected a non-empty string without NUL/,
      )
    }
    await expect(accounts.load('acc', 'x' as never)).rejects.toThrow(/options: expected an object/)
    // Refused before deciding: a stream id too long to be a key.
    await expect(accounts.handle('é'.repeat(1100), { kind: 'open', owner: 'x' })).rejects.toThrow(
      /stream: expected a name of at most 2048 UTF-8 bytes/,
    )
  })

  it('rejects bad options naming them', () => {
    expect(() => createCommandHandler(store, { decider: {} as never })).toThrow(
      /decider\.initialState/,
    )
    expect(() => createCommandHandler({} as never, { decider: account })).toThrow(
      /store: expected an event store/,
    )
    expect(() => createCommandHandler(store, { decider: account, maxAttempts: 0 })).toThrow(
      /maxAttempts/,
    )
    expect(() =>
      createCommandHandler(store, { decider: account, snapshots: { every: 0 } }),
    ).toThrow(/snapshots\.every/)
    // A key with the stream id (PostgreSQL indexes at most about 2,700 bytes).
    expect(() =>
      createCommandHandler(store, {
        decider: account,
        snapshots: { every: 5, name: 'v'.repeat(257) },
      }),
    ).toThrow(/snapshots\.name: expected a name of at most 256 UTF-8 bytes/)
    // Checked by the idempotency module, which named them as its own options (leaseMs).
    for (const option of ['leaseMs', 'retentionMs'] as const) {
      for (const value of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 1.5, '60000']) {
        expect(() =>
          createCommandHandler(store, {
            decider: account,
            idempotency: { [option]: value as never },
          }),
        ).toThrow(expect.objectContaining({ option: `idempotency.${option}` }))
      }
    }
    // PostgreSQL text cannot hold NUL (every load would fail there) and stores a lone
    // surrogate as U+FFFD (two names would share snapshots): refused on both databases.
    for (const name of ['cart\u0000v2', 'cart\udc00']) {
      expect(() =>
        createCommandHandler(store, { decider: account, snapshots: { every: 5, name } }),
      ).toThrow(/snapshots\.name: expected a non-empty string without NUL/)
    }
  })
})
