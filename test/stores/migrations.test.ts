import { type ChildProcess, spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { MigrationConflictError, SchemaTooNewError } from '../../src/stores/errors.js'
import {
  checkSchemaVersion,
  listAppliedMigrations,
  type Migration,
  runMigrations,
} from '../../src/stores/migrations.js'
import { openDatabase } from '../../src/stores/open.js'
import type { SqlDriver } from '../../src/stores/types.js'
import { ManualClock } from '../../src/testing/manual-clock.js'
import { type OpenedTarget, targets } from './drivers.js'
import { concurrencyMigrations } from './fixtures/concurrency-migrations.js'

function sameSql(statements: string[]): Pick<Migration, 'sqlite' | 'postgres'> {
  return { sqlite: statements, postgres: statements }
}

const runner = fileURLToPath(new URL('./fixtures/migrate-runner.ts', import.meta.url))

interface Runner {
  readonly child: ChildProcess
  readonly ready: Promise<void>
  readonly result: Promise<{ code: number | null; stdout: string; stderr: string }>
}

function startRunner(url: string, known?: number): Runner {
  const args = known === undefined ? [runner, url] : [runner, url, String(known)]
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  let markReady!: () => void
  const ready = new Promise<void>((resolve) => {
    markReady = resolve
  })
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
    if (stdout.includes('ready\n')) markReady()
  })
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const result = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    child.on('exit', (code) => {
      markReady()
      resolve({ code, stdout, stderr })
    })
  })
  return { child, ready, result }
}

/** Every concurrency migration's statements ran exactly once, for both capabilities. */
async function expectEachAppliedOnce(db: SqlDriver): Promise<void> {
  for (const capability of ['alpha', 'beta']) {
    const effects = await db.query<{ version: number }>(
      `SELECT version FROM ${capability}_effects ORDER BY version`,
    )
    expect(effects.map((e) => e.version)).toEqual([1, 2, 3])
  }
}

