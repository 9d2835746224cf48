// A projection moved between inline and async (one release runs it in appends, the next in a
// projector, or back): the registration row records how it runs, so neither side trusts what
// the other left. An inline projection's stored position is only where its last rebuild ended
// (appends never move it): followed async from there, every later event would be applied a
// second time. An async projection's tables lack the events its projector had not reached:
// run inline from the next append, they would be reported complete.
import { describe, expect, it } from 'vitest'
import {
  createCommandHandler,
  createEventStore,
  createProjector,
  type EventStore,
} from '../../src/cqrs/index.js'
import { InvalidOptionError, TimeoutError } from '../../src/index.js'
import { account, type BalanceRow, balancesProjection, foldBalances } from './accounts.js'
import { dbTargets, type TestDb, useTestDb } from './databases.js'

async function balances(t: TestDb, table: string): Promise<BalanceRow[]> {
  const rows = await t.db.query<BalanceRow>(
    `SELECT account_id, owner, balance, events FROM ${table} ORDER BY account_id`,
  )
  return rows.map((r) => ({ ...r, balance: Number(r.balance), events: Number(r.events) }))
}

async function allEvents(store: EventStore) {
  return store.readAll({ fromPosition: 0, limit: 100_000 })
}

describe.each(dbTargets)('a projection moved between inline and async on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_projection_mode_switch')

  it('run async after running inline: refused until rebuilt, never applied twice', async () => {
    const projection = balancesProjection('switch-to-async', 'switch_to_async')
    const inlineStore = createEventStore(t.db, { inlineProjections: [projection] })
    const handler = createCommandHandler(inlineStore, { decider: account })
    await handler.handle('sa-1', { kind: 'open', owner: 'ann' })
    await handler.handle('sa-1', { kind: 'deposit', amount: 5 })
    const before = await balances(t, 'switch_to_async')
    expect(before).toMatchObject([{ balance: 5 }])

    // The next release runs it in a projector.
    const store = createEventStore(t.db)
    const projector = createProjector(store, projection)
    const refused = await projector.catchUp().catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(InvalidOptionError)
    expect((refused as Error).message).toContain('switch-to-async')
    expect(await balances(t, 'switch_to_async')).toEqual(before)

    await projector.rebuild()
    await createCommandHandler(store, { decider: account }).handle('sa-1', {
      kind: 'deposit',
      amount: 1,
    })
    await projector.catchUp()
    expect(await balances(t, 'switch_to_async')).toEqual(foldBalances(await allEvents(store)))
  })

  it('run inline after running async: not complete until rebuilt', async () => {
    const projection = balancesProjection('switch-to-inline', 'switch_to_inline')
    const store = createEventStore(t.db)
    const handler = createCommandHandler(store, { decider: account })
    const projector = createProjector(store, projection)
    await handler.handle('si-1', { kind: 'open', owner: 'bo' })
    await projector.catchUp()
    // Appended after the projector's last batch, before the switch: never applied.
    await handler.handle('si-1', { kind: 'deposit', amount: 3 })

    const inlineStore = createEventStore(t.db, { inlineProjections: [projection] })
    const later = await createCommandHandler(inlineStore, { decider: account }).handle('si-2', {
      kind: 'open',
      owner: 'cy',
    })
    const inlineProjector = createProjector(inlineStore, projection)
    expect(await inlineProjector.position()).toBeLessThan(later.lastPosition)
    const waited = await inlineProjector
      .waitFor(later.lastPosition, { timeoutMs: 0 })
      .catch((e: unknown) => e)
    expect(waited).toBeInstanceOf(TimeoutError)
    // The async side stops too: the appends apply it now.
    expect(await projector.catchUp().catch((e: unknown) => e)).toBeInstanceOf(InvalidOptionError)

    await inlineProjector.rebuild()
    expect(await balances(t, 'switch_to_inline')).toEqual(
      foldBalances(await allEvents(inlineStore)),
    )
    await inlineProjector.waitFor(later.lastPosition, { timeoutMs: 0 })
  })
})
