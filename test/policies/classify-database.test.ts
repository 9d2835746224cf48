// Database failures that are known to be temporary (the transaction was rolled back and running
// it again can succeed) are classified transient, so the default retry and the saga's default
// shouldRetry take them: provoked on real PostgreSQL and SQLite, not built by hand.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { classifyFailure } from '../../src/policies/classify.js'
import { openDatabase } from '../../src/stores/open.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { until } from '../support/until.js'

describe('classifyFailure on PostgreSQL errors', () => {
  let database: TestDatabase
  const clients: pg.Client[] = []

  const connect = async (): Promise<pg.Client> => {
    const client = new pg.Client({ connectionString: database.url })
    await client.connect()
    clients.push(client)
    return client
  }

  beforeAll(async () => {
    database = await createTestDatabase('classify-database')
    const setup = await connect()
    await setup.query('CREATE TABLE rows (id INT PRIMARY KEY, n INT NOT NULL)')
    await setup.query('INSERT INTO rows VALUES (1, 0), (2, 0)')
  })
  afterAll(async () => {
    for (const client of clients) await client.end()
    await database?.drop()
  })

  it('a serialization failure (40001) is transient', async () => {
    const a = await connect()
    const b = await connect()
    await a.query('BEGIN ISOLATION LEVEL REPEATABLE READ')
    await a.query('SELECT n FROM rows WHERE id = 1')
    await b.query('UPDATE rows SET n = n + 1 WHERE id = 1')
    const error = await a.query('UPDATE rows SET n = n + 1 WHERE id = 1').catch((e: unknown) => e)
    await a.query('ROLLBACK')
    expect(error).toMatchObject({ code: '40001' })
    expect(classifyFailure(error)).toBe('transient')
  })

  it('a deadlock (40P01) is transient', async () => {
    const a = await connect()
    const b = await connect()
    for (const client of [a, b]) await client.query("SET deadlock_timeout = '20ms'")
    await a.query('BEGIN')
    await b.query('BEGIN')
    await a.query('UPDATE rows SET n = n + 1 WHERE id = 1')
    await b.query('UPDATE rows SET n = n + 1 WHERE id = 2')
    const outcomes = await Promise.allSettled([
      a.query('UPDATE rows SET n = n + 1 WHERE id = 2'),
      b.query('UPDATE rows SET n = n + 1 WHERE id = 1'),
    ])
    await a.query('ROLLBACK')
    await b.query('ROLLBACK')
    const failures = outcomes.filter((o) => o.status === 'rejected').map((o) => o.reason)
    expect(failures).toHaveLength(1)
    expect(failures[0]).toMatchObject({ code: '40P01' })
    expect(classifyFailure(failures[0])).toBe('transient')
  })

  it('a statement timeout (57014) is transient', async () => {
    const a = await connect()
    await a.query('SET statement_timeout = 20')
    const error = await a.query('SELECT pg_sleep(5)').catch((e: unknown) => e)
    await a.query('SET statement_timeout = 0')
    expect(error).toMatchObject({ code: '57014' })
    expect(classifyFailure(error)).toBe('transient')
  })

  it('a session ended by idle_in_transaction_session_timeout (25P03) is transient', async () => {
    const admin = await connect()
    const db = await openDatabase(`${database.url}?idle_in_transaction_session_timeout=20`)
    try {
      const error = await db
        .transaction(async (tx) => {
          const [row] = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
          // Waits for the server to end the idle session (no clock of ours drives it).
          await until(async () => {
            const { rows } = await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [
              row!.pid,
            ])
            return rows.length === 0
          }, 'the idle session to be ended')
          await tx.query('SELECT 2')
        })
        .catch((e: unknown) => e)
      expect((error as Error).cause).toMatchObject({ code: '25P03' })
      expect(classifyFailure(error)).toBe('transient')
    } finally {
      await db.close()
    }
  })

  it('a connection the server closed mid-statement is transient', async () => {
    const a = await connect()
    a.on('error', () => {})
    const admin = await connect()
    const { pid } = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0] as { pid: number }
    const running = a.query('SELECT pg_sleep(5)').catch((e: unknown) => e)
    await until(async () => {
      const { rows } = await admin.query(
        "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
        [pid],
      )
      return rows.length === 1
    }, 'the statement to run')
    await admin.query('SELECT pg_terminate_backend($1)', [pid])
    expect(await running).toMatchObject({ code: '57P01' })
    // What the next statement on that client gets: pg's own error, with no SQLSTATE; which
    // one depends on whether pg has read the socket's end by then (both seen in full runs).
    const next = await a.query('SELECT 1').catch((e: unknown) => e)
    expect((next as Error).message).toMatch(
      /^(Connection terminated unexpectedly|Client has encountered a connection error and is not queryable)$/,
    )
    expect(classifyFailure(next)).toBe('transient')
    // Both messages are a lost connection, whichever this run saw.
    for (const message of [
      'Connection terminated unexpectedly',
      'Client has encountered a connection error and is not queryable',
    ]) {
      expect(classifyFailure(new Error(message)), message).toBe('transient')
    }
  })

  it('a constraint violation (23505) stays unknown', async () => {
    const a = await connect()
    const error = await a.query('INSERT INTO rows VALUES (1, 0)').catch((e: unknown) => e)
    expect(error).toMatchObject({ code: '23505' })
    expect(classifyFailure(error)).toBe('unknown')
  })
})

describe('classifyFailure on SQLite errors', () => {
  let dir: string
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'bw-classify-'))
  })
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('a locked database (SQLITE_BUSY) is transient; a constraint violation is not', () => {
    const file = join(dir, 'busy.db')
    const a = new Database(file)
    const b = new Database(file, { timeout: 0 })
    try {
      a.pragma('journal_mode = WAL')
      a.exec('CREATE TABLE t (id INTEGER PRIMARY KEY)')
      a.exec('BEGIN IMMEDIATE')
      let busy: unknown
      try {
        b.exec('BEGIN IMMEDIATE')
      } catch (error) {
        busy = error
      }
      a.exec('INSERT INTO t VALUES (1)')
      a.exec('COMMIT')
      expect(busy).toMatchObject({ code: 'SQLITE_BUSY' })
      expect(classifyFailure(busy)).toBe('transient')
      let constraint: unknown
      try {
        a.exec('INSERT INTO t VALUES (1)')
      } catch (error) {
        constraint = error
      }
      expect(constraint).toMatchObject({ code: 'SQLITE_CONSTRAINT_PRIMARYKEY' })
      expect(classifyFailure(constraint)).toBe('unknown')
    } finally {
      a.close()
      b.close()
    }
  })
})
