// `breakwater outbox prune` on a database where only the outbox capability was migrated
// (`migrateOutbox` alone, as a producer-only service does): the inbox part has no table to
// prune and must say so, not fail with "no such table" after the outbox part did its work.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { migrateOutbox } from '../../src/outbox/index.js'
import { openDatabase } from '../../src/stores/index.js'
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
      'Removed 0 published events.\nNo inbox records to remove: the inbox capability is not migrated in this database.\n',
  })
})
