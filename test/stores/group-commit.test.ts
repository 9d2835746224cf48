// Group commit of the SQLite driver (SqliteDriver.writeAtomically, src/stores/group-commit.ts),
// on a real SQLite file: units asked for in one turn share one BEGIN IMMEDIATE ... COMMIT, each
// atomic on its own (a savepoint), a failure that ends SQLite's whole transaction re-runs the
// others, statements that control transactions are refused, close() writes what was asked.
import { readFileSync } from 'node:fs'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqliteDriver, type SqliteDriver } from '../../src/stores/sqlite.js'
import type { SqlWrite, WriteCheck } from '../../src/stores/types.js'
import { holdOpenTransaction } from '../support/held-transaction.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { uniqueTable } from './drivers.js'

type Outcome = { status: 'fulfilled'; value: number[] } | { status: 'rejected'; reason: unknown }

async function ids(db: SqliteDriver, table: string): Promise<number[]> {
  const rows = await db.query<{ id: number }>(`SELECT id FROM ${table} ORDER BY id`)
  return rows.map((row) => row.id)
}

function insert(table: string, id: number): SqlWrite {
  return { sql: `INSERT INTO ${table} (id) VALUES ($1)`, params: [id] }
}

// The COMMITs in the file's write-ahead log: frames of the current log (salts of its header)
// whose "database size after commit" field is set. The log is never restarted here (it is far
// below the 1000-page auto-checkpoint and the driver's 16 MiB bound).
function walCommits(filename: string): number {
  const wal = readFileSync(`${filename}-wal`)
  if (wal.length < 32) return 0
  const pageSize = wal.readUInt32BE(8)
  const salt1 = wal.readUInt32BE(16)
  const salt2 = wal.readUInt32BE(20)
  let commits = 0
  for (let at = 32; at + 24 + pageSize <= wal.length; at += 24 + pageSize) {
    if (wal.readUInt32BE(at + 8) !== salt1 || wal.readUInt32BE(at + 12) !== salt2) break
    if (wal.readUInt32BE(at + 4) !== 0) commits++
  }
  return commits
}

// Where a promise stands once the event loop has gone round once (a group runs on setImmediate,
// so a unit that was queued rather than refused is still pending then).
function afterATurn(promise: Promise<unknown>): Promise<'pending' | Outcome> {
  return Promise.race([
    promise.then(
      (value) => ({ status: 'fulfilled', value }) as Outcome,
      (reason: unknown) => ({ status: 'rejected', reason }) as Outcome,
    ),
    new Promise<'pending'>((resolve) => setImmediate(() => resolve('pending'))),
  ])
}

// Every unit's outcome, failing at once if one is still pending after some turns of the event
// loop: a group runs on setImmediate and settles all its units there (no I/O wait here, the
// file's lock being free), so a unit left pending would never settle.
async function settleAll(promises: ReadonlyArray<Promise<number[]>>): Promise<Outcome[]> {
  const outcomes: Array<Outcome | undefined> = promises.map(() => undefined)
  promises.forEach((promise, index) => {
    promise.then(
      (value) => {
        outcomes[index] = { status: 'fulfilled', value }
      },
      (reason: unknown) => {
        outcomes[index] = { status: 'rejected', reason }
      },
    )
  })
  for (let turn = 0; turn < 20 && outcomes.includes(undefined); turn++) {
    await new Promise((resolve) => setImmediate(resolve))
  }
  const pending = outcomes.flatMap((outcome, index) => (outcome === undefined ? [index] : []))
  expect(pending, 'units that never settled').toEqual([])
  return outcomes as Outcome[]
}

