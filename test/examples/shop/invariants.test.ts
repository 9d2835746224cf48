// The pure parts of the shop demo on their own: what counts as broken while the shop runs and
// once it settled, the chaos commands typed in the demo's terminal, and the proxy config the
// demo writes (checked by the proxy's own schema, so a schema change shows here first).
import { parseProxyConfig } from 'breakwater/proxy'
import { describe, expect, it } from 'vitest'
import { chaosActionOf, parseChaosCommand } from '../../../examples/shop/chaos.js'
import {
  judge,
  judgeAtStop,
  quiescent,
  type ShopFigures,
} from '../../../examples/shop/invariants.js'
import { proxyConfigYaml } from '../../../examples/shop/proxy.js'

const settled: ShopFigures = {
  at: 0,
  orders: { legacy: 4, new: 6, total: 10 },
  paidOrders: { legacy: 4, new: 5, total: 9 },
  cancelledOrders: 1,
  legacyPending: 0,
  charges: 9,
  chargesTaken: 9,
  unmatchedCharges: { chargedNotPaid: 0, paidNotCharged: 0, ids: [] },
  refunds: 1,
  duplicateCharges: 0,
  emails: { sent: 6, duplicated: 0, missing: 0 },
  events: { committed: 12, delivered: 12, lost: 0, unpublished: 0, oldestUnpublishedMs: 0 },
  sagas: { completed: 5, compensated: 1 },
  accepted: { orders: 10, missing: 0, missingIds: [] },
}

const broken = (f: ShopFigures, final: boolean): string[] =>
  judge(f, final)
    .filter((i) => !i.ok)
    .map((i) => i.name)

describe('judge', () => {
  it('passes a settled system that kept every invariant', () => {
    expect(quiescent(settled)).toBe(true)
    expect(broken(settled, true)).toEqual([])
  })

  it('breaks on a duplicate charge or a second email at any time', () => {
    expect(broken({ ...settled, duplicateCharges: 1 }, false)).toEqual(['duplicate charges'])
    const twice = { ...settled, emails: { sent: 6, duplicated: 2, missing: 0 } }
    expect(broken(twice, false)).toEqual(['emails per finished order'])
  })

  it('when stopped before it settled, judges only what must hold at any time, and says so', () => {
    const inFlight: ShopFigures = {
      ...settled,
      emails: { sent: 5, duplicated: 0, missing: 1 },
      events: { ...settled.events, delivered: 11, lost: 1, unpublished: 1 },
      sagas: { completed: 5, running: 1 },
    }
    const hurried = judgeAtStop(inFlight, { settled: false, hurried: true })
    expect(hurried.ok).toBe(true)
    expect(hurried.line).toMatch(/^Stopped before the system settled/)
    // Out of time for the settle without being hurried: work still in flight is a failure.
    const late = judgeAtStop(inFlight, { settled: false, hurried: false })
    expect(late.ok).toBe(false)
    expect(late.line).toMatch(/^INVARIANTS BROKEN/)
    // What must hold at any time still breaks a hurried stop.
    const charged = judgeAtStop(
      { ...inFlight, duplicateCharges: 1 },
      { settled: false, hurried: true },
    )
    expect(charged.invariants.filter((i) => !i.ok).map((i) => i.name)).toEqual([
      'duplicate charges',
    ])
    expect(charged.line).toMatch(/^INVARIANTS BROKEN/)
    // Settled before the hurry arrived: judged in full.
    expect(judgeAtStop(settled, { settled: true, hurried: true }).line).toBe('All invariants held.')
  })

  it('lets work in flight pass while running, and judges it once settled', () => {
    const running: ShopFigures = {
      ...settled,
      charges: 10,
      emails: { sent: 5, duplicated: 0, missing: 1 },
      events: { ...settled.events, delivered: 11, lost: 1, unpublished: 1 },
      sagas: { completed: 5, running: 2 },
    }
    expect(quiescent(running)).toBe(false)
    expect(broken(running, false)).toEqual([])
    expect(broken(running, true)).toEqual([
      'charges = paid orders',
      'emails per finished order',
      'events lost',
      'sagas not finished',
    ])
  })

  it('breaks on a parked saga and on an accepted order that was never recorded', () => {
    expect(broken({ ...settled, sagas: { completed: 5, failed: 1 } }, false)).toEqual([
      'sagas not finished',
    ])
    const lost = { ...settled, accepted: { orders: 11, missing: 1, missingIds: ['o-7'] } }
    expect(broken(lost, false)).toEqual(['accepted orders recorded'])
  })
})

