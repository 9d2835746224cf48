// How many payload bytes the relay holds, with large payloads. Rounds are bounded in rows, and
// a read that found rows held back asks for parkingReadFactor (8) rounds next, to park the
// queue behind a dead or retrying event in few reads: it carried the payloads of every row it
// found into the relay, though it parks the held ones by id and leaves the free ones beyond a
// round for the next read. Measured with 1 MiB payloads (batchSize 32, a round of 16): one read
// returned 128 MiB, and the heap peaked at 144 MiB where 32 MiB sufficed without held rows; with
// the defaults (a round of 128) a read could return 1 GiB. Counted here as the payload
// characters each statement hands the relay (a driver wrapper), not by heap or time.
//
// The events confirmed and waiting for their mark (up to batchSize less a round) were kept as
// the rows read, payloads included, though the mark needs their ids only: with a mark slowed
// down (measured, 300 ms), the heap peaked at 48 MiB for 32 MiB without. Checked here by
// whether the row objects the reads returned for those events can still be collected.
//
// An event whose publish failed without a clear cause is set aside as a suspect (its aggregate
// skipped by the next reads) until a round settles it, and suspects were kept as whole rows.
// While every publish fails and no outage is concluded (aggregates that failed recently are
// sent alone, and such failures never count as one: JetStream off answers every publish with
// BROKER_UNROUTABLE, which leaves the breaker closed), each round adds its events to them, up
// to the head event of every pending aggregate: their payloads, far past two rounds.
// Real SQLite and PostgreSQL.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BrokerError } from '../../src/brokers/errors.js'
import { createRelay } from '../../src/outbox/index.js'
import { outboxStatements } from '../../src/outbox/sql.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { ManualClock } from '../../src/testing/index.js'
import {
  count,
  dbTargets,
  type OutboxDb,
  observingQueries,
  recordingRelay,
  until,
} from './support.js'

const outboxTable = 'breakwater_outbox'
const T0 = 1_700_000_000_000
const batchSize = 8
const roundSize = batchSize / 2
/** Characters of each payload (a JSON string). */
const payloadChars = 64 * 1024
/** Events of the hot aggregate queued behind its first one, and events of other aggregates. */
const behind = 40
const others = 40

/** `db`, recording the largest number of payload characters one statement returned. */
function countingPayloads(db: SqlDriver, seen: { most: number }): SqlDriver {
  return observingQueries(db, (_, rows) => {
    let chars = 0
    for (const row of rows) if (typeof row.payload === 'string') chars += row.payload.length
    seen.most = Math.max(seen.most, chars)
  })
}

