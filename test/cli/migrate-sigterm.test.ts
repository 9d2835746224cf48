// `breakwater migrate` stopped by SIGTERM ends by the signal (143 in a shell), as the documented
// exit codes say. What it leaves behind is what the docs promise: each capability's pending
// migrations are applied in one transaction, capabilities one after another (cqrs, idempotency,
// inbox, outbox, queue, saga), so the capabilities finished before the signal stay migrated,
// the one under way is not applied at all (PostgreSQL rolls it back once the session's
// statement ends), and running migrate again finishes the job.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cqrsMigrations } from '../../src/cqrs/index.js'
import { idempotencyTable } from '../../src/idempotency/index.js'
import { listAppliedMigrations, openDatabase } from '../../src/stores/index.js'
import { runCli, spawnCli } from '../process/cli-process.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'
import { until } from '../support/until.js'

let database: TestDatabase

beforeAll(async () => {
  database = await createTestDatabase('migrate_sigterm')
})

afterAll(async () => {
  await database?.drop()
})

describe('breakwater migrate stopped by SIGTERM', () => {
  it('PostgreSQL: the capabilities done stay migrated, the one under way is not applied, a second run finishes', async () => {
    // Another session creates the idempotency table and holds its transaction open: migrate's
    // own CREATE TABLE of it waits, inside the idempotency transaction, after cqrs committed.
    const blocker = new pg.Client({ connectionString: database.url })
    await blocker.connect()
    const db = await openDatabase(database.url)
    const cli = spawnCli(['migrate', '--db', database.url])
    try {
      await blocker.query('BEGIN')
      await blocker.query(`CREATE TABLE ${idempotencyTable} (id INTEGER)`)
      await until(
        async () =>
          (
            await db.query(
              `SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'CREATE TABLE ${idempotencyTable} %'`,
            )
          ).length > 0,
        'migrate waiting for the idempotency table',
      )
      cli.child.kill('SIGTERM')
      // Ended by the signal's default action: a shell shows 143.
      expect(await cli.exited, cli.stdout() + cli.stderr()).toEqual({
        code: null,
        signal: 'SIGTERM',
      })
      expect(cli.stdout()).toContain('cqrs: applied 1 ')
      expect(cli.stdout()).not.toContain('idempotency')
      await blocker.query('ROLLBACK')

      const applied = await listAppliedMigrations(db)
      expect(applied.map((m) => m.capability)).toEqual(cqrsMigrations.map(() => 'cqrs'))

      // Waits for the killed run's session, which holds the migration lock until the server
      // notices its client went away, then applies the rest: idempotency was not half applied
      // (its CREATE TABLE would fail on a table left behind).
      const again = await runCli(['migrate', '--db', database.url])
      expect(again.code, again.stderr).toBe(0)
      expect(again.stdout).toContain('cqrs: up to date')
      expect(again.stdout).toContain('idempotency: applied 1 create-idempotency-records')
      expect(again.stdout.match(/: up to date$/gm)).toEqual([': up to date'])
      const capabilities = new Set((await listAppliedMigrations(db)).map((m) => m.capability))
      expect([...capabilities].sort()).toEqual([
        'cqrs',
        'idempotency',
        'inbox',
        'outbox',
        'queue',
        'saga',
      ])
    } finally {
      cli.kill()
      await blocker.end().catch(() => {})
      await db.close()
    }
  })
})