describe('parseChaosCommand', () => {
  const processes = ['payments', 'relay'] as const
  it.each([
    ['down payments', { kind: 'down', target: 'payments' }],
    ['slow payments 300', { kind: 'slow', target: 'payments', latencyMs: 300 }],
    ['lose payments 0.2', { kind: 'fail', target: 'payments', lostReplyRate: 0.2 }],
    ['resets relay', { kind: 'fail', target: 'relay', resetRate: 0.5 }],
    ['weight 90', { kind: 'weight', percent: 90 }],
    ['rollback', { kind: 'rollback' }],
  ])('reads %j', (line, action) => {
    expect(parseChaosCommand(line, processes)).toEqual(action)
  })

  it.each([
    ['down billing', 'unknown process "billing"'],
    ['weight 120', 'weight needs "percent", a whole number from 0 to 100, got 120'],
    ['weight', 'weight needs "percent", a whole number from 0 to 100, got nothing'],
    ['fail payments 2', '"errorRate" is a share from 0 to 1, got 2'],
    ['lose payments half', '"lostReplyRate" is a share from 0 to 1, got "half"'],
    ['explode payments', 'chaos commands:'],
    // A latency that is not one is refused, naming it, by the rule the dashboard's API uses:
    // never read as the default 800 ms, never a negative delay.
    ['slow payments abc', 'slow needs "latencyMs", a whole number from 0 to 60000, got "abc"'],
    ['slow payments -5', 'slow needs "latencyMs", a whole number from 0 to 60000, got -5'],
    ['slow payments 1e3', 'got "1e3"'],
    ['slow payments 2.5', 'got 2.5'],
    ['slow payments 60001', 'got 60001'],
    ['slow payments 300 400', 'unexpected "400"'],
    ['down payments now', 'unexpected "now"'],
  ])('answers %j with a message', (line, message) => {
    const answer = parseChaosCommand(line, processes)
    expect(typeof answer).toBe('string')
    expect(answer).toContain(message)
  })

  it('refuses what the dashboard API refuses, with the same words', () => {
    for (const [line, action] of [
      ['slow payments abc', { kind: 'slow', target: 'payments', latencyMs: 'abc' }],
      ['slow payments -1', { kind: 'slow', target: 'payments', latencyMs: -1 }],
      ['resets relay 7', { kind: 'fail', target: 'relay', resetRate: 7 }],
      ['weight 101', { kind: 'weight', percent: 101 }],
    ] as const) {
      const problem = chaosActionOf(action, processes)
      expect(typeof problem).toBe('string')
      expect(parseChaosCommand(line, processes)).toContain(problem)
    }
  })
})

describe('proxyConfigYaml', () => {
  it('is a valid proxy config: the strangler split, the shadowed catalog, every service', () => {
    const names = ['legacy', 'orders', 'inventory', 'payments', 'shipping']
    const peers = Object.fromEntries(
      names.map((name, i) => [name, `http://127.0.0.1:${20_001 + i}`]),
    )
    const config = parseProxyConfig(proxyConfigYaml(peers, 30), 'shop.yaml')
    expect([...config.services.keys()]).toEqual(names)
    expect(config.services.get('payments')?.breaker).toBeDefined()
    expect(config.services.get('payments')?.retry).toBeDefined()
    const gateway = config.listeners.find((l) => l.name === 'gateway')
    const orders = gateway?.routes?.find((r) => r.name === 'orders')
    expect(orders?.targets).toEqual([
      { service: 'legacy', weight: 70 },
      { service: 'orders', weight: 30 },
    ])
    const catalog = gateway?.routes?.find((r) => r.name === 'catalog')
    expect(catalog?.shadow?.service).toBe('inventory')
  })
})