/** A full garbage collection, without starting the process with --expose-gc. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc')
  try {
    ;(runInNewContext('gc') as () => void)()
  } finally {
    setFlagsFromString('--no-expose-gc')
  }
}

describe.each(dbTargets)('the payloads a relay holds on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('outbox_relay_payload_memory')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** One row of `aggregate` with a payload of payloadChars; PostgreSQL: the oldest writer xid. */
  async function insert(eventId: string, aggregate: string, retryAt?: number): Promise<void> {
    const pg = target.dialect === 'postgres'
    const payload = pg
      ? `'"' || repeat('x', ${payloadChars - 2}) || '"'`
      : `'"' || replace(hex(zeroblob(${(payloadChars - 2) / 2})), '0', 'x') || '"'`
    const retry = retryAt === undefined ? '' : ', attempts, retry_at'
    const retryValues = retryAt === undefined ? '' : `, 1, ${retryAt}`
    await t.db.execute(
      `INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id, event_type, topic,
        payload, headers, partition_no, created_at${pg ? ', xid' : ''}${retry})
      VALUES ($1, 'order', $2, 'paid', 'orders', ${payload}, '{}', 7, ${T0}${pg ? ", '3'::xid8" : ''}${retryValues})`,
      [eventId, aggregate],
    )
  }

  it('reads the payloads of a round at most, while it parks the events held back', async () => {
    // The hot aggregate's first event waits for a retry a day away: the events behind it are
    // held back and parked. Events of other aggregates come between them.
    await insert('hot-0', 'hot', T0 + 86_400_000)
    for (let i = 1; i <= Math.max(behind, others); i++) {
      if (i <= behind) await insert(`hot-${i}`, 'hot')
      if (i <= others) await insert(`free-${i}`, `free-${i}`)
    }
    const clock = new ManualClock(T0 + 1_000)
    const seen = { most: 0 }
    const published: string[] = []
    const relay = recordingRelay({ db: countingPayloads(t.db, seen), clock, batchSize }, published)
    await relay.start()
    try {
      await until(async () => {
        await clock.advance(50)
        const parked = await count(t.db, outboxTable, 'WHERE parked_behind IS NOT NULL')
        return parked === behind && published.length === others
      }, 'the held events to be parked and the others published')
    } finally {
      await relay.stop()
    }
    // Every free event once, in order; none of the held ones.
    expect(published).toEqual(Array.from({ length: others }, (_, i) => `free-${i + 1}`))
    expect(seen.most).toBeGreaterThan(0)
    expect(seen.most).toBeLessThanOrEqual(roundSize * payloadChars)
  })

  it('keeps only the ids of the events waiting for their mark', async () => {
    const events = 3 * roundSize
    for (let i = 1; i <= events; i++) await insert(`mark-${i}`, `mark-${i}`)
    const markPublished = outboxStatements[target.dialect].markPublished
    let openMark: () => void = () => {}
    const markHeld = new Promise<void>((resolve) => {
      openMark = resolve
    })
    // Every row a statement returned with a payload, by event id; the first mark waits.
    const returned: Array<{ eventId: string; row: WeakRef<object> }> = []
    const db = observingQueries(
      t.db,
      (_, rows) => {
        for (const row of rows)
          if (typeof row.event_id === 'string' && 'payload' in row)
            returned.push({ eventId: row.event_id, row: new WeakRef(row) })
      },
      async (sql) => {
        if (sql === markPublished) await markHeld
      },
    )
    const clock = new ManualClock(T0 + 2_000)
    const published: string[] = []
    const relay = recordingRelay({ db, clock, batchSize }, published)
    await relay.start()
    try {
      // The first round's mark waits; the second round goes out meanwhile (batchSize events
      // confirmed and unmarked at most), and the third, read meanwhile, waits for the marks.
      await until(async () => {
        await clock.advance(50)
        return (
          published.length === 2 * roundSize && returned.some((r) => r.eventId === `mark-${events}`)
        )
      }, 'two rounds published, their marks waiting, the third read')
      // The loop takes the third round in hand (no timer involved) and waits for the marks.
      for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve))
      expect(published).toEqual(Array.from({ length: 2 * roundSize }, (_, i) => `mark-${i + 1}`))
      collectGarbage()
      const kept = returned
        .filter((r) => published.includes(r.eventId) && r.row.deref() !== undefined)
        .map((r) => r.eventId)
      expect(kept).toEqual([])
    } finally {
      openMark()
      await relay.stop()
    }
  })

  it('keeps no payload of the events set aside as suspects while every publish fails', async () => {
    const aggregates = 6 * roundSize
    for (let i = 1; i <= aggregates; i++) await insert(`suspect-${i}`, `suspect-${i}`)
    const readBatch = outboxStatements[target.dialect].readBatch
    // Every row a statement returned with a payload. The read that skips every aggregate as a
    // suspect (their fourth parameter, a list; on SQLite JSON text) waits for the check: it
    // finds nothing, and the suspects are cleared once it returns.
    const suspected = (param: unknown) =>
      (typeof param === 'string' ? (JSON.parse(param) as unknown[]) : (param as unknown[])).length
    const returned: Array<WeakRef<object>> = []
    let allSuspected = false
    let openRead: () => void = () => {}
    const readHeld = new Promise<void>((resolve) => {
      openRead = resolve
    })
    const db = observingQueries(
      t.db,
      (_, rows) => {
        for (const row of rows) if (typeof row.payload === 'string') returned.push(new WeakRef(row))
      },
      async (sql, params) => {
        if (sql !== readBatch || suspected(params?.[3]) !== aggregates) return
        allSuspected = true
        await readHeld
      },
    )
    const clock = new ManualClock(T0 + 3_000)
    const relay = createRelay({
      db,
      clock,
      batchSize,
      publisher: {
        publish: async () => {
          throw new BrokerError('BROKER_UNROUTABLE', 'nats', 'no stream takes the subject')
        },
        close: async () => {},
      },
      listen: false,
      retention: false,
      keepAlive: false,
    })
    await relay.start()
    try {
      await until(async () => {
        await clock.advance(50)
        return allSuspected
      }, 'every aggregate set aside as a suspect')
      expect(relay.breaker.state).toBe('closed')
      collectGarbage()
      const alive = returned.filter((row) => row.deref() !== undefined).length
      // Two rounds at most, as docs/outbox.md says; none are in hand now.
      expect(alive).toBeLessThanOrEqual(2 * roundSize)
    } finally {
      openRead()
      await relay.stop()
      await t.db.execute(`DELETE FROM ${outboxTable} WHERE event_id LIKE 'suspect-%'`)
    }
  })
})
