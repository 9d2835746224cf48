// `breakwater outbox dead` lists at most --limit dead-lettered events (default 100), oldest
// first, and says under the table where the next page starts. It said so whenever exactly
// --limit rows came back, also when they were all: `--after-id` then showed an empty page. It
// now reads one more than it shows, as `saga list` does to say that more instances match.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { createOutbox, migrateOutbox, outboxTable } from '../../src/outbox/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { runCaptured } from './captured.js'

describe('breakwater outbox dead with --limit', () => {
  let file: TestSqlite
  beforeAll(async () => {
    file = createTestSqlite('outbox-dead-more')
    const db = await openDatabase(file.url)
    try {
      await migrateOutbox(db)
      for (let i = 1; i <= 3; i++)
        await db.transaction((tx) =>
          createOutbox().enqueue(tx, {
            aggregateType: 'order',
            aggregateId: `o-${i}`,
            type: 'order.placed',
            payload: {},
          }),
        )
      // Dead-lettered by hand, as a relay leaves them.
      await db.execute(`UPDATE ${outboxTable} SET dead_at = 1000, attempts = 1, last_error = 'no'`)
    } finally {
      await db.close()
    }
  })
  afterAll(() => file?.cleanup())

  const dead = (...args: string[]) =>
    runCaptured(outboxCommand, ['dead', ...args, '--db', file.url])
  // Rows start with the row id; the header with ID.
  const rowsOf = (stdout: string) => stdout.split('\n').filter((l) => /^\d+ /.test(l))

  it('says where the next page starts when more are dead-lettered', async () => {
    const result = await dead('--limit', '2')
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    const rows = rowsOf(result.stdout)
    expect(rows).toHaveLength(2)
    const lastId = rows[1]!.split(' ')[0]
    expect(result.stdout).toContain(`(first 2; next page: --after-id ${lastId})`)
    const next = await dead('--limit', '2', '--after-id', lastId!)
    expect(rowsOf(next.stdout)).toHaveLength(1)
  })

  it('says nothing of a next page when every event is shown, the limit reached or not', async () => {
    for (const limit of ['3', '100']) {
      const result = await dead('--limit', limit)
      expect(result.code).toBe(0)
      expect(rowsOf(result.stdout)).toHaveLength(3)
      expect(result.stdout).not.toContain('next page')
    }
  })

  it('--json is an array of at most --limit events, nothing else', async () => {
    const result = await dead('--json', '--limit', '2')
    expect(result.code).toBe(0)
    expect(result.stderr).toBe('')
    expect(JSON.parse(result.stdout)).toHaveLength(2)
  })
})
