// A user's own transaction, wrapped as a SqlExecutor: breakwater's row and the business row
// commit together or not at all, on real databases.
import Database from 'better-sqlite3'
import { Kysely, PostgresDialect, SqliteDialect, type Transaction } from 'kysely'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { TransactionMisuseError } from '../../src/stores/errors.js'
import { fromKysely } from '../../src/stores/kysely.js'
import { fromPgClient } from '../../src/stores/postgres.js'
import { fromBetterSqlite } from '../../src/stores/sqlite.js'
import type { SqlExecutor } from '../../src/stores/types.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'

// What a capability does with the executor it is handed: write its own row, read it back.
async function writeBreakwaterRow(executor: SqlExecutor, id: string): Promise<void> {
  await executor.execute('INSERT INTO breakwater_rows (id, created_at, done) VALUES ($1, $2, $3)', [
    id,
    1_726_000_000_000,
    true,
  ])
  const rows = await executor.query<{ id: string; created_at: number }>(
    'SELECT id, created_at FROM breakwater_rows WHERE id = $1',
    [id],
  )
  expect(rows).toHaveLength(1)
  expect(Number(rows[0]!.created_at)).toBe(1_726_000_000_000)
}

interface Tables {
  business: { id: string }
  breakwater_rows: { id: string; created_at: number; done: number | boolean }
}

describe('PostgreSQL: fromPgClient and fromKysely', () => {
  let database: TestDatabase
  let pool: pg.Pool

  beforeAll(async () => {
    database = await createTestDatabase('wrappers')
    pool = new pg.Pool({ connectionString: database.url, max: 4 })
    await pool.query('CREATE TABLE business (id TEXT PRIMARY KEY)')
    await pool.query(
      'CREATE TABLE breakwater_rows (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, done BOOLEAN NOT NULL)',
    )
  })
  afterAll(async () => {
    await pool?.end()
    await database?.drop()
  })

  async function present(id: string): Promise<[number, number]> {
    const business = await pool.query('SELECT 1 FROM business WHERE id = $1', [id])
    const ours = await pool.query('SELECT 1 FROM breakwater_rows WHERE id = $1', [id])
    return [business.rowCount ?? 0, ours.rowCount ?? 0]
  }

  it('fromPgClient: both rows commit with the user’s COMMIT', async () => {
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      await client.query('INSERT INTO business (id) VALUES ($1)', ['pg-commit'])
      await writeBreakwaterRow(fromPgClient(client), 'pg-commit')
      // Not visible outside the transaction before COMMIT.
      expect(await present('pg-commit')).toEqual([0, 0])
      await client.query('COMMIT')
    } finally {
      client.release()
    }
    expect(await present('pg-commit')).toEqual([1, 1])
  })

  it('fromPgClient: both rows vanish with the user’s ROLLBACK', async () => {
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      await client.query('INSERT INTO business (id) VALUES ($1)', ['pg-rollback'])
      await writeBreakwaterRow(fromPgClient(client), 'pg-rollback')
      await client.query('ROLLBACK')
    } finally {
      client.release()
    }
    expect(await present('pg-rollback')).toEqual([0, 0])
  })

  it('fromPgClient returns BIGINT as a number even though the client returns strings', async () => {
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      expect((await client.query('SELECT 7::bigint AS n')).rows).toEqual([{ n: '7' }])
      expect(await fromPgClient(client).query('SELECT 7::bigint AS n')).toEqual([{ n: 7 }])
      await client.query('COMMIT')
    } finally {
      client.release()
    }
  })

  // Once the application's transaction had ended (its COMMIT or ROLLBACK already sent, or the
  // client released to the pool), breakwater's row was written in autocommit, on its own: an
  // outbox event committed although the business write it belongs to rolled back.
  it('fromPgClient refuses statements once the user’s transaction has ended', async () => {
    for (const end of ['COMMIT', 'ROLLBACK']) {
      const client = await pool.connect()
      try {
        await client.query('BEGIN')
        await client.query('INSERT INTO business (id) VALUES ($1)', [`pg-late-${end}`])
        const executor = fromPgClient(client)
        await client.query(end)
        const error = await writeBreakwaterRow(executor, `pg-late-${end}`).catch((e) => e)
        expect(error).toBeInstanceOf(TransactionMisuseError)
      } finally {
        client.release()
      }
      expect(await present(`pg-late-${end}`)).toEqual([end === 'COMMIT' ? 1 : 0, 0])
    }
  })

  it('fromPgClient refuses statements on a client outside any transaction, and once released', async () => {
    const client = await pool.connect()
    const executor = fromPgClient(client)
    try {
      await expect(writeBreakwaterRow(executor, 'pg-no-tx')).rejects.toThrow(TransactionMisuseError)
    } finally {
      client.release()
    }
    await expect(writeBreakwaterRow(executor, 'pg-released')).rejects.toThrow(
      TransactionMisuseError,
    )
    // Checked out again (the pool hands out its last idle client first) by another request,
    // inside that request's transaction: the row would go into the other one's.
    const other = await pool.connect()
    try {
      expect(other).toBe(client)
      await other.query('BEGIN')
      await expect(writeBreakwaterRow(executor, 'pg-reused')).rejects.toThrow(
        TransactionMisuseError,
      )
      await other.query('COMMIT')
    } finally {
      other.release()
    }
    for (const id of ['pg-no-tx', 'pg-released', 'pg-reused']) {
      expect(await present(id)).toEqual([0, 0])
    }
  })

  it('fromKysely: commit and rollback with the Kysely transaction', async () => {
    const kysely = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) })
    await kysely.transaction().execute(async (trx) => {
      await trx.insertInto('business').values({ id: 'ky-commit' }).execute()
      await writeBreakwaterRow(fromKysely(trx, 'postgres'), 'ky-commit')
    })
    expect(await present('ky-commit')).toEqual([1, 1])
    await expect(
      kysely.transaction().execute(async (trx) => {
        await trx.insertInto('business').values({ id: 'ky-rollback' }).execute()
        await writeBreakwaterRow(fromKysely(trx, 'postgres'), 'ky-rollback')
        throw new Error('business rule failed')
      }),
    ).rejects.toThrow('business rule failed')
    expect(await present('ky-rollback')).toEqual([0, 0])
    const result = await kysely
      .transaction()
      .execute((trx) =>
        fromKysely(trx, 'postgres').execute('UPDATE breakwater_rows SET done = $1 WHERE id = $2', [
          false,
          'ky-commit',
        ]),
      )
    expect(result).toEqual({ rowCount: 1 })
    // The Kysely instance itself: each statement would commit alone, apart from the business write.
    expect(() => fromKysely(kysely, 'postgres')).toThrow(
      /^trx: expected a Kysely Transaction .*not the Kysely instance/,
    )
  })

  it('fromKysely refuses a dialect that is not the Kysely transaction’s', async () => {
    const kysely = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) })
    await kysely.transaction().execute(async (trx) => {
      expect(() => fromKysely(trx, 'sqlite')).toThrow(
        /^dialect: expected "postgres", the dialect of this Kysely transaction \(PostgresAdapter\)/,
      )
    })
  })
})

