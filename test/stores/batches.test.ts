// removeInBatches on real SQLite, whose statements resolve at once: without a turn of the event
// loop between batches, a whole sweep would run as one chain of microtasks, and every timer,
// request and claim arriving meanwhile would wait for all of it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { removeInBatches } from '../../src/stores/batches.js'
import { openDatabase } from '../../src/stores/open.js'
import type { SqlDriver } from '../../src/stores/types.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'

describe('removeInBatches', () => {
  let file: TestSqlite
  let db: SqlDriver

  beforeAll(async () => {
    file = createTestSqlite('batches')
    db = await openDatabase(file.url)
  })
  afterAll(async () => {
    await db?.close()
    file?.cleanup()
  })

  it('lets the event loop turn between batches on SQLite', async () => {
    await db.execute('CREATE TABLE swept (id INTEGER PRIMARY KEY)')
    await db.execute(
      'WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50) INSERT INTO swept (id) SELECT n FROM g',
    )
    let batches = 0
    let batchesWhenOthersRan: number | undefined
    // Stands for anything that arrives while the sweep runs (a request's claim, a timer).
    setImmediate(() => {
      batchesWhenOthersRan = batches
    })
    const removed = await removeInBatches(5, 100, async () => {
      batches++
      const { rowCount } = await db.transaction((tx) =>
        tx.execute('DELETE FROM swept WHERE id IN (SELECT id FROM swept ORDER BY id LIMIT 5)'),
      )
      return rowCount
    })
    expect(removed).toBe(50)
    // Ten full batches and a short one (empty) that ends the sweep.
    expect(batches).toBe(11)
    // It ran after the first batch, not after the whole sweep.
    expect(batchesWhenOthersRan).toBe(1)
  })

  it('does not wait after the last batch, short or the budget spent', async () => {
    let turned = false
    setImmediate(() => {
      turned = true
    })
    expect(await removeInBatches(5, 3, async () => 2)).toBe(2)
    expect(turned).toBe(false)
    let calls = 0
    expect(await removeInBatches(5, 1, async () => ++calls * 5)).toBe(5)
    expect(turned).toBe(false)
  })
})
