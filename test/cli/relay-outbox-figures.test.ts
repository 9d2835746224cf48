// The relay process's /metrics ran outboxStats (counts that scan the pending rows: 1.2-1.7 s
// per scrape per relay at a million pending rows) at every scrape, and the scrape waited for
// it. The figures are now read in the background at most once per --stats-interval-ms and the
// scrape serves the last ones. Counted on the statements sent to a real SQLite database, on a
// ManualClock.
import { afterEach, describe, expect, it } from 'vitest'
import type { Publisher } from '../../src/brokers/index.js'
import { relayMetrics } from '../../src/cli/relay.js'
import { createJsonLogger } from '../../src/observability/index.js'
import { createOutbox, createRelay } from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import { ManualClock } from '../../src/testing/index.js'
import { parsePrometheusText, sampleValue } from '../observability/prometheus-text.js'
import { type OutboxDb, sqliteTarget } from '../outbox/support.js'
import { recordingStatements, type SentStatement } from '../support/query-plan.js'

const publisher: Publisher = { publish: async () => {}, close: async () => {} }

describe('relay /metrics outbox figures', () => {
  let t: OutboxDb | undefined
  afterEach(async () => {
    await t?.close()
  })

  it('two scrapes within the interval run one read; the next interval runs the next', async () => {
    t = await sqliteTarget.open('relay-outbox-figures')
    await t.db.transaction((tx) =>
      createOutbox().enqueue(tx, {
        id: 'e-1',
        aggregateType: 'thing',
        aggregateId: 'a',
        type: 'changed',
        payload: {},
      }),
    )
    const sent: SentStatement[] = []
    const db = recordingStatements(t.db, sent)
    const reads = () => sent.filter((s) => s.sql === outboxStatements.sqlite.counts).length
    const lines: string[] = []
    const log = createJsonLogger({ output: { write: (text: string) => lines.push(text) } })
    const relay = createRelay({ db: t.db, publisher })
    const clock = new ManualClock(1_700_000_000_000)
    const { registry, outboxFigures } = relayMetrics(relay, db, log, 'sql', {
      intervalMs: 15_000,
      clock,
    })
    const scrape = async () => parsePrometheusText(await registry.render())

    // The first read starts with the metrics server; a scrape before it ends says so.
    outboxFigures.latest()
    expect(sampleValue(await scrape(), 'breakwater_outbox_stats_up')).toBe(0)
    await outboxFigures.idle()
    expect(reads()).toBe(1)

    let m = await scrape()
    expect(sampleValue(m, 'breakwater_outbox_pending_events')).toBe(1)
    expect(sampleValue(m, 'breakwater_outbox_stats_up')).toBe(1)
    await clock.advance(14_999)
    m = await scrape()
    await outboxFigures.idle()
    expect(reads()).toBe(1)

    // Past the interval: this scrape serves the last figures and starts the next read.
    await t.db.execute(`DELETE FROM breakwater_outbox`)
    await clock.advance(1)
    m = await scrape()
    expect(sampleValue(m, 'breakwater_outbox_pending_events')).toBe(1)
    await outboxFigures.idle()
    expect(reads()).toBe(2)
    m = await scrape()
    expect(sampleValue(m, 'breakwater_outbox_pending_events')).toBe(0)
    expect(reads()).toBe(2)
    expect(lines.filter((l) => l.includes('could not be read'))).toEqual([])
  })
})
