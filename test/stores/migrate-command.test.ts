import { existsSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { listAppliedMigrations, type Migration } from '../../src/stores/migrations.js'
import { openDatabase } from '../../src/stores/open.js'
import { createTestDatabase } from '../support/postgres.js'
import { createTestSqlite } from '../support/sqlite.js'

function capture() {
  let text = ''
  return {
    stream: {
      write: (chunk: string) => {
        text += chunk
        return true
      },
    },
    get text() {
      return text
    },
  }
}

const capabilities: Record<string, Migration[]> = {
  idempotency: [
    {
      version: 1,
      name: 'create-keys',
      sqlite: ['CREATE TABLE cli_keys (k TEXT PRIMARY KEY)'],
      postgres: ['CREATE TABLE cli_keys (k TEXT PRIMARY KEY)'],
    },
  ],
  outbox: [
    {
      version: 1,
      name: 'create-events',
      sqlite: ['CREATE TABLE cli_events (id TEXT PRIMARY KEY)'],
      postgres: ['CREATE TABLE cli_events (id TEXT PRIMARY KEY)'],
    },
    {
      version: 2,
      name: 'add-topic',
      sqlite: ['ALTER TABLE cli_events ADD COLUMN topic TEXT'],
      postgres: ['ALTER TABLE cli_events ADD COLUMN topic TEXT'],
    },
  ],
}

async function run(args: string[], caps = capabilities) {
  const out = capture()
  const err = capture()
  const code = await migrateCommand(args, {
    capabilities: caps,
    stdout: out.stream,
    stderr: err.stream,
  })
  return { code, out: out.text, err: err.text }
}

describe('breakwater migrate', () => {
  const file = createTestSqlite('cli')
  afterAll(() => file.cleanup())

  it('applies every capability and prints what it applied, then reports up to date', async () => {
    const first = await run(['--db', file.url])
    expect(first).toEqual({
      code: 0,
      out: 'idempotency: applied 1 create-keys\noutbox: applied 1 create-events\noutbox: applied 2 add-topic\n',
      err: '',
    })
    const second = await run([`--db=${file.url}`])
    expect(second).toEqual({
      code: 0,
      out: 'idempotency: up to date\noutbox: up to date\n',
      err: '',
    })
    const db = await openDatabase(file.url)
    expect((await listAppliedMigrations(db)).map((m) => `${m.capability}:${m.version}`)).toEqual([
      'idempotency:1',
      'outbox:1',
      'outbox:2',
    ])
    await db.close()
  })

  it('migrates PostgreSQL too', async () => {
    const database = await createTestDatabase('cli')
    try {
      const result = await run(['--db', database.url])
      expect(result.code).toBe(0)
      expect(result.out).toContain('outbox: applied 2 add-topic')
    } finally {
      await database.drop()
    }
  })

  it.each([
    [['--db'], '--db needs a database URL'],
    [['--db', '--verbose'], '--db needs a database URL'],
    [['--db='], '--db needs a database URL'],
    [['--frobnicate'], 'unknown argument "--frobnicate"'],
    [['--db', 'mysql://root:hunter2@db/app'], 'mysql://root:***@db/app'],
  ])('exits 2 for %j naming the problem', async (args, message) => {
    const result = await run(args)
    expect(result.code).toBe(2)
    expect(result.err).toContain(message)
    expect(result.err).not.toContain('hunter2')
    expect(result.out).toBe('')
  })

  it('exits 1 with the database error when a migration fails, hiding the password', async () => {
    const broken = createTestSqlite('cli-broken')
    try {
      const result = await run(['--db', broken.url], {
        bad: [{ version: 1, name: 'typo', sqlite: ['CREAT TABLE x (id INT)'], postgres: [] }],
      })
      expect(result.code).toBe(1)
      expect(result.err).toMatch(/syntax error/)
    } finally {
      broken.cleanup()
    }
  })

  // An older breakwater's `migrate` run against a database a newer one migrated (a rollback of
  // the deploy, an old CI job): it says so for each such capability, exits 1 and changes
  // nothing, not even the capabilities that are still behind.
  it.each(['sqlite', 'postgres'] as const)(
    'on %s, exits 1 naming each capability a newer breakwater migrated, applying nothing',
    async (dialect) => {
      const sqlite = dialect === 'sqlite' ? createTestSqlite('cli-newer') : undefined
      const database = dialect === 'postgres' ? await createTestDatabase('cli_newer') : undefined
      const url = sqlite?.url ?? database!.url
      try {
        const newer: Record<string, Migration[]> = {
          outbox: [
            ...capabilities.outbox!,
            {
              version: 3,
              name: 'add-key',
              sqlite: ['ALTER TABLE cli_events ADD COLUMN k TEXT NOT NULL DEFAULT 1'],
              postgres: ['ALTER TABLE cli_events ADD COLUMN k TEXT NOT NULL DEFAULT 1'],
            },
          ],
        }
        expect((await run(['--db', url], newer)).code).toBe(0)
        const db = await openDatabase(url)
        const before = await listAppliedMigrations(db)
        const result = await run(['--db', url])
        expect(result.code).toBe(1)
        expect(result.out).toBe('')
        expect(result.err).toBe(
          "breakwater migrate: The database's outbox schema is at version 3, but this breakwater knows outbox migrations only up to version 2: a newer breakwater migrated it. Upgrade breakwater to that release or later; nothing was changed in the database (SCHEMA_TOO_NEW)\n",
        )
        // idempotency was pending for this release, and is still not applied.
        expect(await listAppliedMigrations(db)).toEqual(before)
        await db.close()
      } finally {
        sqlite?.cleanup()
        await database?.drop()
      }
    },
  )

  it('refuses --db given twice, and an in-memory database, touching nothing', async () => {
    const twice = await run(['--db', file.url, '--db=sqlite:./elsewhere.db'])
    expect(twice.code).toBe(2)
    expect(twice.err).toContain('--db given twice')
    const memory = await run(['--db', 'sqlite::memory:'])
    expect(memory.code).toBe(2)
    expect(memory.err).toContain('an in-memory database lasts one command')
    expect(existsSync('elsewhere.db')).toBe(false)
  })

  it('prints usage for --help', async () => {
    const result = await run(['--help'])
    expect(result.code).toBe(0)
    expect(result.out).toContain('usage: breakwater migrate [--db <url>]')
  })
})
