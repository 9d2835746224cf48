// readStoredWholeNumber: what a stored count, position or version may arrive as from a valid row.
// Besides numbers, digit text (an int8 column through a pg pool that does not parse it) and a
// BigInt (a better-sqlite3 Database with defaultSafeIntegers(true), reached through fromKysely)
// are whole numbers; the SQL idempotency store reads both alike. Real SQLite through Kysely.
import Database from 'better-sqlite3'
import { Kysely, SqliteDialect } from 'kysely'
import { afterAll, describe, expect, it } from 'vitest'
import { createEventStore, migrateCqrs } from '../../src/cqrs/index.js'
import { readStoredWholeNumber } from '../../src/stores/errors.js'
import { fromKysely, openDatabase } from '../../src/stores/index.js'
import { createTestSqlite } from '../support/sqlite.js'

describe('readStoredWholeNumber', () => {
  it('reads numbers, digit text and BigInts from 0', () => {
    expect(readStoredWholeNumber(0)).toBe(0)
    expect(readStoredWholeNumber(7)).toBe(7)
    expect(readStoredWholeNumber('42')).toBe(42)
    expect(readStoredWholeNumber(0n)).toBe(0)
    expect(readStoredWholeNumber(5n)).toBe(5)
  })

  it('refuses what no valid row holds', () => {
    for (const bad of [-1, 1.5, Number.NaN, 'abc', '-3', '', -1n, 2n ** 60n, null, undefined]) {
      expect(readStoredWholeNumber(bad)).toBeUndefined()
    }
  })

  const file = createTestSqlite('stored-whole-number')
  afterAll(() => file.cleanup())

  it('an event store read through fromKysely on a Database returning BigInts is no stored-data error', async () => {
    const db = await openDatabase(file.url)
    try {
      await migrateCqrs(db)
      await createEventStore(db).append('s', [{ type: 'placed', data: {} }])
    } finally {
      await db.close()
    }
    const raw = new Database(file.filename)
    raw.defaultSafeIntegers(true)
    const kysely = new Kysely<Record<string, never>>({
      dialect: new SqliteDialect({ database: raw }),
    })
    const db2 = await openDatabase(file.url)
    try {
      const store = createEventStore(db2)
      const read = await kysely
        .transaction()
        .execute((trx) => store.readStream('s', { tx: fromKysely(trx, 'sqlite') }))
      expect(read.version).toBe(1)
      expect(read.events).toHaveLength(1)
    } finally {
      await kysely.destroy()
      await db2.close()
    }
  })
})
