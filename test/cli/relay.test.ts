// `breakwater relay` as a real process (node --import tsx src/cli/main.ts) on SQLite: the SQL
// queue in the same database, and a webhook receiver that verifies signatures.
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import { afterAll, describe, expect, it } from 'vitest'
import { verifyWebhookSignature, WEBHOOK_SIGNATURE_HEADER } from '../../src/brokers/index.js'
import { queueTable } from '../../src/brokers/sql-queue.js'
import {
  createOutbox,
  type OutboxEvent,
  outboxPartitionsTable,
  outboxRelaysTable,
  outboxTable,
} from '../../src/outbox/index.js'
import type { SqlDriver } from '../../src/stores/index.js'
import { parsePrometheusText, sampleValue } from '../observability/prometheus-text.js'
import { count, pendingCount, until } from '../outbox/support.js'
import { runCli, spawnCli } from '../process/cli-process.js'
import { listenOnLoopback } from '../support/loopback.js'
import { migratedSqlite } from './relay-support.js'

const outbox = createOutbox()
const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

/** Enqueues events `from`..`from+n-1` round-robin over `aggregates` aggregates, `perTx` per transaction. */
async function enqueue(
  db: SqlDriver,
  run: string,
  from: number,
  n: number,
  aggregates: number,
  perTx = 1000,
): Promise<void> {
  for (let start = from; start < from + n; start += perTx) {
    const events: OutboxEvent[] = []
    for (let i = start; i < Math.min(from + n, start + perTx); i++) {
      events.push({
        aggregateType: 'order',
        aggregateId: `${run}-a${i % aggregates}`,
        type: 'order-placed',
        topic: `${run}.orders`,
        payload: { seq: i },
      })
    }
    await db.transaction((tx) => outbox.enqueue(tx, events))
  }
}

async function publishedIds(db: SqlDriver): Promise<Set<string>> {
  const rows = await db.query<{ event_id: string }>(
    `SELECT event_id FROM ${outboxTable} WHERE published_at IS NOT NULL`,
  )
  return new Set(rows.map((r) => r.event_id))
}

async function scrape(url: string) {
  const response = await fetch(url)
  expect(response.status).toBe(200)
  return parsePrometheusText(await response.text())
}

