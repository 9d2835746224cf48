// A second `breakwater saga cancel` of a saga whose cancel is still pending records nothing (the
// first request and its reason stand): it said "cancel requested" as if it had been recorded.
// Found by exploratory testing. It says the cancel was already requested, and exits 0 (what the
// operator asked for is the saga's state).
import { afterEach, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import { getSagaTimeline, migrateSagas, startSaga } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { createTestSqlite } from '../support/sqlite.js'
import { runCaptured } from './captured.js'
import { hanging } from './fixtures/hanging-sagas.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

describe('breakwater saga cancel, twice', () => {
  it('says the second was already requested, records nothing, and exits 0', async () => {
    const file = createTestSqlite('saga-cancel-twice')
    cleanups.push(() => file.cleanup())
    const db = await openDatabase(file.url)
    cleanups.push(() => db.close())
    await migrateSagas(db)
    const { id } = await startSaga(db, hanging, {})
    const first = await runCaptured(sagaCommand, [
      'cancel',
      id,
      '--reason',
      'a',
      '--by',
      'bob',
      '--db',
      file.url,
    ])
    expect(first).toMatchObject({ code: 0, stderr: '' })
    expect(first.stdout).toBe(
      `saga ${id}: cancel requested; its completed steps will be compensated\n`,
    )
    const second = await runCaptured(sagaCommand, [
      'cancel',
      id,
      '--reason',
      'b',
      '--by',
      'alice',
      '--db',
      file.url,
    ])
    expect(second).toMatchObject({ code: 0, stderr: '' })
    expect(second.stdout).toContain(`saga ${id}: cancel already requested`)
    expect(second.stdout).not.toContain('cancel requested;')
    const requests = (await getSagaTimeline(db, id)).filter((e) => e.kind === 'cancel-requested')
    expect(requests).toHaveLength(1)
    expect(requests[0]).toMatchObject({ worker: 'bob', detail: { reason: 'a' } })
  })
})