describe.each(targets)('$dialect migrations', (target) => {
  let opened: OpenedTarget

  beforeAll(async () => {
    opened = await target.open('migrations')
  })
  afterAll(async () => {
    await opened?.cleanup()
  })

  it('applies pending migrations once, in version order, and records them', async () => {
    const { db } = opened
    const clock = new ManualClock(1_700_000_000_000)
    const migrations: Migration[] = [
      {
        version: 2,
        name: 'add-total',
        ...sameSql(['ALTER TABLE orders ADD COLUMN total INTEGER']),
      },
      {
        version: 1,
        name: 'create-orders',
        ...sameSql(['CREATE TABLE orders (id TEXT PRIMARY KEY)']),
      },
    ]
    const first = await runMigrations(db, 'orders', migrations, { clock })
    expect(first.map((m) => [m.version, m.name, m.appliedAt])).toEqual([
      [1, 'create-orders', 1_700_000_000_000],
      [2, 'add-total', 1_700_000_000_000],
    ])
    expect(await runMigrations(db, 'orders', migrations)).toEqual([])
    await db.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', ['o1', 5])

    const more = [
      ...migrations,
      {
        version: 3,
        name: 'index-total',
        ...sameSql(['CREATE INDEX orders_total ON orders (total)']),
      },
    ]
    await clock.advance(1_000)
    expect((await runMigrations(db, 'orders', more, { clock })).map((m) => m.version)).toEqual([3])
    const recorded = (await listAppliedMigrations(db)).filter((m) => m.capability === 'orders')
    expect(recorded).toEqual([
      { capability: 'orders', version: 1, name: 'create-orders', appliedAt: 1_700_000_000_000 },
      { capability: 'orders', version: 2, name: 'add-total', appliedAt: 1_700_000_000_000 },
      { capability: 'orders', version: 3, name: 'index-total', appliedAt: 1_700_000_001_000 },
    ])
  })

  it('refuses an applied migration whose name changed, applying nothing', async () => {
    const { db } = opened
    await runMigrations(db, 'renamed', [
      { version: 1, name: 'first', ...sameSql(['CREATE TABLE renamed_a (id INTEGER)']) },
    ])
    const error = await runMigrations(db, 'renamed', [
      { version: 1, name: 'first-edited', ...sameSql(['CREATE TABLE renamed_a (id INTEGER)']) },
      { version: 2, name: 'second', ...sameSql(['CREATE TABLE renamed_b (id INTEGER)']) },
    ]).catch((e) => e)
    expect(error).toBeInstanceOf(MigrationConflictError)
    expect(error).toMatchObject({
      code: 'MIGRATION_CONFLICT',
      capability: 'renamed',
      version: 1,
      appliedName: 'first',
      expectedName: 'first-edited',
    })
    expect(error.message).toContain('"first"')
    const versions = (await listAppliedMigrations(db))
      .filter((m) => m.capability === 'renamed')
      .map((m) => m.version)
    expect(versions).toEqual([1])
  })

  it('rolls back every migration of a run when one fails', async () => {
    const { db } = opened
    const error = await runMigrations(db, 'broken', [
      { version: 1, name: 'good', ...sameSql(['CREATE TABLE broken_good (id INTEGER)']) },
      { version: 2, name: 'bad', ...sameSql(['CREATE TABLE broken_bad (id INTEGER']) },
    ]).catch((e) => e)
    expect(error).toBeInstanceOf(Error)
    expect((await listAppliedMigrations(db)).filter((m) => m.capability === 'broken')).toEqual([])
    await expect(db.query('SELECT * FROM broken_good')).rejects.toThrow(/broken_good/)
  })

  // A database a newer breakwater migrated records versions this code does not know. Running
  // against it would write rows the newer code misreads, or miss a column it added NOT NULL:
  // the older code refuses, naming both versions, and changes nothing.
  it('refuses a database migrated by a newer breakwater (SCHEMA_TOO_NEW), touching nothing', async () => {
    const { db } = opened
    const v1: Migration = {
      version: 1,
      name: 'one',
      ...sameSql(['CREATE TABLE newer_one (id INTEGER)']),
    }
    const v2: Migration = {
      version: 2,
      name: 'two',
      ...sameSql(['CREATE TABLE newer_two (id INTEGER)']),
    }
    const v3: Migration = {
      version: 3,
      name: 'three',
      ...sameSql(['CREATE TABLE newer_three (id INTEGER)']),
    }
    await runMigrations(db, 'newer', [v1, v3])
    const before = await listAppliedMigrations(db)
    // The older code knows 1 and 2: 2 is pending for it, but 3 is beyond what it knows.
    const error = await runMigrations(db, 'newer', [v1, v2]).catch((e) => e)
    expect(error).toBeInstanceOf(SchemaTooNewError)
    expect(error).toMatchObject({
      code: 'SCHEMA_TOO_NEW',
      retryable: false,
      capability: 'newer',
      databaseVersion: 3,
      knownVersion: 2,
    })
    expect(error.message).toContain('newer')
    expect(error.message).toMatch(/version 3/)
    expect(error.message).toMatch(/up to version 2/)
    expect(error.message).toMatch(/upgrade breakwater/i)
    expect(await listAppliedMigrations(db)).toEqual(before)
    await expect(db.query('SELECT * FROM newer_two')).rejects.toThrow(/newer_two/)
    // The read-only check says the same, and so does a capability that knows no migration.
    await expect(checkSchemaVersion(db, 'newer', [v1, v2])).rejects.toMatchObject({
      code: 'SCHEMA_TOO_NEW',
      databaseVersion: 3,
      knownVersion: 2,
    })
    await expect(runMigrations(db, 'newer', [])).rejects.toMatchObject({
      code: 'SCHEMA_TOO_NEW',
      knownVersion: 0,
    })
    // Another capability of the same database is not concerned.
    expect(
      (await runMigrations(db, 'unrelated', [v2])).map((m) => `${m.capability}:${m.version}`),
    ).toEqual(['unrelated:2'])
    await expect(checkSchemaVersion(db, 'unrelated', [v2])).resolves.toBeUndefined()
  })

  it('does not take its own migrations, applied or just applied, for newer ones', async () => {
    const { db } = opened
    const own: Migration[] = [
      { version: 1, name: 'one', ...sameSql(['CREATE TABLE own_one (id INTEGER)']) },
      { version: 2, name: 'two', ...sameSql(['CREATE TABLE own_two (id INTEGER)']) },
    ]
    await expect(checkSchemaVersion(db, 'own', own)).resolves.toBeUndefined()
    expect((await runMigrations(db, 'own', own)).map((m) => m.version)).toEqual([1, 2])
    await expect(checkSchemaVersion(db, 'own', own)).resolves.toBeUndefined()
    expect(await runMigrations(db, 'own', own)).toEqual([])
    // A newer release of the same code (one more migration) goes on from there.
    const next = [
      ...own,
      { version: 3, name: 'three', ...sameSql(['CREATE TABLE own_three (id INTEGER)']) },
    ]
    expect((await runMigrations(db, 'own', next)).map((m) => m.version)).toEqual([3])
  })

  it('checks a database without breakwater_migrations read-only, creating nothing', async () => {
    const fresh = await target.open('migrations-empty')
    try {
      await expect(checkSchemaVersion(fresh.db, 'any', [])).resolves.toBeUndefined()
      expect(await listAppliedMigrations(fresh.db)).toEqual([])
      const tables =
        fresh.db.dialect === 'postgres'
          ? await fresh.db.query("SELECT 1 WHERE to_regclass('breakwater_migrations') IS NOT NULL")
          : await fresh.db.query("SELECT 1 FROM sqlite_master WHERE name = 'breakwater_migrations'")
      expect(tables).toEqual([])
    } finally {
      await fresh.cleanup()
    }
  })

  it('validates the migration list and capability name', async () => {
    const { db } = opened
    const ok = sameSql(['SELECT 1'])
    await expect(
      runMigrations(db, 'dup', [
        { version: 1, name: 'a', ...ok },
        { version: 1, name: 'b', ...ok },
      ]),
    ).rejects.toThrow(new InvalidOptionError('migrations.dup[1].version', 'a version used once', 1))
    await expect(runMigrations(db, 'zero', [{ version: 0, name: 'a', ...ok }])).rejects.toThrow(
      /migrations\.zero\[0\]\.version: expected an integer from 1 to 2147483647 .*, got 0/,
    )
    await expect(
      runMigrations(db, 'nosql', [
        { version: 1, name: 'a', sqlite: ['SELECT 1'] } as unknown as Migration,
      ]),
    ).rejects.toThrow(/migrations\.nosql\[0\]\.postgres/)
    await expect(runMigrations(db, 'Bad Name', [])).rejects.toThrow(/capability/)
  })

  // Passed what openDatabase did not return (an undefined from a failed setup, a URL string),
  // these rejected with a bare TypeError from inside ("reading 'transaction'").
  it('refuses a db that is not a driver or executor, naming db', async () => {
    const ok = sameSql(['SELECT 1'])
    for (const db of [undefined, null, 'sqlite:./x.db', {}]) {
      const refusal = new InvalidOptionError('db', 'a SqlDriver (openDatabase)', db)
      await expect(
        runMigrations(db as unknown as SqlDriver, 'x', [{ version: 1, name: 'a', ...ok }]),
      ).rejects.toThrow(refusal)
      await expect(listAppliedMigrations(db as unknown as SqlDriver)).rejects.toThrow(
        new InvalidOptionError('db', 'a SqlExecutor (a SqlDriver or its transaction)', db),
      )
      await expect(checkSchemaVersion(db as unknown as SqlDriver, 'x', [])).rejects.toThrow(
        new InvalidOptionError('db', 'a SqlExecutor (a SqlDriver or its transaction)', db),
      )
    }
  })

  // A timestamp as version (knex, node-pg-migrate, Rails: 20240101120000) does not fit
  // breakwater_migrations.version, an INTEGER on PostgreSQL: there it failed with pg's bare
  // 'out of range for type integer' after the migration's statements had run (rolled back),
  // while SQLite took it. Both now refuse it before touching the database.
  it('refuses a version above 2147483647 (a timestamp) on both dialects, applying nothing', async () => {
    const { db } = opened
    const error = await runMigrations(db, 'stamped', [
      { version: 1, name: 'first', ...sameSql(['CREATE TABLE stamped_one (id INTEGER)']) },
      {
        version: 20240101120000,
        name: 'timestamped',
        ...sameSql(['CREATE TABLE stamped_two (id INTEGER)']),
      },
    ]).catch((e) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('migrations.stamped[1].version')
    expect((error as InvalidOptionError).message).toMatch(/2147483647/)
    expect((await listAppliedMigrations(db)).filter((m) => m.capability === 'stamped')).toEqual([])
    await expect(db.query('SELECT * FROM stamped_one')).rejects.toThrow(/stamped_one/)
  })

  it.runIf(target.dialect === 'postgres')(
    "lists only the migrations of the connection's own schema (search_path), not another schema's",
    async () => {
      const { db, url } = opened
      await db.execute('CREATE SCHEMA tenant_b')
      const inB = new URL(url)
      inB.searchParams.set('options', '-c search_path=tenant_b')
      const dbB = await openDatabase(inB.toString())
      try {
        await runMigrations(dbB, 'tenant', [
          {
            version: 1,
            name: 'only-in-b',
            ...sameSql(['CREATE TABLE tenant_b_rows (id INTEGER)']),
          },
        ])
        expect((await listAppliedMigrations(dbB)).map((m) => m.name)).toEqual(['only-in-b'])
        // A database whose search_path (public) holds no breakwater_migrations has none applied,
        // although another schema of the database has that table.
        const empty = new URL(url)
        empty.searchParams.set('options', '-c search_path=tenant_c')
        await db.execute('CREATE SCHEMA tenant_c')
        const dbC = await openDatabase(empty.toString())
        try {
          expect(await listAppliedMigrations(dbC)).toEqual([])
        } finally {
          await dbC.close()
        }
      } finally {
        await dbB.close()
      }
    },
  )

  it('applies each migration exactly once with 4 runner processes starting together', async () => {
    const fresh = await target.create('migrations-concurrent')
    try {
      const runners = Array.from({ length: 4 }, () => startRunner(fresh.url))
      await Promise.all(runners.map((r) => r.ready))
      for (const r of runners) r.child.stdin!.write('go\n')
      const results = await Promise.all(runners.map((r) => r.result))
      for (const result of results) {
        expect(result.stderr).toBe('')
        expect(result.code).toBe(0)
      }
      const applied = results.map(
        (r) => JSON.parse(r.stdout.split('\n')[1]!) as Record<string, number[]>,
      )
      for (const capability of ['alpha', 'beta']) {
        const all = applied.flatMap((a) => a[capability]!).sort()
        expect(all).toEqual([1, 2, 3])
      }
      const db = await openDatabase(fresh.url)
      try {
        await expectEachAppliedOnce(db)
        const recorded = await listAppliedMigrations(db)
        expect(recorded.map((m) => `${m.capability}:${m.version}:${m.name}`)).toEqual(
          ['alpha', 'beta'].flatMap((c) =>
            concurrencyMigrations(c).map((m) => `${c}:${m.version}:${m.name}`),
          ),
        )
      } finally {
        await db.close()
      }
    } finally {
      await fresh.cleanup()
    }
  })

  // Older and newer processes migrating one database at once (a rolling upgrade): the check
  // runs inside the migration transaction, after the advisory lock (PostgreSQL) or BEGIN
  // IMMEDIATE (SQLite), so the older runner either went first (and applied 1 and 2 of both
  // capabilities itself: nobody else applies those before the newer runner's 3), or sees the
  // newer versions and refuses. It never succeeds after them (applying nothing and going on).
  it('an older runner racing a newer one either goes first or refuses with SCHEMA_TOO_NEW', async () => {
    const fresh = await target.create('migrations-mixed')
    try {
      const newer = startRunner(fresh.url)
      const older = startRunner(fresh.url, 2)
      await Promise.all([newer.ready, older.ready])
      older.child.stdin!.write('go\n')
      newer.child.stdin!.write('go\n')
      const [fromNewer, fromOlder] = await Promise.all([newer.result, older.result])
      expect(fromNewer.stderr).toBe('')
      expect(fromNewer.code).toBe(0)
      if (fromOlder.code === 0) {
        expect(fromOlder.stderr).toBe('')
        expect(JSON.parse(fromOlder.stdout.split('\n')[1]!)).toEqual({
          alpha: [1, 2],
          beta: [1, 2],
        })
      } else {
        expect(fromOlder.stderr).toMatch(
          /^SCHEMA_TOO_NEW: .*(alpha|beta).*version 3.*up to version 2/,
        )
        expect(fromOlder.code).toBe(3)
      }
      const db = await openDatabase(fresh.url)
      try {
        await expectEachAppliedOnce(db)
      } finally {
        await db.close()
      }
    } finally {
      await fresh.cleanup()
    }
  })
})