describe('breakwater relay (SQLite, SQL queue)', () => {
  it('publishes enqueued events, serves /metrics, and on SIGTERM mid-stream finishes its batch and exits 0', async () => {
    const { url: dbUrl, db, migrateStdout } = await migratedSqlite('relay-cli', cleanups)
    for (const capability of ['outbox', 'queue', 'inbox'])
      expect(migrateStdout).toContain(`${capability}: applied 1`)
    const run = `r${randomUUID().slice(0, 8)}`

    const relay = spawnCli([
      'relay',
      '--db',
      dbUrl,
      '--broker',
      'sql:',
      '--metrics-port',
      '0',
      '--batch-size',
      '5',
    ])
    cleanups.push(() => relay.kill())
    const started = await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    expect(started).toMatchObject({
      level: 'info',
      broker: 'sql:',
      dialect: 'sqlite',
      partitions: 64,
    })
    const metricsUrl = started.metrics as string
    expect(metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/)

    await enqueue(db, run, 0, 300, 10)
    await until(async () => (await pendingCount(db)) === 0, 'the first 300 events to be published')
    const metrics = await scrape(metricsUrl)
    expect(sampleValue(metrics, 'breakwater_relay_published_total')).toBe(300)
    expect(sampleValue(metrics, 'breakwater_outbox_pending_events')).toBe(0)
    expect(sampleValue(metrics, 'breakwater_outbox_lag_seconds')).toBe(0)
    expect(sampleValue(metrics, 'breakwater_relay_publish_failures_total')).toBe(0)
    expect(sampleValue(metrics, 'breakwater_relay_breaker_state', { state: 'closed' })).toBe(1)
    expect(sampleValue(metrics, 'breakwater_relay_breaker_state', { state: 'open' })).toBe(0)
    expect(sampleValue(metrics, 'breakwater_relay_batch_duration_seconds_count')).toBeGreaterThan(0)
    expect((await fetch(metricsUrl.replace('/metrics', '/healthz'))).status).toBe(200)

    // The queue holds each event once, in order per aggregate.
    const queued = await db.query<{ message_id: string; msg_key: string; payload: Uint8Array }>(
      `SELECT message_id, msg_key, payload FROM ${queueTable} WHERE topic = $1 ORDER BY seq`,
      [`${run}.orders`],
    )
    expect(new Set(queued.map((q) => q.message_id)).size).toBe(300)
    const lastSeq = new Map<string, number>()
    for (const q of queued) {
      const seq = (JSON.parse(Buffer.from(q.payload).toString('utf8')) as { seq: number }).seq
      expect(seq).toBeGreaterThan(lastSeq.get(q.msg_key) ?? -1)
      lastSeq.set(q.msg_key, seq)
    }

    // Mid-stream: many more events (committed at once), SIGTERM as soon as some are out.
    await enqueue(db, run, 300, 30_000, 50, 30_000)
    await until(
      async () => (await count(db, outboxTable, 'WHERE published_at IS NOT NULL')) >= 350,
      'the relay to be publishing the second wave',
    )
    relay.child.kill('SIGTERM')
    const exit = await relay.exited
    expect(exit.code, relay.stderr()).toBe(0)

    const published = await publishedIds(db)
    const inQueue = new Set(
      (
        await db.query<{ message_id: string }>(
          `SELECT message_id FROM ${queueTable} WHERE topic = $1`,
          [`${run}.orders`],
        )
      ).map((r) => r.message_id),
    )
    // It really stopped mid-stream...
    expect(await pendingCount(db)).toBeGreaterThan(0)
    // ...and nothing half-way: every event in the broker is marked published, and every event
    // marked published is in the broker.
    expect([...inQueue].filter((id) => !published.has(id))).toEqual([])
    expect([...published].filter((id) => !inQueue.has(id))).toEqual([])

    const messages = relay.lines.map((l) => l.msg)
    expect(messages).toContain('stopping: finishing the batch in hand')
    const stopped = relay.lines.at(-1)!
    expect(stopped).toMatchObject({
      msg: 'relay stopped',
      state: 'stopped',
      published: published.size,
    })
    for (const line of relay.lines) {
      expect(Object.keys(line).slice(0, 3)).toEqual(['level', 'time', 'msg'])
      expect(line.service).toBe('breakwater-relay')
    }
  })

  it('delivers to a webhook whose receiver verifies every signature; the secret comes from the environment and is never logged', async () => {
    const { url: dbUrl, db } = await migratedSqlite('relay-webhook', cleanups)
    const secret = `whsec-${randomUUID()}`
    const received: Array<{ id: string; key: string; seq: number }> = []
    let requests = 0
    let refused = 0
    const server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        requests++
        const body = Buffer.concat(chunks)
        const check = verifyWebhookSignature(secret, req.headers[WEBHOOK_SIGNATURE_HEADER], body)
        if (!check.ok) {
          refused++
          res.writeHead(401).end(check.reason)
          return
        }
        // The very first delivery meets a receiver that is briefly unavailable.
        if (requests === 1) {
          res.writeHead(503).end('warming up')
          return
        }
        const m = JSON.parse(body.toString('utf8')) as {
          id: string
          key: string
          payload: { seq: number }
        }
        received.push({ id: m.id, key: m.key, seq: m.payload.seq })
        res.writeHead(204).end()
      })
    })
    const serverPort = await listenOnLoopback(server)
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())))
    const url = `http://127.0.0.1:${serverPort}/hooks`

    const run = `w${randomUUID().slice(0, 8)}`
    await enqueue(db, run, 0, 30, 3)
    const relay = spawnCli(['relay', '--db', dbUrl, '--broker', url, '--log-level', 'debug'], {
      BREAKWATER_WEBHOOK_SECRET: secret,
    })
    cleanups.push(() => relay.kill())
    await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    await until(
      () => new Set(received.map((r) => r.id)).size === 30,
      'all 30 events at the receiver',
    )
    expect(refused).toBe(0)
    for (const key of new Set(received.map((r) => r.key))) {
      const seqs = received.filter((r) => r.key === key).map((r) => r.seq)
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b))
    }
    await until(async () => (await pendingCount(db)) === 0, 'the events to be marked')
    relay.child.kill('SIGTERM')
    expect((await relay.exited).code, relay.stderr()).toBe(0)
    expect(relay.stdout()).not.toContain(secret)
    expect(relay.stderr()).not.toContain(secret)
  })
})

describe('breakwater relay: its id taken over', () => {
  it('exits 1 with a RELAY_ID_IN_USE log line when another process takes its --relay-id over', async () => {
    const { url: dbUrl, db } = await migratedSqlite('relay-cli-takeover', cleanups)
    const relay = spawnCli(['relay', '--db', dbUrl, '--relay-id', 'shared-id'])
    cleanups.push(() => relay.kill())
    await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    // What another process started with the same id does once this one's heartbeat expired
    // (it stalled): it writes its own instance token over the heartbeat and fences the leases.
    await db.execute(
      `UPDATE ${outboxRelaysTable} SET instance = 'another-process', expires_at = $1 WHERE relay_id = 'shared-id'`,
      [Date.now() + 3_600_000],
    )
    await db.execute(
      `UPDATE ${outboxPartitionsTable} SET token = token + 1 WHERE owner = 'shared-id'`,
    )
    const exit = await relay.exited
    expect(exit.code, relay.stderr()).toBe(1)
    const line = relay.lines.find(
      (l) => l.msg === 'relay id taken over by another process: stopping',
    )
    expect(line).toMatchObject({ level: 'error', relayId: 'shared-id' })
    expect(JSON.stringify(line)).toContain('RELAY_ID_IN_USE')
    expect(relay.stderr()).toContain('held by another live relay')
    // Nothing of the other process was released.
    const holder = await db.query<{ instance: string }>(
      `SELECT instance FROM ${outboxRelaysTable} WHERE relay_id = 'shared-id'`,
    )
    expect(holder).toEqual([{ instance: 'another-process' }])
  })
})

describe('breakwater relay: bad arguments', () => {
  it('exits 2 naming the problem, through the real command line', async () => {
    const result = await runCli(['relay', '--batch-size', 'lots'])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(
      'breakwater relay: --batch-size must be an integer from 1 to 10000, got "lots"',
    )
    expect(result.stdout).toBe('')
  })
})
