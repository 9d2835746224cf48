// The event store, command handlers, projectors and subscriptions on a clock whose time has a
// fraction of a millisecond. breakwater's ManualClock gets there as soon as it fires a jittered
// retry timer; PostgreSQL's BIGINT columns refused such a time (a bare "invalid input syntax"
// error on every append), while SQLite stored it as a float.
import { beforeAll, describe, expect, it } from 'vitest'
import {
  createCommandHandler,
  createEventStore,
  createProjector,
  type EventStore,
} from '../../src/cqrs/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { account, balancesProjection } from './accounts.js'
import { dbTargets, useTestDb } from './databases.js'

describe.each(dbTargets)('a clock with fractions of a millisecond on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_fractional_clock')
  let store: EventStore
  const clock = new ManualClock(1_700_000_000_000.75)
  beforeAll(async () => {
    store = createEventStore(t.db, { clock })
  })

  it('stores whole milliseconds everywhere it records a time', async () => {
    const opened = { type: 'opened', data: { owner: 'ann' } }
    const appended = await store.append('frac', [opened])
    const [alone, other] = await Promise.all([
      store.append('frac-a', [opened]),
      store.append('frac-b', [opened]),
    ])
    const inTx = await t.db.transaction((tx) => store.append('frac-tx', [opened], { tx }))
    for (const r of [appended, alone!, other!, inTx]) {
      expect(r.events[0]!.createdAt).toBe(1_700_000_000_000)
    }
    const read = await store.readStream('frac')
    expect(read.events[0]!.createdAt).toBe(1_700_000_000_000)
    await store.setStreamMetadata('frac', { a: 1 })
    await store.deleteStream('frac')

    const accounts = createCommandHandler(store, {
      decider: account,
      clock,
      snapshots: { every: 2, name: 'frac' },
    })
    await accounts.handle('acc-frac', { kind: 'open', owner: 'ann' })
    await accounts.handle('acc-frac', { kind: 'deposit', amount: 5 })
    expect((await accounts.load('acc-frac')).fromSnapshot).toBe(true)

    const projector = createProjector(store, balancesProjection('frac-balances', 'frac_balances'), {
      clock,
    })
    await projector.catchUp()
    await projector.rebuild()
    expect(await projector.position()).toBe(await store.headPosition())

    const seen: number[] = []
    const subscription = store.subscribe((e) => void seen.push(e.position), {
      name: 'frac-checkpoint',
      clock,
    })
    await expect.poll(() => subscription.live, { timeout: 10_000, interval: 2 }).toBe(true)
    await subscription.stop()
    const rows = await t.db.query<{ position: number; updated_at: number }>(
      'SELECT position, updated_at FROM breakwater_checkpoints WHERE name = $1',
      ['frac-checkpoint'],
    )
    expect(Number(rows[0]!.position)).toBe(await store.headPosition())
    expect(Number(rows[0]!.updated_at)).toBe(1_700_000_000_000)
  })
})
