// Edges of the SQLite group commit (writeAtomically): a one-statement unit that fails part-way
// (OR FAIL, RAISE(FAIL)) and control statements behind empty statements (a leading ";").
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqliteDriver, type SqliteDriver } from '../../src/stores/sqlite.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { uniqueTable } from './drivers.js'

describe('SQLite group commit edges', () => {
  let file: TestSqlite
  let db: SqliteDriver

  beforeAll(async () => {
    file = createTestSqlite('group-commit-edges')
    db = await createSqliteDriver({ filename: file.filename })
  })
  afterAll(async () => {
    await db?.close()
    file?.cleanup()
  })

  // runGroup runs a unit of one statement and no check without a savepoint ("SQLite undoes a
  // failed statement by itself"), which is false for OR FAIL (and RAISE(FAIL)): the rows the
  // statement wrote before the failing one stay, and the group commits them.
  it('a one-statement unit that fails keeps none of its rows (INSERT OR FAIL)', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    await db.execute(`INSERT INTO ${t} (id) VALUES (1)`)
    await expect(
      db.writeAtomically([{ sql: `INSERT OR FAIL INTO ${t} (id) VALUES (100), (101), (1)` }]),
    ).rejects.toMatchObject({ code: 'SQLITE_CONSTRAINT_PRIMARYKEY' })
    // Before the fix (f3988d35): [1, 100, 101].
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([{ id: 1 }])
  })

  it('a one-statement unit whose trigger RAISEs FAIL keeps none of its rows', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    await db.execute(
      `CREATE TRIGGER ${t}_fail BEFORE INSERT ON ${t} WHEN NEW.id < 0
       BEGIN SELECT RAISE(FAIL, 'negative'); END`,
    )
    await expect(
      db.writeAtomically([{ sql: `INSERT INTO ${t} (id) VALUES (5), (6), (-1)` }]),
    ).rejects.toThrow('negative')
    // Before the fix: [5, 6].
    expect(await db.query(`SELECT id FROM ${t} ORDER BY id`)).toEqual([])
  })

  // groupControlStatement skips leading whitespace and comments but not a leading ';', which
  // SQLite (and better-sqlite3's prepare) skips: ';COMMIT' runs COMMIT inside the group.
  it.each(['; COMMIT', ';ROLLBACK', '/* x */ ;; SAVEPOINT y'])(
    'refuses %j with TRANSACTION_MISUSE',
    async (sql) => {
      await expect(db.writeAtomically([{ sql }])).rejects.toMatchObject({
        code: 'TRANSACTION_MISUSE',
      })
    },
  )

  // What that leads to: the earlier unit's row is committed by the ';COMMIT' mid-group, then
  // the group's own COMMIT fails ("no transaction is active") and rejects it: a caller is told
  // its write failed while it is in the database.
  it('never rejects a unit whose rows were committed', async () => {
    const t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
    const outcomes = await Promise.allSettled([
      db.writeAtomically([{ sql: `INSERT INTO ${t} (id) VALUES (1)` }]),
      db.writeAtomically([{ sql: ';COMMIT' }]),
    ])
    const rows = await db.query<{ id: number }>(`SELECT id FROM ${t}`)
    // Before the fix: unit 0 rejected with "cannot commit - no transaction is active", rows [{ id: 1 }].
    expect({ first: outcomes[0]!.status, rows: rows.length }).not.toEqual({
      first: 'rejected',
      rows: 1,
    })
  })
})
