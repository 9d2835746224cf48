// `breakwater relay` as a real process against PostgreSQL and NATS JetStream: delivery in order,
// and an outage of a private NATS server (lag rises while it is down, falls once it is back).
import { randomUUID } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import { type Broker, type IncomingMessage, openBroker } from '../../src/brokers/index.js'
import { createOutbox, migrateOutbox, type OutboxEvent } from '../../src/outbox/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { type Family, parsePrometheusText, sampleValue } from '../observability/prometheus-text.js'
import { pendingCount, until } from '../outbox/support.js'
import { spawnCli } from '../process/cli-process.js'
import { brokerUrl, startPrivateBroker } from '../support/brokers.js'
import { createTestDatabase } from '../support/postgres.js'

const outbox = createOutbox()
const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

async function database(name: string): Promise<{ db: SqlDriver; url: string }> {
  const created = await createTestDatabase(name)
  cleanups.push(() => created.drop())
  const db = await openDatabase(created.url)
  cleanups.push(() => db.close())
  await migrateOutbox(db)
  return { db, url: created.url }
}

async function enqueue(db: SqlDriver, from: number, n: number, aggregates: number): Promise<void> {
  for (let start = from; start < from + n; start += 100) {
    const events: OutboxEvent[] = []
    for (let i = start; i < Math.min(from + n, start + 100); i++)
      events.push({
        aggregateType: 'order',
        aggregateId: `a${i % aggregates}`,
        type: 'order-placed',
        topic: 'orders',
        payload: { seq: i },
      })
    await db.transaction((tx) => outbox.enqueue(tx, events))
  }
}

interface Got {
  readonly id: string
  readonly key: string
  readonly seq: number
}

async function subscribe(broker: Broker, topic: string): Promise<Got[]> {
  const got: Got[] = []
  await broker.subscriber.subscribe(topic, 'test', async (m: IncomingMessage) => {
    const { seq } = JSON.parse(Buffer.from(m.payload).toString('utf8')) as { seq: number }
    got.push({ id: m.id, key: m.key, seq })
  })
  return got
}

/** Each key's events arrived in enqueue order (first deliveries). */
function expectOrderPerKey(got: readonly Got[]): void {
  const seen = new Set<string>()
  const last = new Map<string, number>()
  for (const g of got) {
    if (seen.has(g.id)) continue
    seen.add(g.id)
    expect(g.seq, `order of ${g.key}`).toBeGreaterThan(last.get(g.key) ?? -1)
    last.set(g.key, g.seq)
  }
}

async function scrape(url: string): Promise<Map<string, Family>> {
  return parsePrometheusText(await (await fetch(url)).text())
}

describe('breakwater relay (PostgreSQL, NATS JetStream)', () => {
  it('publishes enqueued events in order per aggregate, then stops on SIGTERM with exit 0', async () => {
    const natsUrl = await brokerUrl('nats')
    const { db, url } = await database('relay_cli_nats')
    const prefix = `t${randomUUID().slice(0, 8)}.`
    const broker = openBroker(natsUrl)
    cleanups.push(() => broker.close())
    const got = await subscribe(broker, `${prefix}orders`)

    const relay = spawnCli([
      'relay',
      '--db',
      url,
      '--broker',
      natsUrl,
      '--topic-prefix',
      prefix,
      '--metrics-port',
      '0',
      // Figures read again at each scrape (in the background): these tests wait for them.
      '--stats-interval-ms',
      '0',
    ])
    cleanups.push(() => relay.kill())
    const started = await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    expect(started).toMatchObject({ dialect: 'postgres', broker: natsUrl })
    // The logged database URL never carries the password.
    const password = new URL(url).password
    if (password !== '') expect(relay.stdout()).not.toContain(`:${password}@`)

    await enqueue(db, 0, 500, 20)
    await until(() => new Set(got.map((g) => g.id)).size === 500, 'all 500 events at the consumer')
    expectOrderPerKey(got)
    await until(async () => (await pendingCount(db)) === 0, 'every event marked published')
    const metrics = await scrape(started.metrics as string)
    expect(sampleValue(metrics, 'breakwater_relay_published_total')).toBe(500)
    expect(sampleValue(metrics, 'breakwater_outbox_lag_seconds')).toBe(0)
    expect(
      sampleValue(metrics, 'breakwater_relay_info', { broker: 'nats', dialect: 'postgres' }),
    ).toBe(1)

    relay.child.kill('SIGTERM')
    expect((await relay.exited).code, relay.stderr()).toBe(0)
    expect(relay.lines.at(-1)).toMatchObject({ msg: 'relay stopped', published: 500 })
  })

  it('while NATS is down the lag rises and the breaker opens; once it is back the relay recovers by itself', async () => {
    const nats = await startPrivateBroker('nats')
    cleanups.push(() => nats.stop())
    const { db, url } = await database('relay_cli_outage')
    const relay = spawnCli([
      'relay',
      '--db',
      url,
      '--broker',
      nats.url,
      '--metrics-port',
      '0',
      // Figures read again at each scrape (in the background): these tests wait for them.
      '--stats-interval-ms',
      '0',
      '--max-backoff-ms',
      '200',
      '--breaker-cooldown-ms',
      '300',
    ])
    cleanups.push(() => relay.kill())
    const started = await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    const metricsUrl = started.metrics as string

    await enqueue(db, 0, 10, 5)
    await until(async () => (await pendingCount(db)) === 0, 'the first events published')

    await nats.kill('SIGKILL')
    await enqueue(db, 10, 40, 5)
    let first = 0
    await until(
      async () => {
        const m = await scrape(metricsUrl)
        first = sampleValue(m, 'breakwater_outbox_lag_seconds')
        return (
          first >= 1 &&
          sampleValue(m, 'breakwater_outbox_pending_events') === 40 &&
          sampleValue(m, 'breakwater_relay_publish_failures_total') > 0
        )
      },
      'the lag to pass 1 s with the broker down',
      20_000,
      50,
    )
    await until(
      async () =>
        sampleValue(await scrape(metricsUrl), 'breakwater_outbox_lag_seconds') > first + 0.25,
      'the lag to keep rising',
      20_000,
      50,
    )
    await relay.waitForLine((l) => l.msg === 'broker circuit opened', 'the breaker to open', 10_000)
    expect(relay.lines.some((l) => l.msg === 'publish failed' && l.level === 'warn')).toBe(true)

    await nats.restart()
    await until(
      async () => {
        const m = await scrape(metricsUrl)
        return (
          sampleValue(m, 'breakwater_outbox_lag_seconds') === 0 &&
          sampleValue(m, 'breakwater_outbox_pending_events') === 0
        )
      },
      'the lag to fall back to 0 once NATS is back',
      20_000,
      50,
    )
    const m = await scrape(metricsUrl)
    expect(sampleValue(m, 'breakwater_relay_published_total')).toBeGreaterThanOrEqual(50)
    expect(sampleValue(m, 'breakwater_relay_breaker_state', { state: 'closed' })).toBe(1)
    expect(sampleValue(m, 'breakwater_outbox_dead_events')).toBe(0)

    // Everything reached the broker, in order per aggregate.
    const broker = openBroker(nats.url)
    cleanups.push(() => broker.close())
    const got = await subscribe(broker, 'orders')
    await until(() => new Set(got.map((g) => g.id)).size === 50, 'all 50 events in the stream')
    expectOrderPerKey(got)

    relay.child.kill('SIGTERM')
    expect((await relay.exited).code, relay.stderr()).toBe(0)
  })
})
