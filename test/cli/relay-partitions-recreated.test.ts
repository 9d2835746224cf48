// `breakwater relay` (a real process, SQLite) when rows of breakwater_outbox_partitions were
// deleted by hand: the relay recreates them (see test/outbox/missing-partitions.test.ts) and now
// logs a warning saying how many; it logged nothing, so an operator's mistake went unseen.
import { afterAll, describe, expect, it } from 'vitest'
import { createOutbox, outboxPartitionsTable, outboxTable } from '../../src/outbox/index.js'
import { parsePrometheusText, sampleValue } from '../observability/prometheus-text.js'
import { until } from '../outbox/support.js'
import { spawnCli } from '../process/cli-process.js'
import { migratedSqlite } from './relay-support.js'

const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

describe('breakwater relay: partition rows deleted by hand', () => {
  it('warns once with the count of rows it recreated, then holds all 64', async () => {
    const { url: dbUrl, db } = await migratedSqlite('relay-cli-partitions-recreated', cleanups)
    await db.execute(`DELETE FROM ${outboxPartitionsTable} WHERE partition_no IN (3, 40)`)

    const relay = spawnCli(['relay', '--db', dbUrl])
    cleanups.push(() => relay.kill())
    const started = await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    expect(started).toMatchObject({ partitions: 64 })
    const warnings = relay.lines.filter((l) => l.msg === 'missing partition rows recreated')
    expect(warnings).toHaveLength(1)
    expect(warnings[0]).toMatchObject({ level: 'warn', count: 2, table: outboxPartitionsTable })
    relay.child.kill('SIGTERM')
    expect((await relay.exited).code, relay.stderr()).toBe(0)
  })

  // outboxStats counts the stranded events with the other figures anyway; the gauge shows them where an
  // alert can see them, since pending and lag alone do not say that no relay will publish them.
  it('exports events with a partition_no outside 0..63 as breakwater_outbox_stranded_events', async () => {
    const { url: dbUrl, db } = await migratedSqlite('relay-cli-stranded', cleanups)
    await db.transaction((tx) =>
      createOutbox().enqueue(
        tx,
        ['a', 'b'].map((aggregateId) => ({
          id: `${aggregateId}-1`,
          aggregateType: 'thing',
          aggregateId,
          type: 'changed',
          payload: {},
        })),
      ),
    )
    await db.execute(`UPDATE ${outboxTable} SET partition_no = 99 WHERE event_id = 'a-1'`)

    const relay = spawnCli([
      'relay',
      '--db',
      dbUrl,
      '--metrics-port',
      '0',
      '--stats-interval-ms',
      '0',
    ])
    cleanups.push(() => relay.kill())
    const started = await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    const metricsUrl = started.metrics as string
    const scrape = async () => parsePrometheusText(await (await fetch(metricsUrl)).text())
    await until(
      async () => sampleValue(await scrape(), 'breakwater_outbox_pending_events') === 1,
      'b-1 to be published',
    )
    const metrics = await scrape()
    expect(sampleValue(metrics, 'breakwater_outbox_stranded_events')).toBe(1)
    relay.child.kill('SIGTERM')
    expect((await relay.exited).code, relay.stderr()).toBe(0)
  })
})
