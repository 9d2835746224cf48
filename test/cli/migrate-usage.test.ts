// `breakwater migrate --help` names the database URLs migrate takes, and only those.
import { describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxMigrations } from '../../src/outbox/index.js'
import { type CapturedEntry, runCaptured } from './captured.js'

const migrate: CapturedEntry = (args, deps) =>
  migrateCommand(args, { capabilities: { outbox: outboxMigrations }, ...deps })

describe('breakwater migrate --help', () => {
  it('offers no URL that migrate then refuses', async () => {
    const help = await runCaptured(migrate, ['--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('sqlite:<file>')
    expect(help.stdout).toContain('postgres://')
    // An in-memory database is refused (it would keep nothing): the usage must not offer it.
    const memory = await runCaptured(migrate, ['--db', 'sqlite::memory:'])
    expect(memory.code).toBe(2)
    expect(help.stdout).not.toContain('sqlite::memory:')
  })

  it('says what a run stopped by SIGTERM leaves (see migrate-sigterm.test.ts)', async () => {
    const help = await runCaptured(migrate, ['--help'])
    expect(help.stdout).toContain('stopped (SIGTERM: exit 143), each capability is left migrated')
  })
})