describe('SQLite group commit (writeAtomically)', () => {
  let file: TestSqlite
  let db: SqliteDriver

  beforeAll(async () => {
    file = createTestSqlite('group-commit')
    db = await createSqliteDriver({ filename: file.filename })
  })
  afterAll(async () => {
    await db?.close()
    file?.cleanup()
  })

  // Two tables whose foreign key SQLite checks at COMMIT (the driver turns foreign keys on).
  async function parentAndChild(): Promise<{ parent: string; child: string }> {
    const parent = uniqueTable('parent')
    const child = uniqueTable('child')
    await db.execute(`CREATE TABLE ${parent} (id INTEGER PRIMARY KEY)`)
    await db.execute(
      `CREATE TABLE ${child} (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL
         REFERENCES ${parent} (id) DEFERRABLE INITIALLY DEFERRED)`,
    )
    return { parent, child }
  }

  describe('units of one turn', () => {
    it('are all written and resolve with their row counts', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0)`)
      await db.execute(`INSERT INTO ${t} (id) VALUES (100), (101), (102)`)
      const units = [
        db.writeAtomically([insert(t, 1)]),
        db.writeAtomically([insert(t, 2), insert(t, 3)]),
        db.writeAtomically([{ sql: `UPDATE ${t} SET n = n + 1 WHERE id >= $1`, params: [100] }]),
        db.writeAtomically([
          insert(t, 4),
          { sql: `DELETE FROM ${t} WHERE id = $1`, params: [999] },
          { sql: `UPDATE ${t} SET n = 7 WHERE id IN ($1, $2)`, params: [1, 4] },
        ]),
      ]
      expect(await Promise.all(units)).toEqual([[1], [1, 1], [3], [1, 0, 2]])
      expect(await ids(db, t)).toEqual([1, 2, 3, 4, 100, 101, 102])
      expect(await db.query(`SELECT id, n FROM ${t} WHERE n > 0 ORDER BY id`)).toEqual([
        { id: 1, n: 7 },
        { id: 4, n: 7 },
        { id: 100, n: 1 },
        { id: 101, n: 1 },
        { id: 102, n: 1 },
      ])
    })

    it('share one COMMIT: one commit record in the log for the group, one per unit apart', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
      // The counter sees commits: three units in three turns are three.
      const before = walCommits(file.filename)
      for (const id of [1, 2, 3]) await db.writeAtomically([insert(t, id)])
      expect(walCommits(file.filename) - before).toBe(3)

      const start = walCommits(file.filename)
      const units: Array<Promise<number[]>> = []
      for (let id = 10; id < 18; id++) {
        units.push(
          id % 2 === 0
            ? db.writeAtomically([insert(t, id)])
            : db.writeAtomically([insert(t, id), insert(t, id + 100)]),
        )
      }
      // Queued, not written yet: nothing runs before the group's setImmediate.
      expect(walCommits(file.filename)).toBe(start)
      await Promise.all(units)
      expect(walCommits(file.filename) - start).toBe(1)
      expect(await ids(db, t)).toEqual([
        1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 111, 113, 115, 117,
      ])
    })

    it('share one transaction: a deferred foreign key is checked at the group COMMIT', async () => {
      const { parent, child } = await parentAndChild()
      const orphan: SqlWrite = {
        sql: `INSERT INTO ${child} (id, parent) VALUES ($1, $2)`,
        params: [1, 7],
      }
      // Alone, the child's unit commits without its parent: SQLite refuses the COMMIT.
      await expect(db.writeAtomically([orphan])).rejects.toThrow(/FOREIGN KEY constraint failed/)
      expect(await ids(db, child)).toEqual([])

      // In one group with a later unit that writes the parent, the COMMIT sees both.
      const results = await Promise.all([
        db.writeAtomically([orphan]),
        db.writeAtomically([insert(parent, 3)]),
        db.writeAtomically([insert(parent, 7), insert(parent, 8)]),
      ])
      expect(results).toEqual([[1], [1], [1, 1]])
      expect(await ids(db, child)).toEqual([1])
      expect(await ids(db, parent)).toEqual([3, 7, 8])
    })

    // Documented (SqlDriver.writeAtomically): a failing COMMIT rejects every unit of the group,
    // nothing of it written.
    it('a COMMIT refused for a deferred foreign key rejects only the unit that broke it', async () => {
      const { parent, child } = await parentAndChild()
      const [first, broken, last] = await Promise.allSettled([
        db.writeAtomically([insert(parent, 1)]),
        db.writeAtomically([
          { sql: `INSERT INTO ${child} (id, parent) VALUES ($1, $2)`, params: [1, 99] },
        ]),
        db.writeAtomically([insert(parent, 2), insert(parent, 3)]),
      ])
      expect(first).toEqual({ status: 'fulfilled', value: [1] })
      expect(last).toEqual({ status: 'fulfilled', value: [1, 1] })
      expect(broken.status).toBe('rejected')
      expect(String((broken as PromiseRejectedResult).reason)).toMatch(/FOREIGN KEY/)
      expect(await ids(db, parent)).toEqual([1, 2, 3])
      expect(await ids(db, child)).toEqual([])
      // The connection is usable afterwards.
      expect(await db.writeAtomically([insert(parent, 4)])).toEqual([1])
    })
  })

  describe('atomicity of a unit', () => {
    it('a unit whose later statement breaks a key rejects with that error, none of its rows kept', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, email TEXT UNIQUE)`)
      await db.execute(`INSERT INTO ${t} (id, email) VALUES (1, 'a@x')`)
      const row = (id: number, email: string): SqlWrite => ({
        sql: `INSERT INTO ${t} (id, email) VALUES ($1, $2)`,
        params: [id, email],
      })
      const [before, primaryKey, unique, single, after] = await Promise.allSettled([
        db.writeAtomically([row(2, 'b@x')]),
        db.writeAtomically([row(10, 'k@x'), row(11, 'l@x'), row(1, 'm@x')]),
        db.writeAtomically([row(20, 'u@x'), row(21, 'a@x')]),
        db.writeAtomically([row(2, 'dup@x')]),
        db.writeAtomically([row(3, 'c@x'), row(4, 'd@x')]),
      ])
      expect(before).toEqual({ status: 'fulfilled', value: [1] })
      expect(after).toEqual({ status: 'fulfilled', value: [1, 1] })
      expect(primaryKey).toMatchObject({
        status: 'rejected',
        reason: {
          code: 'SQLITE_CONSTRAINT_PRIMARYKEY',
          message: expect.stringMatching(/t\w*\.id/),
        },
      })
      expect(unique).toMatchObject({
        status: 'rejected',
        reason: { code: 'SQLITE_CONSTRAINT_UNIQUE', message: expect.stringMatching(/\.email/) },
      })
      // Earlier in the group, unit 0 wrote id 2: the one-statement unit collides with it.
      expect(single).toMatchObject({
        status: 'rejected',
        reason: { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' },
      })
      expect(await ids(db, t)).toEqual([1, 2, 3, 4])
      expect(await db.query(`SELECT email FROM ${t} WHERE id = 2`)).toEqual([{ email: 'b@x' }])
    })

    it('a check that returns an error rolls back its unit only and rejects with that error', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0)`)
      await db.execute(`INSERT INTO ${t} (id) VALUES (1), (2)`)
      const seen: Array<readonly number[]> = []
      const refusal = new Error('not what I expected')
      const refuse: WriteCheck = (rowCounts) => {
        seen.push([...rowCounts])
        return refusal
      }
      const keep: WriteCheck = (rowCounts) => {
        seen.push([...rowCounts])
        return undefined
      }
      const [kept, refused, refusedSingle, plain] = await Promise.allSettled([
        db.writeAtomically([insert(t, 3), { sql: `UPDATE ${t} SET n = 5 WHERE id < 3` }], keep),
        db.writeAtomically(
          [
            insert(t, 4),
            { sql: `UPDATE ${t} SET n = 9` },
            { sql: `DELETE FROM ${t} WHERE id = $1`, params: [42] },
          ],
          refuse,
        ),
        db.writeAtomically([{ sql: `DELETE FROM ${t} WHERE id = $1`, params: [1] }], refuse),
        db.writeAtomically([insert(t, 5)]),
      ])
      expect(seen).toEqual([[1, 2], [1, 4, 0], [1]])
      expect(kept).toEqual({ status: 'fulfilled', value: [1, 2] })
      expect(refused.status).toBe('rejected')
      expect((refused as PromiseRejectedResult).reason).toBe(refusal)
      expect((refusedSingle as PromiseRejectedResult).reason).toBe(refusal)
      expect(plain).toEqual({ status: 'fulfilled', value: [1] })
      expect(await db.query(`SELECT id, n FROM ${t} ORDER BY id`)).toEqual([
        { id: 1, n: 5 },
        { id: 2, n: 5 },
        { id: 3, n: 0 },
        { id: 5, n: 0 },
      ])
    })
  })

  describe('a failure that ends the whole transaction', () => {
    it('rejects the unit that met it; the others, before and after, are run again and written', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
      await db.execute(
        `CREATE TRIGGER ${t}_boom BEFORE INSERT ON ${t} WHEN NEW.id < 0
         BEGIN SELECT RAISE(ROLLBACK, 'boom'); END`,
      )
      await db.execute(`INSERT INTO ${t} (id) VALUES (1000)`)
      const refusal = new Error('refused')
      const outcomes = await settleAll([
        db.writeAtomically([insert(t, 1), insert(t, 2)]),
        db.writeAtomically([insert(t, 3)]),
        db.writeAtomically([insert(t, 4)], () => refusal),
        db.writeAtomically([insert(t, 5), insert(t, 1000)]),
        db.writeAtomically([insert(t, 6), insert(t, -1)]),
        db.writeAtomically([insert(t, 7), insert(t, 8)]),
        db.writeAtomically([insert(t, -2)]),
        db.writeAtomically([insert(t, 9)], () => undefined),
        db.writeAtomically([{ sql: `INSERT OR ROLLBACK INTO ${t} (id) VALUES ($1)`, params: [3] }]),
        db.writeAtomically([insert(t, 10)]),
        db.writeAtomically([
          insert(t, 11),
          { sql: `INSERT OR ROLLBACK INTO ${t} (id) VALUES ($1)`, params: [11] },
        ]),
        db.writeAtomically([insert(t, 12), insert(t, 13)]),
      ])
      expect(outcomes.map((outcome) => outcome.status)).toEqual([
        'fulfilled',
        'fulfilled',
        'rejected',
        'rejected',
        'rejected',
        'fulfilled',
        'rejected',
        'fulfilled',
        'rejected',
        'fulfilled',
        'rejected',
        'fulfilled',
      ])
      const values = outcomes.map((outcome) =>
        outcome.status === 'fulfilled' ? outcome.value : undefined,
      )
      expect(values).toEqual([
        [1, 1],
        [1],
        undefined,
        undefined,
        undefined,
        [1, 1],
        undefined,
        [1],
        undefined,
        [1],
        undefined,
        [1, 1],
      ])
      const reasons = outcomes.map((outcome) =>
        outcome.status === 'rejected' ? outcome.reason : undefined,
      )
      expect(reasons[2]).toBe(refusal)
      expect(reasons[3]).toMatchObject({ code: 'SQLITE_CONSTRAINT_PRIMARYKEY' })
      expect(reasons[4]).toMatchObject({ message: 'boom' })
      expect(reasons[6]).toMatchObject({ message: 'boom' })
      // Collides with unit 1's id 3, written again in the new transaction before it.
      expect(reasons[8]).toMatchObject({ code: 'SQLITE_CONSTRAINT_PRIMARYKEY' })
      expect(reasons[10]).toMatchObject({ code: 'SQLITE_CONSTRAINT_PRIMARYKEY' })
      expect(await ids(db, t)).toEqual([1, 2, 3, 7, 8, 9, 10, 12, 13, 1000])
    })

    it('runs the re-run units in one new transaction (one commit for the rest of the group)', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
      await db.execute(`INSERT INTO ${t} (id) VALUES (0)`)
      const start = walCommits(file.filename)
      const outcomes = await settleAll([
        db.writeAtomically([insert(t, 1)]),
        db.writeAtomically([{ sql: `INSERT OR ROLLBACK INTO ${t} (id) VALUES (0)` }]),
        db.writeAtomically([insert(t, 2), insert(t, 3)]),
        db.writeAtomically([insert(t, 4)]),
      ])
      expect(outcomes.map((outcome) => outcome.status)).toEqual([
        'fulfilled',
        'rejected',
        'fulfilled',
        'fulfilled',
      ])
      expect(walCommits(file.filename) - start).toBe(1)
      expect(await ids(db, t)).toEqual([0, 1, 2, 3, 4])
    })
  })

  describe('refusals', () => {
    const misuse = { code: 'TRANSACTION_MISUSE' }

    it('refuses an empty unit', async () => {
      await expect(db.writeAtomically([])).rejects.toMatchObject(misuse)
    })

    it.each([
      'COMMIT',
      'commit transaction',
      'END',
      'BEGIN',
      'BEGIN IMMEDIATE',
      'ROLLBACK',
      'SAVEPOINT x',
      'RELEASE x',
      'RELEASE SAVEPOINT x',
      'ROLLBACK TO x',
      'rollback transaction to savepoint x',
      '  \n\tCOMMIT',
      '-- a comment\nCOMMIT',
      '/* a comment */ SAVEPOINT x',
      '/* one */ -- two\n  RELEASE x',
      '-- a comment\n/* another */ROLLBACK TO x',
    ])('refuses %j, also after a good statement, and writes nothing', async (sql) => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
      const alone = db.writeAtomically([{ sql }])
      const after = db.writeAtomically([insert(t, 1), { sql }])
      const neighbour = db.writeAtomically([insert(t, 2)])
      // Refused at once: never queued.
      expect(await afterATurn(alone)).toMatchObject({ status: 'rejected', reason: misuse })
      expect(await afterATurn(after)).toMatchObject({ status: 'rejected', reason: misuse })
      expect(await neighbour).toEqual([1])
      expect(await ids(db, t)).toEqual([2])
    })

    it('does not refuse ordinary statements whose words only look like control', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, note TEXT)`)
      const result = await db.writeAtomically([
        { sql: `INSERT OR ROLLBACK INTO ${t} (id, note) VALUES ($1, $2)`, params: [1, 'COMMIT'] },
        { sql: `/* BEGIN */ INSERT INTO ${t} (id, note) VALUES (2, 'savepoint')` },
      ])
      expect(result).toEqual([1, 1])
    })

    it('refuses a call from inside its own transaction (rejects, does not wait for it)', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
      let inside: 'pending' | Outcome | undefined
      await db.transaction(async (tx) => {
        await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
        inside = await afterATurn(db.writeAtomically([insert(t, 2)]))
      })
      expect(inside).toMatchObject({ status: 'rejected', reason: misuse })
      expect(await ids(db, t)).toEqual([1])
      // Outside it again, the driver groups as before.
      expect(await db.writeAtomically([insert(t, 3)])).toEqual([1])
    })

    it('refuses a second driver of the same file inside the first one’s transaction', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
      const second = await createSqliteDriver({ filename: file.filename })
      try {
        let inside: 'pending' | Outcome | undefined
        await db.transaction(async (tx) => {
          await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
          inside = await afterATurn(second.writeAtomically([insert(t, 2)]))
        })
        expect(inside).toMatchObject({ status: 'rejected', reason: misuse })
        expect(await second.writeAtomically([insert(t, 3)])).toEqual([1])
        expect(await ids(db, t)).toEqual([1, 3])
      } finally {
        await second.close()
      }
    })

    it('waits for another driver’s transaction on the same file when not called from it', async () => {
      const t = uniqueTable()
      await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
      const second = await createSqliteDriver({ filename: file.filename })
      try {
        const held = await holdOpenTransaction(db, (tx) =>
          tx.execute(`INSERT INTO ${t} (id) VALUES (1)`),
        )
        const unit = second.writeAtomically([insert(t, 2)])
        expect(await afterATurn(unit)).toBe('pending')
        await held.commit()
        expect(await unit).toEqual([1])
        expect(await ids(db, t)).toEqual([1, 2])
      } finally {
        await second.close()
      }
    })
  })

  describe('close', () => {
    it('writes the units asked for before it, then refuses with STORE_CLOSED', async () => {
      const own = createTestSqlite('group-close')
      try {
        const driver = await createSqliteDriver({ filename: own.filename })
        await driver.execute('CREATE TABLE t (id INTEGER PRIMARY KEY)')
        const units = [
          driver.writeAtomically([insert('t', 1)]),
          driver.writeAtomically([insert('t', 2), insert('t', 3)]),
          driver.writeAtomically([insert('t', 4)], () => undefined),
        ]
        const closing = driver.close()
        await closing
        expect(await Promise.all(units)).toEqual([[1], [1, 1], [1]])
        await expect(driver.writeAtomically([insert('t', 5)])).rejects.toMatchObject({
          code: 'STORE_CLOSED',
        })
        // Still refused after the group's setImmediate has come and gone.
        expect(await afterATurn(driver.writeAtomically([insert('t', 6)]))).toMatchObject({
          status: 'rejected',
          reason: { code: 'STORE_CLOSED' },
        })
        const reopened = await createSqliteDriver({ filename: own.filename })
        try {
          expect(await ids(reopened, 't')).toEqual([1, 2, 3, 4])
        } finally {
          await reopened.close()
        }
      } finally {
        own.cleanup()
      }
    })
  })

  describe('property: a group behaves as its units run one after another', () => {
    // An op inserts an id of a small pool (so it may collide with a seeded row, an earlier
    // unit's row or its own unit's), plainly or with OR ROLLBACK (a collision then ends the
    // whole transaction); a unit may have a check that refuses.
    const op = fc.record({ id: fc.integer({ min: 1, max: 12 }), orRollback: fc.boolean() })
    const unit = fc.record({
      ops: fc.array(op, { minLength: 1, maxLength: 4 }),
      check: fc.constantFrom('none', 'keep', 'refuse'),
    })
    const seeded = [1, 2, 3]

    it('writes exactly the resolved units, rejects the others, settles every unit', async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(unit, { minLength: 1, maxLength: 12 }), async (units) => {
          const t = uniqueTable('prop')
          await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, unit INTEGER NOT NULL)`)
          await db.execute(`INSERT INTO ${t} (id, unit) VALUES (1, -1), (2, -1), (3, -1)`)
          const refusals = units.map((_, index) => new Error(`refused ${index}`))
          const promises = units.map((u, index) =>
            db.writeAtomically(
              u.ops.map((o) => ({
                sql: `INSERT ${o.orRollback ? 'OR ROLLBACK ' : ''}INTO ${t} (id, unit) VALUES ($1, $2)`,
                params: [o.id, index],
              })),
              u.check === 'none'
                ? undefined
                : u.check === 'keep'
                  ? () => undefined
                  : () => refusals[index],
            ),
          )
          const outcomes = await settleAll(promises)

          // The model: the units one after another, each all or nothing.
          const present = new Map<number, number>(seeded.map((id) => [id, -1]))
          units.forEach((u, index) => {
            const outcome = outcomes[index]!
            const mine = new Set<number>()
            const collision = u.ops.find((o) => {
              if (present.has(o.id) || mine.has(o.id)) return true
              mine.add(o.id)
              return false
            })
            if (collision !== undefined) {
              expect(outcome).toMatchObject({
                status: 'rejected',
                reason: { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' },
              })
            } else if (u.check === 'refuse') {
              expect(outcome.status).toBe('rejected')
              expect((outcome as { reason: unknown }).reason).toBe(refusals[index])
            } else {
              expect(outcome).toEqual({ status: 'fulfilled', value: u.ops.map(() => 1) })
              for (const id of mine) present.set(id, index)
            }
          })
          const rows = await db.query<{ id: number; unit: number }>(
            `SELECT id, unit FROM ${t} ORDER BY id`,
          )
          expect(rows).toEqual(
            [...present.entries()]
              .sort(([a], [b]) => a - b)
              .map(([id, owner]) => ({ id, unit: owner })),
          )
          // No row of a rejected unit.
          const rejected = new Set(
            outcomes.flatMap((outcome, index) => (outcome.status === 'rejected' ? [index] : [])),
          )
          expect(rows.filter((row) => rejected.has(row.unit))).toEqual([])
          await db.execute(`DROP TABLE ${t}`)
        }),
        { numRuns: 50 },
      )
    })
  })
})
