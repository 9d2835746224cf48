// What a command reports on stdout is written the one way the CLI writes it: lower case and no
// closing period (`outbox: up to date`, `saga <id>: re-queued; ...`, `removed 1 saga instance
// ...`). outbox wrote sentences ('Removed 1 inbox record.') beside saga prune's 'removed ...',
// and the empty listings of outbox, saga and migrate started with a capital.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { migrateInbox, migrateOutbox } from '../../src/outbox/index.js'
import { migrateSagas } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { type CapturedEntry, runCaptured } from './captured.js'

describe('the CLI reports in lower case, without a closing period', () => {
  let file: TestSqlite
  beforeAll(async () => {
    file = createTestSqlite('output-style')
    const db = await openDatabase(file.url)
    try {
      await migrateOutbox(db)
      await migrateInbox(db)
      await migrateSagas(db)
    } finally {
      await db.close()
    }
  })
  afterAll(() => file?.cleanup())

  const noCapabilities: CapturedEntry = (args, deps) =>
    migrateCommand(args, { capabilities: {}, ...deps, env: {} })
  it.each<[string, CapturedEntry, string[], string]>([
    [
      'outbox prune',
      outboxCommand,
      ['prune'],
      'removed 0 published events\nremoved 0 inbox records\n',
    ],
    [
      'outbox prune --archive',
      outboxCommand,
      ['prune', '--archive'],
      'archived 0 published events\nremoved 0 inbox records\n',
    ],
    [
      'outbox redrive --all',
      outboxCommand,
      ['redrive', '--all'],
      'redrove 0 dead-lettered events\n',
    ],
    ['outbox dead', outboxCommand, ['dead'], 'no dead-lettered events\n'],
    ['saga list', sagaCommand, ['list'], 'no saga instances\n'],
    ['migrate', noCapabilities, [], 'no capability has migrations\n'],
  ])('%s', async (_name, entry, args, expected) => {
    const result = await runCaptured(entry, [...args, '--db', file.url])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    expect(result.stdout).toBe(expected)
  })
})
