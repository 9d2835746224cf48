// `breakwater outbox dead` prints stored text (event id, aggregate, type, topic, last error) in
// a table on the operator's terminal. Control characters are accepted at enqueue, so a stored
// escape sequence (\u001b[2J clears the screen) or line break was written to the terminal as
// it is, and acted on it or broke the table's rows. Real SQLite and PostgreSQL; the row is
// dead-lettered by hand as the stranded-events test changes its rows.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { createOutbox, outboxTable } from '../../src/outbox/index.js'
import { dbTargets, type OutboxDb } from '../outbox/support.js'
import { runCaptured } from './captured.js'

describe.each(dbTargets)(
  'breakwater outbox dead with control characters, on $dialect',
  (target) => {
    let t: OutboxDb
    beforeAll(async () => {
      t = await target.open('cli_outbox_dead_controls')
      await t.db.transaction((tx) =>
        createOutbox().enqueue(tx, {
          id: 'evt\u001b[2J-1',
          aggregateType: 'order\tkind',
          aggregateId: 'a\u001b[1m1',
          type: 'placed\u0007',
          topic: 'orders\u009b31m',
          payload: {},
        }),
      )
      await t.db.execute(
        `UPDATE ${outboxTable} SET dead_at = 1000, attempts = 1, last_error = $1`,
        ['refused\u001b]0;owned\u0007 by broker'],
      )
    })
    afterAll(async () => {
      await t?.close()
    })

    it('shows control characters escaped, one row per event', async () => {
      const table = await runCaptured(outboxCommand, ['dead', '--db', t.url])
      expect(table.code, table.stderr).toBe(0)
      // No control character but the line ends.
      expect(table.stdout.replaceAll('\n', '')).not.toMatch(/\p{Cc}/u)
      const lines = table.stdout.trimEnd().split('\n')
      expect(lines).toHaveLength(2)
      expect(lines[1]).toContain('evt\\u001b[2J-1')
      expect(lines[1]).toContain('order\\tkind/a\\u001b[1m1')
      expect(lines[1]).toContain('placed\\u0007')
      expect(lines[1]).toContain('orders\\u009b31m')
      expect(lines[1]).toContain('refused\\u001b]0;owned\\u0007 by broker')
      // --json keeps the text as stored: JSON escapes it itself.
      const json = await runCaptured(outboxCommand, ['dead', '--db', t.url, '--json'])
      expect(JSON.parse(json.stdout)[0]).toMatchObject({
        eventId: 'evt\u001b[2J-1',
        type: 'placed\u0007',
      })
    })
  },
)