describe('SQLite: fromBetterSqlite and fromKysely', () => {
  let file: TestSqlite
  let db: Database.Database

  beforeAll(() => {
    file = createTestSqlite('wrappers')
    db = new Database(file.filename)
    db.pragma('journal_mode = WAL')
    db.exec('CREATE TABLE business (id TEXT PRIMARY KEY)')
    db.exec(
      'CREATE TABLE breakwater_rows (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, done INTEGER NOT NULL)',
    )
  })
  afterAll(() => {
    db?.close()
    file?.cleanup()
  })

  function present(id: string): [number, number] {
    const business = db.prepare('SELECT count(*) AS n FROM business WHERE id = ?').get(id) as {
      n: number
    }
    const ours = db.prepare('SELECT count(*) AS n FROM breakwater_rows WHERE id = ?').get(id) as {
      n: number
    }
    return [business.n, ours.n]
  }

  it('fromBetterSqlite: commit and rollback around awaited work (BEGIN IMMEDIATE)', async () => {
    db.exec('BEGIN IMMEDIATE')
    db.prepare('INSERT INTO business (id) VALUES (?)').run('bs-commit')
    await writeBreakwaterRow(fromBetterSqlite(db), 'bs-commit')
    db.exec('COMMIT')
    expect(present('bs-commit')).toEqual([1, 1])

    db.exec('BEGIN IMMEDIATE')
    db.prepare('INSERT INTO business (id) VALUES (?)').run('bs-rollback')
    await writeBreakwaterRow(fromBetterSqlite(db), 'bs-rollback')
    db.exec('ROLLBACK')
    expect(present('bs-rollback')).toEqual([0, 0])
  })

  it('fromBetterSqlite: statements issued inside a synchronous db.transaction belong to it', async () => {
    const executor = fromBetterSqlite(db)
    const pending: Promise<unknown>[] = []
    const commit = db.transaction((id: string) => {
      db.prepare('INSERT INTO business (id) VALUES (?)').run(id)
      pending.push(
        executor.execute('INSERT INTO breakwater_rows (id, created_at, done) VALUES ($1, $2, $3)', [
          id,
          1,
          false,
        ]),
      )
    })
    commit('sync-commit')
    expect(present('sync-commit')).toEqual([1, 1])
    const failing = db.transaction((id: string) => {
      pending.push(
        executor.execute('INSERT INTO breakwater_rows (id, created_at, done) VALUES ($1, $2, $3)', [
          id,
          1,
          false,
        ]),
      )
      db.prepare('INSERT INTO business (id) VALUES (?)').run(id)
      throw new Error('rolled back')
    })
    expect(() => failing('sync-rollback')).toThrow('rolled back')
    expect(present('sync-rollback')).toEqual([0, 0])
    await Promise.all(pending)
  })

  // Without an open transaction (db.transaction forgotten, or the wrapper used once the
  // transaction function had returned) each statement committed on its own: the row stayed
  // although the business write rolled back, and a check and the write after it were no
  // longer one step.
  it('fromBetterSqlite refuses statements outside a transaction, and once it has ended', async () => {
    const executor = fromBetterSqlite(db)
    await expect(writeBreakwaterRow(executor, 'bs-no-tx')).rejects.toThrow(TransactionMisuseError)
    await expect(executor.query('SELECT 1 AS one')).rejects.toMatchObject({
      code: 'TRANSACTION_MISUSE',
      message: expect.stringMatching(/not inside a transaction.*db\.transaction/),
    })
    expect(present('bs-no-tx')).toEqual([0, 0])

    // Wrapped inside the transaction function, used after it returned (after an await).
    let late: Promise<unknown> = Promise.resolve()
    db.transaction(() => {
      db.prepare('INSERT INTO business (id) VALUES (?)').run('bs-late-sync')
      const inside = fromBetterSqlite(db)
      late = Promise.resolve().then(() => writeBreakwaterRow(inside, 'bs-late-sync'))
    })()
    await expect(late).rejects.toThrow(TransactionMisuseError)
    expect(present('bs-late-sync')).toEqual([1, 0])

    // After the application's own COMMIT or ROLLBACK.
    for (const end of ['COMMIT', 'ROLLBACK']) {
      const id = `bs-late-${end}`
      db.exec('BEGIN IMMEDIATE')
      db.prepare('INSERT INTO business (id) VALUES (?)').run(id)
      const inside = fromBetterSqlite(db)
      db.exec(end)
      await expect(writeBreakwaterRow(inside, id)).rejects.toThrow(TransactionMisuseError)
      expect(present(id)).toEqual([end === 'COMMIT' ? 1 : 0, 0])
    }
  })

  it('fromBetterSqlite works inside nested db.transaction calls (savepoints)', async () => {
    const executor = fromBetterSqlite(db)
    const pending: Promise<unknown>[] = []
    const insert = (id: string) =>
      executor.execute('INSERT INTO breakwater_rows (id, created_at, done) VALUES ($1, $2, $3)', [
        id,
        1,
        false,
      ])
    db.transaction(() => {
      pending.push(insert('bs-outer'))
      db.transaction(() => pending.push(insert('bs-inner-kept')))()
      expect(() =>
        db.transaction(() => {
          pending.push(insert('bs-inner-dropped'))
          throw new Error('inner rolled back')
        })(),
      ).toThrow('inner rolled back')
      pending.push(insert('bs-after-inner'))
    })()
    await Promise.all(pending)
    expect(present('bs-outer')[1]).toBe(1)
    expect(present('bs-inner-kept')[1]).toBe(1)
    expect(present('bs-inner-dropped')[1]).toBe(0)
    expect(present('bs-after-inner')[1]).toBe(1)
  })

  it('fromBetterSqlite returns integers as numbers even when the Database defaults to BigInt', async () => {
    // The application's own connection, set to return every integer as a BigInt.
    const safe = new Database(file.filename)
    try {
      safe.defaultSafeIntegers(true)
      safe.exec('BEGIN IMMEDIATE')
      const executor = fromBetterSqlite(safe)
      await executor.execute(
        'INSERT INTO breakwater_rows (id, created_at, done) VALUES ($1, $2, $3)',
        ['bs-safe', 1_726_000_000_000, true],
      )
      const rows = await executor.query<{ created_at: unknown; done: unknown }>(
        'SELECT created_at, done FROM breakwater_rows WHERE id = $1',
        ['bs-safe'],
      )
      expect(rows).toEqual([{ created_at: 1_726_000_000_000, done: 1 }])
      expect(
        await executor.execute('DELETE FROM breakwater_rows WHERE id = $1', ['bs-safe']),
      ).toEqual({ rowCount: 1 })
      safe.exec('COMMIT')
    } finally {
      safe.close()
    }
  })

  it('fromKysely (SQLite): commit and rollback with the Kysely transaction', async () => {
    const kysely = new Kysely<Tables>({ dialect: new SqliteDialect({ database: db }) })
    await kysely.transaction().execute(async (trx) => {
      await trx.insertInto('business').values({ id: 'ksq-commit' }).execute()
      await writeBreakwaterRow(fromKysely(trx, 'sqlite'), 'ksq-commit')
    })
    expect(present('ksq-commit')).toEqual([1, 1])
    await expect(
      kysely.transaction().execute(async (trx) => {
        await trx.insertInto('business').values({ id: 'ksq-rollback' }).execute()
        await writeBreakwaterRow(fromKysely(trx, 'sqlite'), 'ksq-rollback')
        throw new Error('business rule failed')
      }),
    ).rejects.toThrow('business rule failed')
    expect(present('ksq-rollback')).toEqual([0, 0])
    // A trx kept past its transaction: Kysely (0.28) refuses it itself, nothing autocommits.
    let kept: Transaction<Tables> | undefined
    await kysely.transaction().execute(async (trx) => {
      kept = trx
      await trx.insertInto('business').values({ id: 'ksq-late' }).execute()
    })
    await expect(writeBreakwaterRow(fromKysely(kept!, 'sqlite'), 'ksq-late')).rejects.toThrow(
      /already committed/,
    )
    expect(present('ksq-late')).toEqual([1, 0])
    // execute() counts the rows a statement changed, also when it returns them (Kysely's SQLite
    // driver reports no count for a statement that returns rows).
    await kysely.transaction().execute(async (trx) => {
      const executor = fromKysely(trx, 'sqlite')
      expect(
        await executor.execute(
          'INSERT INTO breakwater_rows (id, created_at, done) VALUES ($1, $2, $3), ($4, $2, $3) RETURNING id',
          ['ksq-ret-1', 1, 0, 'ksq-ret-2'],
        ),
      ).toEqual({ rowCount: 2 })
      expect(
        await executor.execute('DELETE FROM breakwater_rows WHERE id LIKE $1 RETURNING id', [
          'ksq-ret-%',
        ]),
      ).toEqual({ rowCount: 2 })
      // A placeholder used twice goes through the same translation as the driver's.
      const rows = await executor.query('SELECT id FROM business WHERE id = $1 OR id = $1 || $2', [
        'ksq-commit',
        'x',
      ])
      expect(rows).toEqual([{ id: 'ksq-commit' }])
    })
    expect(() => fromKysely(kysely, 'sqlite')).toThrow(InvalidOptionError)
  })

  it('fromKysely (SQLite) refuses the postgres dialect for a SQLite Kysely transaction', async () => {
    const kysely = new Kysely<Tables>({ dialect: new SqliteDialect({ database: db }) })
    await kysely.transaction().execute(async (trx) => {
      expect(() => fromKysely(trx, 'postgres')).toThrow(
        /^dialect: expected "sqlite", the dialect of this Kysely transaction \(SqliteAdapter\)/,
      )
    })
  })

  it('rejects an unknown dialect', () => {
    const kysely = new Kysely<Tables>({ dialect: new SqliteDialect({ database: db }) })
    expect(() => fromKysely(kysely, 'mysql' as 'sqlite')).toThrow(/dialect/)
  })
})
