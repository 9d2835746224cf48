// A transaction whose session the server ends (idleInTransactionTimeoutMs, FATAL 25P03) on real
// PostgreSQL: the server's own error reaches pg as an 'error' event, while the statement (or
// COMMIT) after it fails with pg's bare "not queryable" error. The caller must still be able to
// tell its configured timeout from a network failure, so the server's error is kept as `cause`.
//
// The server's timer is real: the callback waits until the server has ended the session (seen
// from another connection in pg_stat_activity), not for a fixed time.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { SqlDriver, SqlTransaction } from '../../src/stores/types.js'
import { until } from '../support/until.js'
import { type OpenedTarget, postgresTarget, uniqueTable } from './drivers.js'

/** The `code`s along an error's `cause` chain. */
function codes(error: unknown): unknown[] {
  const found: unknown[] = []
  for (let e = error as { code?: unknown; cause?: unknown } | undefined; e; e = e.cause as never) {
    found.push(e.code)
  }
  return found
}

describe('PostgreSQL transaction ended by idleInTransactionTimeoutMs', () => {
  let opened: OpenedTarget
  let db: SqlDriver
  let t: string

  beforeAll(async () => {
    opened = await postgresTarget.open('idle_in_tx', {
      postgres: { idleInTransactionTimeoutMs: 100 },
    })
    db = opened.db
    t = uniqueTable()
    await db.execute(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY)`)
  })
  afterAll(async () => {
    await opened?.cleanup()
  })

  // Stands for a slow call made while the transaction is open.
  async function idleUntilEnded(tx: SqlTransaction): Promise<void> {
    const [{ pid }] = (await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')) as [
      { pid: number },
    ]
    await until(
      async () =>
        (
          await db.query<{ n: number }>(
            'SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1',
            [pid],
          )
        )[0]?.n === 0,
      'the server to end the idle transaction',
    )
  }

  it("keeps the server's error as the cause of the next statement's failure", async () => {
    const error = await db
      .transaction(async (tx) => {
        await tx.execute(`INSERT INTO ${t} (id) VALUES (1)`)
        await idleUntilEnded(tx)
        await tx.execute(`INSERT INTO ${t} (id) VALUES (2)`)
      })
      .catch((e) => e)
    expect(error).toBeInstanceOf(Error)
    expect(codes(error)).toContain('25P03')
    expect(String((error as Error).cause ?? error)).toMatch(/idle-in-transaction timeout/)
    // The message itself names the reason, not only pg's bare "not queryable".
    expect((error as Error).message).toMatch(/idle-in-transaction timeout/)
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
  })

  it("keeps the server's error as the cause of COMMIT's failure", async () => {
    const error = await db
      .transaction(async (tx) => {
        await tx.execute(`INSERT INTO ${t} (id) VALUES (3)`)
        await idleUntilEnded(tx)
      })
      .catch((e) => e)
    expect(error).toBeInstanceOf(Error)
    expect(codes(error)).toContain('25P03')
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([])
    // The pool goes on with a fresh connection.
    await db.transaction((tx) => tx.execute(`INSERT INTO ${t} (id) VALUES (4)`))
    expect(await db.query(`SELECT id FROM ${t}`)).toEqual([{ id: 4 }])
  })
})
