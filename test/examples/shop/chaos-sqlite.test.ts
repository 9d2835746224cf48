// The scripted chaos run on the embedded default (SQLite files and the SQL queue): every
// invariant holds, counted from the databases, and the exit code says so.
import { beforeAll, describe, expect, it } from 'vitest'
import { scaled } from '../../support/scale.js'
import { ensureShopBuilt, invariantsOf, startDemo } from './support.js'

const durationS = scaled(60, 12)

beforeAll(() => {
  ensureShopBuilt()
})

describe('breakwater demo: the shop under the default chaos script (SQLite + SQL queue)', () => {
  it(
    'keeps every invariant and exits 0',
    async () => {
      const run = startDemo(['--duration', String(durationS), '--chaos', 'default'])
      const { code, stdout, summary } = await run.done
      expect(summary, stdout).toBeDefined()
      const s = summary!
      expect(invariantsOf(s), stdout).toEqual({
        'charges = paid orders': true,
        'duplicate charges': true,
        'emails per finished order': true,
        'events lost': true,
        'sagas not finished': true,
        'accepted orders recorded': true,
      })
      expect(code, stdout).toBe(0)
      expect(s.quiescent).toBe(true)
      expect(s.engines).toEqual({ db: 'sqlite', broker: 'sql-queue' })
      expect(s.policiesIn).toBe('proxy')
      // The run did something: orders on both sides of the strangler, every one charged at
      // most once, one email per finished new order, every outbox event delivered.
      expect(s.figures.orders.legacy).toBeGreaterThan(0)
      expect(s.figures.orders.new).toBeGreaterThan(0)
      expect(s.figures.duplicateCharges).toBe(0)
      expect(s.figures.charges).toBe(s.figures.paidOrders.total)
      expect(s.figures.emails.sent).toBe(s.figures.orders.new)
      expect(s.figures.events.delivered).toBe(s.figures.events.committed)
      expect(s.figures.events.committed).toBeGreaterThanOrEqual(2 * s.figures.orders.new)
      // New orders were read back from the read model right after placing them (the message
      // says how many new orders there were and why read-backs missed, if any did).
      expect(
        s.load.readYourWrites.found,
        JSON.stringify({ newOrders: s.figures.orders.new, readYourWrites: s.load.readYourWrites }),
      ).toBeGreaterThan(0)
      // The chaos happened: relay, inventory, a saga worker and notifications were killed
      // and restarted.
      expect(s.restarts).toBe(4)
      expect(stdout).toMatch(/chaos: relay killed/)
      expect(stdout).toMatch(/chaos: strangler rollback/)
      expect(stdout).toMatch(/All invariants held\./)
    },
    (durationS + 90) * 1_000,
  )
})
