// A savepoint whose callback catches a statement's error and returns normally, on real SQLite
// and real PostgreSQL. Each store follows its outer-transaction rule (SqlDriver.transaction):
// on PostgreSQL a failed statement aborts everything up to the savepoint, which cannot then be
// released, so the savepoint is rolled back and refused with TRANSACTION_MISUSE, the outer
// transaction going on; on SQLite an ordinary failure (here a duplicate key) undoes its own
// statement only, so the savepoint is released with the rest of its writes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import type { SqlDriver } from '../../src/stores/types.js'
import { type OpenedTarget, targets, uniqueTable } from './drivers.js'

describe.each(targets)('$dialect savepoint whose callback caught a statement error', (target) => {
  let opened: OpenedTarget
  let db: SqlDriver

  beforeAll(async () => {
    opened = await target.open('savepoint_caught')
    db = opened.db
  })
  afterAll(async () => {
    await opened?.cleanup()
  })

  it('follows the outer transaction rule and leaves the outer transaction usable', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    let caught: unknown
    let savepoint: unknown
    await db.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
      savepoint = await tx
        .transaction(async (sp) => {
          await sp.execute(`INSERT INTO ${t} (id) VALUES (2)`)
          caught = await sp.execute(`INSERT INTO ${t} (id) VALUES (1)`).catch((e) => e)
          return 'done'
        })
        .catch((e) => e)
      // The outer transaction goes on either way.
      await tx.execute(`INSERT INTO ${t} (id) VALUES (3)`)
    })
    expect(caught).toBeInstanceOf(Error)
    const rows = await db.query<{ id: number }>(`SELECT id FROM ${t} ORDER BY id`)
    if (target.dialect === 'postgres') {
      expect(BreakwaterError.is(savepoint) && savepoint.code).toBe('TRANSACTION_MISUSE')
      expect((savepoint as Error).message).toMatch(/savepoint.*caught/i)
      // Rolled back to the savepoint: its successful write (2) is undone with it.
      expect(rows).toEqual([{ id: 1 }, { id: 3 }])
    } else {
      expect(savepoint).toBe('done')
      expect(rows).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }])
    }
  })

  it('refuses on PostgreSQL at every depth, each outer level going on', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    let deepest: unknown
    const middle = await db.transaction((tx) =>
      tx.transaction(async (sp) => {
        await sp.execute(`INSERT INTO ${t} (id) VALUES (1)`)
        deepest = await sp
          .transaction(async (inner) => {
            await inner.execute(`INSERT INTO ${t} (id) VALUES (2)`)
            await inner.execute(`INSERT INTO ${t} (id) VALUES (2)`).catch(() => {})
          })
          .catch((e) => e)
        await sp.execute(`INSERT INTO ${t} (id) VALUES (3)`)
        return 'middle done'
      }),
    )
    expect(middle).toBe('middle done')
    const rows = await db.query<{ id: number }>(`SELECT id FROM ${t} ORDER BY id`)
    if (target.dialect === 'postgres') {
      expect(BreakwaterError.is(deepest) && deepest.code).toBe('TRANSACTION_MISUSE')
      expect(rows).toEqual([{ id: 1 }, { id: 3 }])
    } else {
      expect(deepest).toBeUndefined()
      expect(rows).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }])
    }
  })
})
