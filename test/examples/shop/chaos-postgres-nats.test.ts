// The same scripted chaos run on the scale-out engines: every store on PostgreSQL, events
// through NATS JetStream.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { brokerUrl } from '../../support/brokers.js'
import { createTestDatabase, type TestDatabase } from '../../support/postgres.js'
import { scaled } from '../../support/scale.js'
import { ensureShopBuilt, invariantsOf, startDemo } from './support.js'

const durationS = scaled(60, 12)
let database: TestDatabase

beforeAll(async () => {
  ensureShopBuilt()
  database = await createTestDatabase('shop')
})

afterAll(async () => {
  await database?.drop()
})

describe('breakwater demo: the shop under the default chaos script (PostgreSQL + NATS)', () => {
  it(
    'keeps every invariant and exits 0',
    async () => {
      const nats = await brokerUrl('nats')
      const run = startDemo([
        '--duration',
        String(durationS),
        '--chaos',
        'default',
        '--db',
        database.url,
        '--broker',
        nats,
      ])
      const { code, stdout, stderr, summary } = await run.done
      expect(summary, `${stdout}\n${stderr}`).toBeDefined()
      const s = summary!
      expect(s.engines).toEqual({ db: 'postgres', broker: 'nats' })
      expect(Object.values(invariantsOf(s)).every(Boolean), stdout).toBe(true)
      expect(code, stdout).toBe(0)
      expect(s.figures.orders.legacy).toBeGreaterThan(0)
      expect(s.figures.orders.new).toBeGreaterThan(0)
      expect(s.figures.duplicateCharges).toBe(0)
      expect(s.figures.emails.sent).toBe(s.figures.orders.new)
      expect(s.figures.events.lost).toBe(0)
      expect(s.figures.events.delivered).toBe(s.figures.events.committed)
      expect(s.restarts).toBe(4)
    },
    (durationS + 90) * 1_000,
  )
})
