// `breakwater outbox prune` on a database where only the outbox capability was migrated
// (`migrateOutbox` alone, as a producer-only service does): the inbox part has no table to
// prune and must say so, not fail with "no such table" after the outbox part did its work.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { createInbox, migrateInbox, migrateOutbox } from '../../src/outbox/index.js'
import { migrateSagas } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { runCaptured } from './captured.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-prune-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

it('prunes the outbox and skips the inbox, saying so, when the inbox was never migrated', async () => {
  const url = `sqlite:${join(dir, 'producer.db')}`
  const db = await openDatabase(url)
  await migrateOutbox(db)
  await db.close()
  const result = await runCaptured(outboxCommand, ['prune', '--db', url])
  expect(result, result.stderr).toMatchObject({
    code: 0,
    stdout:
      'removed 0 published events\nno inbox records to remove: the inbox capability is not migrated in this database\n',
  })
})

// The other way round: a consumer's database migrates the inbox alone (migrateInbox, as
// docs/outbox.md shows). The outbox part failed with "no such table: breakwater_outbox" and the
// inbox was never pruned; the hint to migrate would have created tables the service never uses.
it('prunes the inbox and skips the outbox, saying so, when only the inbox was migrated', async () => {
  const url = `sqlite:${join(dir, 'consumer.db')}`
  const db = await openDatabase(url)
  await migrateInbox(db)
  const inbox = createInbox({ consumer: 'billing', clock: new ManualClock(0) })
  await db.transaction((tx) =>
    inbox.handle(
      tx,
      { id: 'm-1', topic: 'orders', key: 'o-1', payload: '{}', headers: {} },
      async () => {},
    ),
  )
  await db.close()
  const result = await runCaptured(outboxCommand, ['prune', '--db', url])
  expect(result, result.stderr).toMatchObject({
    code: 0,
    stdout:
      'no published events to remove: the outbox capability is not migrated in this database\nremoved 1 inbox record\n',
  })
})

it('fails, naming both, when neither the outbox nor the inbox was migrated', async () => {
  const url = `sqlite:${join(dir, 'neither.db')}`
  const db = await openDatabase(url)
  await migrateSagas(db)
  await db.close()
  const result = await runCaptured(outboxCommand, ['prune', '--db', url])
  expect(result.code).toBe(1)
  expect(result.stderr).toContain('neither the outbox nor the inbox capability is migrated')
})
