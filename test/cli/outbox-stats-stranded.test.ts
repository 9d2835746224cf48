// `breakwater outbox stats` names the pending events no relay will ever publish (a partition_no
// outside 0..63, changed by hand) and says how to fix them; before, they only showed as pending
// and lag. Real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { createOutbox, outboxTable } from '../../src/outbox/index.js'
import { dbTargets, type OutboxDb } from '../outbox/support.js'
import { runCaptured } from './captured.js'

describe.each(dbTargets)('breakwater outbox stats with stranded events, on $dialect', (target) => {
  let t: OutboxDb
  beforeAll(async () => {
    t = await target.open('cli_outbox_stranded')
    await t.db.transaction((tx) =>
      createOutbox().enqueue(
        tx,
        ['a', 'b', 'c'].map((aggregateId) => ({
          id: `${aggregateId}-1`,
          aggregateType: 'thing',
          aggregateId,
          type: 'changed',
          payload: {},
        })),
      ),
    )
  })
  afterAll(async () => {
    await t?.close()
  })

  it('none stranded: the text has a stranded line of 0 and no hint, --json a count of 0', async () => {
    const text = await runCaptured(outboxCommand, ['stats', '--db', t.url])
    expect(text.code, text.stderr).toBe(0)
    expect(text.stdout).toMatch(/^pending: {2}3\ndead: {5}0\nstranded: 0\nlag: {6}\d+\.\d{3} s\n$/)
    const json = await runCaptured(outboxCommand, ['stats', '--db', t.url, '--json'])
    expect(JSON.parse(json.stdout)).toMatchObject({ pending: 3, dead: 0, stranded: 0 })
  })

  it('two stranded: counted, with what is wrong and how to fix a row', async () => {
    await t.db.execute(`UPDATE ${outboxTable} SET partition_no = 99 WHERE event_id = 'a-1'`)
    await t.db.execute(`UPDATE ${outboxTable} SET partition_no = -3 WHERE event_id = 'b-1'`)
    const text = await runCaptured(outboxCommand, ['stats', '--db', t.url])
    expect(text.code, text.stderr).toBe(0)
    expect(text.stdout).toContain('pending:  3\n')
    expect(text.stdout).toContain('stranded: 2\n')
    expect(text.stdout).toContain(
      '2 pending events have a partition_no outside 0..63: no relay will ever publish them.',
    )
    expect(text.stdout).toContain('partitionOf(aggregate_id)')
    expect(text.stdout).toContain(
      'SELECT id, aggregate_id, partition_no FROM breakwater_outbox WHERE published_at IS NULL',
    )
    const json = await runCaptured(outboxCommand, ['stats', '--db', t.url, '--json'])
    expect(JSON.parse(json.stdout)).toMatchObject({ pending: 3, stranded: 2 })
    // Stats changes nothing.
    const rows = await t.db.query<{ partition_no: unknown }>(
      `SELECT partition_no FROM ${outboxTable} WHERE event_id = 'a-1'`,
    )
    expect(Number(rows[0]!.partition_no)).toBe(99)
  })

  it('the query the hint prints lists exactly the stranded events (a fraction too, on SQLite)', async () => {
    // SQLite keeps 5.5 set into the INTEGER column as a real, which no relay claims; PostgreSQL
    // rounds it to a partition, so there the row stays as the test above left it.
    if (target.dialect === 'sqlite')
      await t.db.execute(`UPDATE ${outboxTable} SET partition_no = 5.5 WHERE event_id = 'c-1'`)
    const text = await runCaptured(outboxCommand, ['stats', '--db', t.url, '--json'])
    const { stranded } = JSON.parse(text.stdout) as { stranded: number }
    expect(stranded).toBe(target.dialect === 'sqlite' ? 3 : 2)
    const hint = (await runCaptured(outboxCommand, ['stats', '--db', t.url])).stdout
    const query = /^ {2}(SELECT .*);$/m.exec(hint)?.[1]
    expect(query, hint).toBeDefined()
    const listed = await t.db.query<{ id: unknown }>(query!)
    expect(listed).toHaveLength(stranded)
  })
})
